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

A run folder belongs to one run (:func:`claim_run_folder`): the training program, and the
preparation of a launch, refuse a folder that holds another run's settings, checkpoints,
``result.json`` or ``metrics.jsonl`` unless they continue that run, before writing anything.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
from pathlib import Path

from spark_pipeline.training.gcs import UNHEALTHY, list_checkpoints, make_client, parse_url, uploaded_folders

_KEY = re.compile(r"^(?P<name>[A-Za-z0-9_-]+)\.(?P<run>[A-Za-z0-9_-]+)--(?P<ckpt>checkpoint-\d+)$")
_RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{4}$")
_STEP = re.compile(r"-(\d+)$")
#: The lineage that says which data and base model a run trains on: a launch into an existing
#: run folder must name the same (the rest, such as the Dagster run id, may change on a resume).
#: The cache key covers the tokenizer's fingerprint; the base model is its weights' hash (its
#: folder may be mounted elsewhere).
DATA_LINEAGE_KEYS = ("mixture_hash", "tokenized_cache", "base_model")


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
           if run_checkpoints(folder, ("checkpoints",), healthy_only=True)}
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


class RunFolderError(RuntimeError):
    """A run folder holds another run (its settings, checkpoints or results) that this launch
    does not continue; the message names the folder, what it holds and what to do instead."""


def _differences(there: dict, here: dict, keys=None, limit: int = 5) -> list[str]:
    keys = sorted(set(there) | set(here)) if keys is None else [k for k in keys if k in there and k in here]
    differ = [f"{k} {there.get(k)!r} there, {here.get(k)!r} here" for k in keys if there.get(k) != here.get(k)]
    return differ[:limit] + ([f"{len(differ) - limit} more"] if len(differ) > limit else [])


def run_checkpoints(run_dir: Path, subfolders=("checkpoints", "downloaded"),
                    healthy_only: bool = False) -> list[tuple[int, str, Path]]:
    """The complete checkpoints of a run folder (regular and emergency; downloaded ones too by
    default), by step: (step, name as shown, folder)."""
    found = []
    for sub in subfolders:
        for folder in (Path(run_dir) / sub).glob("*-*"):
            state = folder / "trainer_state.json"
            if folder.is_dir() and state.exists() and (healthy(folder) or not healthy_only):
                name = folder.name if sub == "checkpoints" else f"{sub}/{folder.name}"
                found.append((int(json.loads(state.read_text())["step"]), name + ("" if healthy(folder) else
                                                                                  " (UNHEALTHY)"), folder))
    return sorted(found, key=lambda c: (c[0], c[1]))


def run_outputs(run_dir: Path) -> list[str]:
    """What a run has left in its folder, said for a message: its complete checkpoints,
    ``result.json`` (with how it ended) and ``metrics.jsonl``; empty for a new or only prepared folder."""
    run_dir = Path(run_dir)
    held = []
    checkpoints = run_checkpoints(run_dir)
    if checkpoints:
        held.append("checkpoints " + ", ".join(name for _, name, _ in checkpoints))
    result = run_dir / "result.json"
    if result.exists():
        try:
            summary = json.loads(result.read_text())
            held.append(f"result.json (exit {summary.get('exit')} at step {summary.get('steps')})")
        except (OSError, ValueError):
            held.append("result.json")
    if (run_dir / "metrics.jsonl").exists():
        held.append("metrics.jsonl")
    return held


def check_settings(run_dir: Path, settings: dict) -> None:
    """The folder's ``settings.json``, when there is one, must be these settings (read the way
    the program reads it, so a file from before a setting existed compares with its default)."""
    from spark_pipeline.training.settings import SettingsError, TrainingSettings

    path = Path(run_dir) / "settings.json"
    if not path.exists():
        return
    try:
        there = TrainingSettings.from_dict(json.loads(path.read_text()), source=str(path)).to_dict()
    except (OSError, ValueError, SettingsError) as exc:
        raise RunFolderError(f"run folder {run_dir} holds settings.json that cannot be read ({exc}); refusing to "
                             "write into it. Give this run a new folder") from exc
    differ = _differences(there, settings)
    if differ:
        raise RunFolderError(f"run folder {run_dir} holds another run: its settings.json differs from this run's "
                             f"settings ({'; '.join(differ)}); refusing to write into it. Resume that run with its "
                             f"own settings ({path}), or give this run a new folder")


