"""Records of what a stage set aside, and why; and atomic writes.

Every stage reports what it rejected as a :class:`Rejection` with a machine-readable
``reason`` and a human sentence naming the input, so a bad file never disappears silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Rejection:
    """One input a stage did not use: where it was, why, and the words for a person."""

    stage: str
    input: str
    reason: str
    message: str
    text: str = ""  # what was set aside, where there is text to keep

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["text"]:
            del d["text"]
        return d


PREVIEW_CHARS = 2000


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    """What a rejection keeps of a text: its start, and how much more there was."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit:,} more characters not kept]"


def count_reasons(rejections: Iterable[Rejection]) -> dict[str, int]:
    return dict(sorted(Counter(r.reason for r in rejections).items()))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: a reader sees the
    old file or the whole new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: Path) -> dict:
    """A JSON file's object, or ``{}`` when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
