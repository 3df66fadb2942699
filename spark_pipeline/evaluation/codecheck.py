"""Beyond the paper (its limitations, §8.6): does generated code compile, and how much of it
is copied from the training data?

* ``compile_rate``: the sample's prefix followed by the generation, checked with
  ``arm-none-eabi-gcc`` when installed, else ``gcc``, as ``-fsyntax-only -std=gnu11 -w`` with
  the pair repository's header folders on the include path. Evaluation samples are chunks of
  files, so many prefixes are fragments that cannot compile whatever follows: compare rates
  between models, not against 100%.
* ``memorization``: the longest run of tokens a generation shares with the training mixture,
  found through an index of the mixture's n-grams (n = 8); a run counts from 8 tokens. The
  index holds the whole mixture, which suits the embedded default and a sampled production
  mixture, not 23.5B tokens in memory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np


def compiler() -> str | None:
    return shutil.which("arm-none-eabi-gcc") or shutil.which("gcc") or shutil.which("cc")


def compiles(source: str, include_dirs: list[str], timeout_s: float = 20.0) -> bool | None:
    """True/False, or None when no C compiler is installed."""
    cc = compiler()
    if cc is None:
        return None
    with tempfile.TemporaryDirectory(prefix="spark-cc-") as tmp:
        path = Path(tmp) / "sample.c"
        path.write_text(source)
        cmd = [cc, "-fsyntax-only", "-std=gnu11", "-w"] + [f"-I{d}" for d in include_dirs] + [str(path)]
        try:
            return subprocess.run(cmd, capture_output=True, timeout=timeout_s).returncode == 0
        except subprocess.TimeoutExpired:
            return False


def header_dirs(repo_root: Path, limit: int = 64) -> list[str]:
    """Folders of a repository that hold headers (for ``-I``)."""
    dirs = []
    for dirpath, dirnames, filenames in os.walk(repo_root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if any(f.endswith(".h") for f in filenames):
            dirs.append(dirpath)
            if len(dirs) >= limit:
                break
    return dirs


class NgramIndex:
    def __init__(self, documents: list[np.ndarray] | list[list[int]], n: int = 8):
        self.n = n
        self.grams: set[bytes] = set()
        for doc in documents:
            arr = np.asarray(doc, dtype=np.int64)
            if len(arr) < n:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(arr, n)
            self.grams.update(w.tobytes() for w in windows)

    def longest_overlap(self, tokens: list[int]) -> int:
        """Length of the longest run of ``tokens`` that appears in the indexed documents
        (0 when no n-gram matches)."""
        n = self.n
        if len(tokens) < n:
            return 0
        arr = np.asarray(tokens, dtype=np.int64)
        hits = [w.tobytes() in self.grams for w in np.lib.stride_tricks.sliding_window_view(arr, n)]
        best = run = 0
        for hit in hits:
            run = run + 1 if hit else 0
            best = max(best, run)
        return best + n - 1 if best else 0
