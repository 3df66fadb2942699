"""Runs and their checkpoints: where they live and what they are called.

Every training run has its own id and folder, ``<storage>/runs/<name>/<run id>/``; a new run
(``train_hero`` without ``resume: latest``) never touches an earlier one's files, and
checkpoints are immutable: a checkpoint folder, once complete, is never written again,
locally or in the bucket (``gs://.../<name>/<run id>/<checkpoint>/``). A run resumed with
``latest`` continues in its own folder under its own id.

A checkpoint's key — the ``checkpoints`` partition, the evaluation tables' name — is
``<name>.<run id>--checkpoint-<step>``, so a new run's checkpoints are new partitions even
at the same steps. Checkpoints marked ``UNHEALTHY`` (written after the last step whose
weights were sound, in a run that diverged) and emergency checkpoints are not evaluated.
"""

from __future__ import annotations

import datetime
import os
import re
import secrets
from pathlib import Path

from spark_pipeline.training.gcs import UNHEALTHY, make_client, parse_url, uploaded_folders

_KEY = re.compile(r"^(?P<name>[A-Za-z0-9_-]+)\.(?P<run>[A-Za-z0-9_-]+)--(?P<ckpt>checkpoint-\d+)$")
_RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{4}$")


def new_run_id() -> str:
    """Sortable by time, unique: ``20261122-093015-a3f1``."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def run_folders(storage: Path, name: str) -> list[Path]:
    """A named run's folders, oldest first."""
    base = Path(storage) / "runs" / name
    return sorted(p for p in base.iterdir() if p.is_dir() and _RUN_ID.match(p.name)) if base.is_dir() else []


def latest_run(storage: Path, name: str) -> Path | None:
    folders = run_folders(storage, name)
    return folders[-1] if folders else None


def checkpoint_key(name: str, run_id: str, checkpoint: str) -> str:
    return f"{name}.{run_id}--{checkpoint}"


def parse_key(key: str) -> tuple[str, str, str]:
    """``(name, run id, checkpoint folder name)``; a clear error for anything else."""
    m = _KEY.match(key)
    if not m:
        raise ValueError(f"{key!r} is not a checkpoint key (they look like hero.20261122-093015-a3f1--checkpoint-500)")
    return m.group("name"), m.group("run"), m.group("ckpt")


def checkpoint_folder(storage: Path, key: str) -> Path:
    name, run_id, ckpt = parse_key(key)
    return Path(storage) / "runs" / name / run_id / "checkpoints" / ckpt


def healthy(folder: Path) -> bool:
    return not (Path(folder) / UNHEALTHY).exists()


def discover(storage: Path) -> dict[str, Path]:
    """Every complete, healthy regular checkpoint under ``<storage>/runs``, by key."""
    found = {}
    runs = Path(storage) / "runs"
    if not runs.exists():
        return found
    for lineage in sorted(runs.glob("*/*/checkpoints/checkpoint-*/lineage.json")):
        folder = lineage.parent
        run_dir = folder.parent.parent
        if not _RUN_ID.match(run_dir.name) or not (folder / "adapter_model.safetensors").exists():
            continue
        if healthy(folder):
            found[checkpoint_key(run_dir.parent.name, run_dir.name, folder.name)] = folder
    return found


def mark_unhealthy(folders, reason: str) -> list[str]:
    """Write the UNHEALTHY marker into each folder (their files are left as they are)."""
    marked = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_dir() and healthy(folder):
            tmp = folder / f".{UNHEALTHY}.{os.getpid()}"
            tmp.write_text(reason + "\n")
            os.replace(tmp, folder / UNHEALTHY)
            marked.append(str(folder))
    return marked


def _bucket_folders(url: str, client=None) -> dict[tuple[str, str, str], set[str]]:
    """``(name, run id, checkpoint folder) -> {file names}`` for the complete, healthy uploads
    under ``url``, laid out as ``<url>/<name>/<run id>/<folder>/<file>``."""

    return {folder: names for folder, names in uploaded_folders(url, 3, client).items() if _RUN_ID.match(folder[1])}


def bucket_checkpoints(url: str, client=None) -> dict[str, str]:
    """Every completely uploaded, healthy regular checkpoint under ``url`` (the root the runs
    upload to, ``$SPARK_CHECKPOINT_URL``), by key -> its gs:// URL."""
    root = url.rstrip("/")
    return {checkpoint_key(name, run, ckpt): f"{root}/{name}/{run}/{ckpt}"
            for (name, run, ckpt) in sorted(_bucket_folders(url, client)) if ckpt.startswith("checkpoint-")}


def latest_run_with_checkpoints(storage: Path, name: str, upload_root: str = "") -> str | None:
    """The newest run id of ``name`` that has a complete checkpoint, locally or (when
    ``upload_root`` is set) in the bucket; ``None`` if no run has one."""
    ids = {folder.name for folder in run_folders(storage, name)
           if any((c / "trainer_state.json").exists() and healthy(c) for c in (folder / "checkpoints").glob("*-*"))}
    if upload_root:
        ids |= {run for (n, run, _) in _bucket_folders(upload_root) if n == name}
    return max(ids) if ids else None


def mark_unhealthy_in_bucket(urls, reason: str, client=None) -> list[str]:
    """The UNHEALTHY marker for uploaded checkpoints (their files are left as they are)."""

    client = client or make_client()
    marked = []
    for url in urls:
        bucket, prefix = parse_url(url)
        client.bucket(bucket).blob(f"{prefix}/{UNHEALTHY}").upload_from_string(reason + "\n")
        marked.append(url)
    return marked