def check_lineage(run_dir: Path, lineage: dict) -> None:
    """The folder's ``lineage_input.json``, when there is one, must name the same data and base model."""
    path = Path(run_dir) / "lineage_input.json"
    if not path.exists():
        return

    def data(values: dict) -> dict:
        base = values.get("base_model")
        return {**values, "base_model": base.get("weights_sha256")} if isinstance(base, dict) else values

    differ = _differences(data(json.loads(path.read_text())), data(lineage), DATA_LINEAGE_KEYS)
    if differ:
        raise RunFolderError(f"run folder {run_dir} holds another run: its lineage_input.json names other data "
                             f"({'; '.join(differ)}); refusing to write into it. Give this run a new folder")


def _step_of(checkpoint: str) -> int | None:
    state = Path(checkpoint) / "trainer_state.json"
    if not checkpoint.startswith("gs://") and state.exists():
        return int(json.loads(state.read_text())["step"])
    m = _STEP.search(checkpoint.rstrip("/"))
    return int(m.group(1)) if m else None


def _of_this_run(run_dir: Path, checkpoint: str, upload: str) -> bool:
    if checkpoint.startswith("gs://"):
        return bool(upload) and checkpoint.startswith(upload.rstrip("/") + "/")
    parent = Path(checkpoint).resolve().parent
    return parent in ((run_dir / "checkpoints").resolve(), (run_dir / "downloaded").resolve())


def claim_run_folder(run_dir: Path, settings: dict, resume: str = "", resolved: str = "", upload: str = "") -> None:
    """Raise :class:`RunFolderError` unless a run with ``settings`` may write into ``run_dir``:
    the folder is new (or only prepared with these settings), or this run continues the one
    there — ``resume`` is ``latest`` or one of the folder's checkpoints (``resolved`` is the
    checkpoint ``latest`` found, or ``resume`` itself; ``upload`` is the run's bucket prefix)
    and no later checkpoint of the folder would be trained over. Reads only; call it before
    anything is written."""
    run_dir = Path(run_dir)
    check_settings(run_dir, settings)
    held = run_outputs(run_dir)
    continuing = bool(resolved) and _of_this_run(run_dir, resolved, upload)
    if held and not continuing:
        holds = f"run folder {run_dir} already holds a run ({'; '.join(held)})"
        if not resume:
            raise RunFolderError(f"{holds}; refusing to write into it without resuming that run. Resume it "
                                 "(--resume latest), or give this run a new folder")
        if resume == "latest":
            where = "" if upload else " (without --upload the bucket was not searched)"
            raise RunFolderError(f"{holds}, but --resume latest found no healthy checkpoint of it to continue "
                                 f"from{where}; refusing to start over in it. Give this run a new folder")
        raise RunFolderError(f"{holds}, and {resume} is not one of its checkpoints; refusing to write into it. Start "
                             "the new run from that checkpoint in a new folder, or continue this one (--resume latest)")
    if continuing:
        step = _step_of(resolved)
        later = [name for s, name, _ in run_checkpoints(run_dir) if step is not None and s > step]
        if upload and step is not None:
            later += [f"{upload.rstrip('/')}/{name}" for name, s in sorted(list_checkpoints(upload).items())
                      if s > step]
        if later:
            raise RunFolderError(f"run folder {run_dir} holds checkpoints after step {step} ({', '.join(later)}); "
                                 f"resuming from {resolved} would train those steps again over them. Resume the newest "
                                 f"(--resume latest), or start a new run from {resolved} in a new folder")
