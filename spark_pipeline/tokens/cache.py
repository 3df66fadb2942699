"""The tokenized cache (paper §4.8) and document-isolating packing.

``build_cache`` tokenizes the mixture with a process pool. Every sample carries its
``sample_idx`` (its position in ``seq`` order) through the pool; afterwards the order is
verified (first and last index, and that the indices run in sequence) and restored by
sorting if it is broken. Source text is encoded as text (a literal ``<|endoftext|>`` in a
comment is not an end of document); the EOS id is appended to each sample. A sample longer
than ``max_length`` tokens is split into several rows, each cut after the last token that
ends a line within the limit (a hard cut only when no line ends there), and only the last
row ends with EOS: nothing is thrown away, and the count of split samples is reported. The
result is an Arrow
IPC file read back memory-mapped, in a folder named by the cache key (mixture hash,
tokenizer fingerprint, max length, sample count); ``.done`` is written last, and other
ranks wait for it by polling (``wait_for_cache``), never through a collective barrier.

Packing lays documents end to end into rows of ``seq_len`` tokens in order, never
splitting one; ``position_ids`` restart at 0 for every document, so attention (flash
attention's varlen path on GPU, sdpa with packed-sequence detection and ``use_cache=False``
on CPU) never crosses a document boundary, and the first token of each document is not a
prediction target of the previous one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from spark_pipeline.records import atomic_write_json
from spark_pipeline.tokens.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


class CacheError(RuntimeError):
    pass


@dataclass
class CacheInfo:
    key: str
    path: str
    samples: int
    tokens: int
    truncated: int
    order_restored: bool
    tokenizer: str
    tokenizer_fingerprint: str
    mixture_hash: str
    max_length: int
    seconds: float
    split_samples: int = 0
    """Samples longer than ``max_length`` tokens, stored as several rows."""
    rows: int = 0
    hard_splits: int = 0
    """Cuts that found no line end within the limit."""

    def to_dict(self) -> dict:
        return asdict(self)


def cache_key(mixture_hash: str, tokenizer_fingerprint: str, max_length: int, samples: int) -> str:
    blob = json.dumps([mixture_hash, tokenizer_fingerprint, max_length, samples])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_mixture(mixture_dir: Path) -> tuple[dict, list[str]]:
    """The manifest and the texts in ``seq`` order (checked)."""
    manifest_path = Path(mixture_dir) / "manifest.json"
    if not manifest_path.exists():
        raise CacheError(f"no training mixture at {mixture_dir}: materialize training_mixture first")
    manifest = json.loads(manifest_path.read_text())
    texts: list[str] = []
    last = -1
    for shard in manifest["shards"]:
        table = pq.read_table(Path(mixture_dir) / shard["file"], columns=["seq", "text"])
        seqs = table.column("seq").to_pylist()
        if any(s <= p for p, s in zip([last] + seqs[:-1], seqs, strict=True)):
            raise CacheError(f"{mixture_dir}/{shard['file']}: seq does not increase; the mixture is damaged")
        last = seqs[-1] if seqs else last
        texts.extend(table.column("text").to_pylist())
    return manifest, texts


_WORKER_TOKENIZER = None


def _init_worker(name: str) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = load_tokenizer(name)


def _encode_job(args) -> tuple[int, list[list[int]]]:
    start, texts = args
    return start, _WORKER_TOKENIZER.encode_documents(texts)


def split_document(ids: list[int], max_length: int, tokenizer, line_end: dict[int, bool]
                   ) -> tuple[list[list[int]], int]:
    """A document of more than ``max_length`` tokens as pieces of at most ``max_length``, cut
    after the last token that ends a line in the second half of each window; returns the
    pieces and how many cuts found no line end. ``line_end`` caches which ids hold a newline."""
    if len(ids) <= max_length:
        return [ids], 0
    pieces, hard, start = [], 0, 0
    while len(ids) - start > max_length:
        end = start + max_length
        cut = None
        for pos in range(end - 1, start + max_length // 2 - 1, -1):
            token = ids[pos]
            if token not in line_end:
                line_end[token] = "\n" in tokenizer.decode([token])
            if line_end[token]:
                cut = pos + 1
                break
        if cut is None:
            cut, hard = end, hard + 1
        pieces.append(ids[start:cut])
        start = cut
    pieces.append(ids[start:])
    return pieces, hard


def verify_order(indices: list[int]) -> bool:
    """First is 0, last is n-1, and every index follows the one before."""
    n = len(indices)
    if not n:
        return True
    if indices[0] != 0 or indices[-1] != n - 1:
        return False
    return all(b == a + 1 for a, b in zip(indices, indices[1:], strict=False))


def build_cache(mixture_dir: Path, out_root: Path, tokenizer_name: str = "dolma2-offline", max_length: int = 2048,
                workers: int = 1, batch_size: int = 256, progress=None) -> CacheInfo:
    started = time.perf_counter()
    manifest, texts = read_mixture(mixture_dir)
    tokenizer = load_tokenizer(tokenizer_name)
    key = cache_key(manifest["mixture_hash"], tokenizer.fingerprint, max_length, len(texts))
    out = Path(out_root) / key
    if (out / ".done").exists():
        return CacheInfo(**json.loads((out / "cache.json").read_text()))
    batches = [(i, texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    results: list[tuple[int, list[int]]] = []
    n = max(1, min(workers, os.cpu_count() or 1))
    if n > 1 and len(batches) > 1:
        with ProcessPoolExecutor(max_workers=n, initializer=_init_worker, initargs=(tokenizer_name,)) as pool:
            futures = [pool.submit(_encode_job, b) for b in batches]
            for done, fut in enumerate(as_completed(futures), 1):  # arrival order, not submission order
                start, ids = fut.result()
                results.extend((start + j, x) for j, x in enumerate(ids))
                if progress:
                    progress(done, len(batches))
    else:
        for done, (start, chunk) in enumerate(batches, 1):
            results.extend((start + j, x) for j, x in enumerate(tokenizer.encode_documents(chunk)))
            if progress:
                progress(done, len(batches))
    restored = not verify_order([i for i, _ in results])
    if restored:
        results.sort(key=lambda r: r[0])
        if not verify_order([i for i, _ in results]):
            raise CacheError("sample indices are missing or repeated after tokenization")
    ids_column, index_column = [], []
    split = hard = 0
    line_end: dict[int, bool] = {}
    for sample, ids in results:
        pieces, cuts = split_document(ids, max_length, tokenizer, line_end)
        split += len(pieces) > 1
        hard += cuts
        ids_column.extend(pieces)
        index_column.extend([sample] * len(pieces))
    truncated = 0  # nothing is cut away any more; samples over max_length are split
    tmp = out.parent / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    table = pa.table({"input_ids": pa.array(ids_column, type=pa.list_(pa.int32())),
                      "sample_idx": pa.array(index_column, type=pa.int64())})
    with pa.OSFile(str(tmp / "tokens.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=8192)
    info = CacheInfo(key, str(out), len(results), int(sum(len(x) for x in ids_column)), truncated, restored,
                     tokenizer.name, tokenizer.fingerprint, manifest["mixture_hash"], max_length,
                     round(time.perf_counter() - started, 3), split_samples=split, rows=len(ids_column),
                     hard_splits=hard)
    atomic_write_json(tmp / "cache.json", {**info.to_dict(), "path": str(out)})
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    (out / ".done").write_text(key + "\n")  # last: readers wait for this file
    info.path = str(out)
    return info


def wait_for_cache(path: Path, poll_s: float = 5.0, log_every_s: float = 60.0, timeout_s: float | None = None,
                   logger=log) -> None:
    """Block until ``path/.done`` exists, polling every ``poll_s`` seconds and saying how long
    it has waited every ``log_every_s``; no collective call, so a slow rank 0 cannot time out
    a barrier."""
    start = time.monotonic()
    next_log = log_every_s
    done = Path(path) / ".done"
    while not done.exists():
        waited = time.monotonic() - start
        if timeout_s is not None and waited > timeout_s:
            raise CacheError(f"tokenized cache {path} not ready after {waited:.0f} s")
        if waited >= next_log:
            logger.info(f"waiting for tokenized cache {path}: {waited:.0f} s")
            next_log += log_every_s
        time.sleep(poll_s)


def open_cache(path: Path) -> pa.Table:
    """The cache, memory-mapped (no copy into memory)."""
    if not (Path(path) / ".done").exists():
        raise CacheError(f"tokenized cache {path} is incomplete (no .done)")
    source = pa.memory_map(str(Path(path) / "tokens.arrow"), "r")
    return pa.ipc.open_file(source).read_all()


def pack_plan(lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """Row boundaries: documents ``[plan[r], plan[r + 1])`` fill row ``r``; greedy, in order."""
    bounds = [0]
    used = 0
    for i, n in enumerate(lengths.tolist()):
        if n > seq_len:
            raise CacheError(f"document {i} has {n} tokens, more than a row of {seq_len}")
        if used + n > seq_len:
            bounds.append(i)
            used = 0
        used += n
    if used:
        bounds.append(len(lengths))
    return np.asarray(bounds, dtype=np.int64)


class PackedDataset:
    """Rows of ``seq_len`` tokens packed from the cache, each with input_ids, labels and
    position_ids; indexable, so training resumes by row index without replaying batches."""

    def __init__(self, path: Path, seq_len: int, pad_id: int):
        self.table = open_cache(path)
        self.seq_len = seq_len
        self.pad_id = pad_id
        column = self.table.column("input_ids").combine_chunks()
        self.offsets = np.asarray(column.offsets)
        self.values = np.asarray(column.values)
        self.lengths = np.diff(self.offsets)
        self.plan = pack_plan(self.lengths, seq_len)
        digest = hashlib.sha256(self.plan.tobytes())
        digest.update(str(seq_len).encode())
        self.fingerprint = digest.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.plan) - 1

    @property
    def efficiency(self) -> float:
        return float(self.lengths.sum()) / (len(self) * self.seq_len) if len(self) else 0.0

    def __getitem__(self, row: int) -> dict[str, np.ndarray]:
        first, last = self.plan[row], self.plan[row + 1]
        start, end = self.offsets[first], self.offsets[last]
        n = end - start
        ids = np.full(self.seq_len, self.pad_id, dtype=np.int64)
        ids[:n] = self.values[start:end]
        labels = np.full(self.seq_len, IGNORE_INDEX, dtype=np.int64)
        labels[:n] = ids[:n]
        positions = np.zeros(self.seq_len, dtype=np.int64)
        cursor = 0
        for length in self.lengths[first:last].tolist():
            positions[cursor:cursor + length] = np.arange(length)
            if cursor:
                labels[cursor] = IGNORE_INDEX  # no document predicts the next one's first token
            cursor += length
        if cursor < self.seq_len:
            positions[cursor:] = np.arange(self.seq_len - cursor)  # padding is a document of its own
        return {"input_ids": ids, "labels": labels, "position_ids": positions}
