"""Tokenization throughput: our tokenized-cache build against the ceiling and the paper's way,
on the same texts in the same run.

    python benchmarks/tokenize_bench.py [--mb 16] [--runs 3]

Texts: C sources from Debian's linux-source (the corpus benchmark's unpacked drivers/ tree,
prepared by ``corpus_bench.py``; this script unpacks it the same way when missing), cut into
samples of at most 7,500 characters and written as a training mixture.
* ours: ``build_cache`` (process pool over all cores, order check, Arrow file, .done);
* ceiling: ``tokenizers`` ``encode_batch`` with OLMo-3's dolma2 ``tokenizer.json`` from
  $SPARK_REFERENCE_DIR (skipped with a message when absent);
* the paper's way: ``datasets.Dataset.map(num_proc=cores)`` with the same ``tokenizers``
  tokenizer (``datasets`` is installed when missing).
Tokens are counted once (ours and the ceiling give the same ids). Medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from spark_pipeline.corpus.parquet import MIXTURE_SCHEMA, write_table  # noqa: E402
from spark_pipeline.records import atomic_write_json  # noqa: E402
from spark_pipeline.tokens.cache import build_cache  # noqa: E402

REAL_TOKENIZER = Path(os.environ.get("SPARK_REFERENCE_DIR", "/nonexistent")) / "dolma2-tokenizer.json"
WORK = Path(tempfile.gettempdir()) / "spark_tokenize_bench"


def texts_from_linux(limit: int) -> list[str]:
    import corpus_bench

    source = corpus_bench.linux_drivers(limit)
    texts, size = [], 0
    for path in sorted(p for p in source.rglob("*") if p.suffix in {".c", ".h"}):
        data = path.read_text(encoding="utf-8", errors="replace")
        for i in range(0, len(data), 7500):
            texts.append(data[i:i + 7500] + "<|endoftext|>")
            size += len(texts[-1])
        if size >= limit:
            break
    return texts


def write_mixture(texts: list[str]) -> Path:
    folder = WORK / "mixture"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rows = [{"seq": i, "text": t, "category": "linux_kernel", "source": "domain", "pair_id": "bench",
             "section_id": "s", "chunk_index": i, "sample_hash": str(i), "truncated": False} for i, t in enumerate(texts)]
    shards = []
    for k in range(0, len(rows), 5000):
        name = f"shard-{k // 5000:05d}.parquet"
        write_table(folder / name, rows[k:k + 5000], MIXTURE_SCHEMA)
        shards.append({"file": name, "rows": len(rows[k:k + 5000])})
    atomic_write_json(folder / "manifest.json", {"mixture_hash": f"bench-{len(texts)}-{time.time_ns()}",
                                                 "shards": shards})
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=16.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    texts = texts_from_linux(int(args.mb * 1e6))
    chars = sum(map(len, texts))
    print(f"input: {len(texts)} samples, {chars / 1e6:.1f} MB of linux-source drivers/ C; {cores} cores; "
          f"medians of {args.runs}")

    ours, tokens = [], 0
    for _ in range(args.runs):
        mixture = write_mixture(texts)  # a fresh mixture hash each run: no cache reuse
        shutil.rmtree(WORK / "tokens", ignore_errors=True)
        t0 = time.perf_counter()
        info = build_cache(mixture, WORK / "tokens", "dolma2-offline", max_length=10**9, workers=cores)
        ours.append(time.perf_counter() - t0)
        tokens = info.tokens
    t_ours = statistics.median(ours)
    print(f"ours (dolma2-offline, {cores} processes, cache written): {tokens / t_ours / 1e6:6.2f} M tokens/s "
          f"({tokens:,} tokens, {chars / tokens:.2f} chars/token)")

    if not REAL_TOKENIZER.exists():
        print(f"ceiling and datasets.map skipped: {REAL_TOKENIZER} is absent")
        return 0
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(REAL_TOKENIZER))
    ceiling = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        tok.encode_batch(texts, add_special_tokens=False)
        ceiling.append(time.perf_counter() - t0)
    t_ceil = statistics.median(ceiling)
    print(f"ceiling (tokenizers encode_batch, Rust threads, nothing written): {tokens / t_ceil / 1e6:6.2f} M tokens/s")

    try:
        importlib.import_module("datasets")
    except ImportError:
        print("installing datasets for the comparison ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "datasets"], check=True)
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()

    def encode(batch):
        return {"input_ids": [e.ids for e in tok.encode_batch(batch["text"], add_special_tokens=False)]}

    hf = []
    for _ in range(args.runs):
        ds = Dataset.from_dict({"text": texts})
        t0 = time.perf_counter()
        ds.map(encode, batched=True, num_proc=cores, remove_columns=["text"], load_from_cache_file=False)
        hf.append(time.perf_counter() - t0)
    t_hf = statistics.median(hf)
    print(f"datasets.map(num_proc={cores}) with the same tokenizer: {tokens / t_hf / 1e6:6.2f} M tokens/s")
    print(f"ours / ceiling: {t_ceil / t_ours:.2f}x the ceiling's throughput; ours / datasets.map: {t_hf / t_ours:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
