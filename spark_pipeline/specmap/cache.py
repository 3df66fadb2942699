"""A small on-disk cache of SpecMap's own intermediate results (repository indexes, parsed
datasheets): pickles the pipeline wrote itself, under the storage root, replaced atomically,
the least recently used dropped beyond a count. A file that cannot be read is rebuilt."""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def load(path: Path | None, kind: type):
    """The object cached at ``path`` when it is there, readable and a ``kind``; else None."""
    if path is None or not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            value = pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError) as exc:
        log.warning("the cached %s at %s cannot be read (%s); rebuilding it", kind.__name__, path, exc)
        return None
    if not isinstance(value, kind):
        return None
    try:
        os.utime(path)  # recently used
    except OSError:
        pass
    return value


def store(value, path: Path | None, keep: int) -> None:
    """Write ``value`` to ``path`` atomically; keep at most ``keep`` files beside it."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cache-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not cache %s (%s)", path, exc)
        if os.path.exists(tmp):
            os.unlink(tmp)
        return
    cached = sorted(path.parent.glob(f"*{path.suffix}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in cached[keep:]:
        old.unlink(missing_ok=True)
