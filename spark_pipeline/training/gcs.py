"""Checkpoints to and from Google Cloud Storage.

``CheckpointUploader`` copies checkpoint folders to ``gs://bucket/prefix/<folder name>/`` in a
background thread, so training does not wait. Each file is uploaded and then checked
against the bucket (size and MD5); when every file checks out, a ``_UPLOAD_COMPLETE`` marker
is written, and only then is the local copy deleted (if asked). Failures are retried with
exponential backoff; a checkpoint whose upload finally fails stays on local disk, so nothing
is lost when the bucket is unreachable. Before the marker is written the whole folder is
verified again, which catches a storage service that lost objects while it was away.

``download_checkpoint`` fetches a completed checkpoint (marker required) and checks every
file's MD5. The client honours ``STORAGE_EMULATOR_HOST`` (tests use gcp-storage-emulator
on loopback with the real ``google-cloud-storage`` client).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
MARKER = "_UPLOAD_COMPLETE"
#: Written into a checkpoint saved after the last healthy step (``training.runs`` marks them;
#: listings here leave them out). Defined here, the lower layer, so the two modules do not
#: import each other.
UNHEALTHY = "UNHEALTHY"


class GCSError(RuntimeError):
    pass


class CheckpointConflict(GCSError):
    """The bucket already holds a different complete checkpoint under that name."""


def uploaded_folders(url: str, depth: int, client=None) -> dict[tuple[str, ...], set[str]]:
    """Folders ``depth`` levels below ``url`` that hold files, with those files' names, for
    the folders whose upload completed and that are not marked UNHEALTHY (the marker and the
    unhealthy mark are files in the folder): ``(level 1, ..., level depth) -> {names}``."""
    bucket_name, prefix = parse_url(url)
    client = client or make_client()
    found: dict[tuple[str, ...], set[str]] = {}
    for blob in client.list_blobs(bucket_name, prefix=(prefix + "/") if prefix else None):
        parts = blob.name[len(prefix) + 1 if prefix else 0:].split("/")
        if len(parts) == depth + 1:
            found.setdefault(tuple(parts[:-1]), set()).add(parts[-1])
    return {folder: names for folder, names in found.items() if MARKER in names and UNHEALTHY not in names}


def list_checkpoints(url: str, client=None) -> dict[str, int]:
    """Completed, healthy checkpoints directly under ``url``: folder name -> step."""
    import json

    bucket_name, prefix = parse_url(url)
    client = client or make_client()
    bucket = client.bucket(bucket_name)
    found = {}
    for (folder,) in uploaded_folders(url, 1, client):
        state = bucket.get_blob("/".join(p for p in (prefix, folder, "trainer_state.json") if p))
        if state is not None:
            found[folder] = int(json.loads(state.download_as_bytes())["step"])
    return found


def parse_url(url: str) -> tuple[str, str]:
    if not url.startswith("gs://"):
        raise GCSError(f"{url!r} is not a gs:// URL")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise GCSError(f"{url!r} names no bucket")
    return bucket, prefix.strip("/")


def make_client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "spark-pipeline"),
                              credentials=AnonymousCredentials())
    return storage.Client()


def _md5_b64(path: Path) -> str:
    digest = hashlib.md5()  # noqa: S324 - GCS reports MD5; this is an integrity check, not security
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return base64.b64encode(digest.digest()).decode()


@dataclass
class UploadStatus:
    folder: str
    url: str
    state: str = "queued"  # queued | uploading | uploaded | failed | conflict | pending
    attempts: int = 0
    files: int = 0
    bytes: int = 0
    error: str = ""
    deleted_local: bool = False
    seconds: float = 0.0


@dataclass
class CheckpointUploader:
    url: str
    delete_local: bool = False
    max_attempts: int = 6
    """Whole-folder attempts (after a lost bucket, a failed verification); each request inside
    one is retried by the client library for up to ``request_retry_s``."""
    backoff_s: float = 1.0
    timeout_s: float = 120.0
    request_retry_s: float = 60.0
    client_factory: object = make_client
    after_file: object = None  # called (relative path) after each file upload: progress, tests
    statuses: list = field(default_factory=list)

    def __post_init__(self):
        self.bucket_name, self.prefix = parse_url(self.url)
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="checkpoint-uploader", daemon=True)
        self._thread.start()

    def submit(self, folder: Path) -> UploadStatus:
        folder = Path(folder)
        dest = f"gs://{self.bucket_name}/{self.prefix + '/' if self.prefix else ''}{folder.name}"
        status = UploadStatus(str(folder), dest)
        self.statuses.append(status)
        self._queue.put((folder, status))
        return status

    def close(self, timeout: float | None = None) -> list[UploadStatus]:
        """Wait for the queued uploads to finish (or fail) for at most ``timeout`` seconds in
        all; what is still queued or uploading then is left ``pending`` (its local copy is
        kept; ``spark upload`` finishes it later) and the thread is abandoned."""
        self._queue.put(None)
        self._thread.join(timeout)
        for status in self.statuses:
            if status.state in ("queued", "uploading"):
                status.state = "pending"
                status.error = status.error or f"not finished within the {timeout:.0f} s upload deadline"
        return self.statuses

    def _work(self):
        client = None
        while True:
            item = self._queue.get()
            if item is None:
                return
            folder, status = item
            status.state = "uploading"
            started = time.monotonic()
            for attempt in range(1, self.max_attempts + 1):
                status.attempts = attempt
                try:
                    client = client or self.client_factory()
                    self._upload(client, folder, status)
                    status.state = "uploaded"
                    status.error = ""
                    break
                except CheckpointConflict as exc:
                    status.state, status.error = "conflict", str(exc)
                    log.error(str(exc))
                    break
                except Exception as exc:  # noqa: BLE001 - any transport failure is retried
                    status.error = f"{type(exc).__name__}: {exc}"[:500]
                    log.warning(f"upload of {folder} to {status.url} failed (attempt {attempt}): {status.error}")
                    client = None
                    if attempt < self.max_attempts:
                        time.sleep(self.backoff_s * 2 ** (attempt - 1))
            else:
                status.state = "failed"
                log.error(f"giving up on uploading {folder}; the local copy is kept")
            status.seconds = time.monotonic() - started
            if status.state == "uploaded" and self.delete_local:
                shutil.rmtree(folder, ignore_errors=True)
                status.deleted_local = True

    def _blob_name(self, folder: Path, rel: str) -> str:
        return "/".join(p for p in (self.prefix, folder.name, rel) if p)

    def _upload(self, client, folder: Path, status: UploadStatus) -> None:
        from google.cloud.storage.retry import DEFAULT_RETRY

        retry = DEFAULT_RETRY.with_timeout(self.request_retry_s)
        bucket = client.bucket(self.bucket_name)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        status.files, status.bytes = len(files), sum(p.stat().st_size for p in files)
        local = {p: (p.stat().st_size, _md5_b64(p)) for p in files}  # each file hashed once per attempt
        there = self._listed(client, folder, retry)  # one listing: what an earlier attempt left
        if self._blob_name(folder, MARKER) in there:
            # A complete checkpoint is immutable: the same files again is a no-op, other files a conflict.
            differ = [p.relative_to(folder).as_posix() for p in files if not self._matches(there, folder, p, local)]
            if differ:
                raise CheckpointConflict(f"{status.url} already holds a complete checkpoint with other files "
                                         f"({differ[:3]}); refusing to overwrite it, the local copy is kept")
            return
        for path in files:
            rel = path.relative_to(folder).as_posix()
            if self._matches(there, folder, path, local):
                continue  # already there from an earlier attempt
            # The library retries transient failures and checks the MD5 the bucket computed
            # against the local file's (DataCorruption otherwise): no second request.
            bucket.blob(self._blob_name(folder, rel)).upload_from_filename(
                str(path), timeout=self.timeout_s, retry=retry, checksum="md5")
            if self.after_file:
                self.after_file(rel)
        # verify the whole folder once more (one listing) before declaring it complete
        there = self._listed(client, folder, retry)
        missing = [p.relative_to(folder).as_posix() for p in files if not self._matches(there, folder, p, local)]
        if missing:
            raise GCSError(f"{len(missing)} file(s) missing or changed in the bucket: {missing[:3]}")
        bucket.blob(self._blob_name(folder, MARKER)).upload_from_string(
            f"{len(files)} files, {status.bytes} bytes\n", timeout=self.timeout_s, retry=retry)

    def _listed(self, client, folder: Path, retry) -> dict[str, tuple[int, str]]:
        """Every object under the checkpoint's prefix: name -> (size, MD5)."""
        prefix = self._blob_name(folder, "") + "/"
        return {b.name: (b.size, b.md5_hash) for b in client.list_blobs(self.bucket_name, prefix=prefix,
                                                                        timeout=self.timeout_s, retry=retry)}

    def _matches(self, there: dict[str, tuple[int, str]], folder: Path, path: Path,
                 local: dict[Path, tuple[int, str]]) -> bool:
        return there.get(self._blob_name(folder, path.relative_to(folder).as_posix())) == local[path]


def download_checkpoint(url: str, dest: Path, client=None) -> Path:
    """Download a completed checkpoint folder; every file's MD5 is checked."""
    bucket_name, prefix = parse_url(url)
    client = client or make_client()
    bucket = client.bucket(bucket_name)
    if bucket.get_blob(f"{prefix}/{MARKER}") is None:
        raise GCSError(f"{url} has no {MARKER} marker: the upload never completed")
    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.download"
    shutil.rmtree(tmp, ignore_errors=True)
    for blob in client.list_blobs(bucket_name, prefix=prefix + "/"):
        rel = blob.name[len(prefix) + 1:]
        if rel == MARKER:
            continue
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(target))
        if blob.md5_hash and _md5_b64(target) != blob.md5_hash:
            raise GCSError(f"{blob.name}: MD5 differs after download")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest
