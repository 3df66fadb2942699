"""Chunking + cleaning + filtering throughput on real code, against a floor measured in the
same run on the same bytes.

    python benchmarks/corpus_bench.py [--source DIR] [--mb 64] [--runs 3]

Input: the C sources of DIR (a real embedded repository brought onto the machine), or by
default the Linux kernel's ``drivers/`` tree from Debian's ``linux-source`` package, which
the script installs with apt-get when it is missing (root) and unpacks up to ``--mb`` MB.
The files are laid out as a SpecMap mapping file (sections of four files each, 82-``=``
separators, ``// File:`` markers) and written to disk.

Measured, as medians of ``--runs``:
* floor: read the file, decode it, one regular-expression pass over the text;
* ours: read, decode, stage 2 (chunking) and stage 3 (cleaning, filtering, categories) with
  1 worker and with every core.
Printed: MB/s per core, our time over the floor's, and the scaling from 1 to all workers.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark_pipeline.corpus.chunking import chunk_mapping  # noqa: E402
from spark_pipeline.corpus.settings import CorpusSettings  # noqa: E402
from spark_pipeline.corpus.stages import sample_rows  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "spark_corpus_bench"
SUFFIXES = {".c", ".h", ".S", ".s", ".dts", ".dtsi"}


def linux_drivers(limit: int) -> Path:
    """Unpack up to ``limit`` bytes of C sources under drivers/ from Debian's linux-source."""
    target = CACHE / "linux-drivers"
    if target.exists() and sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) >= limit:
        return target
    tarballs = sorted(Path("/usr/src").glob("linux-source-*.tar.xz"))
    if not tarballs:
        if os.geteuid() != 0:
            sys.exit("linux-source is not installed and this is not root: install it, or pass --source DIR")
        print("installing Debian's linux-source (about 140 MB) ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "linux-source"], check=True)
        tarballs = sorted(Path("/usr/src").glob("linux-source-*.tar.xz"))
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    total = 0
    print(f"unpacking drivers/ sources from {tarballs[-1].name} ...", flush=True)
    with tarfile.open(tarballs[-1], "r:xz") as tar:
        for member in tar:
            if total >= limit:
                break
            parts = member.name.split("/", 1)
            if len(parts) < 2 or not parts[1].startswith("drivers/") or not member.isfile():
                continue
            if Path(member.name).suffix not in SUFFIXES:
                continue
            data = tar.extractfile(member).read()
            dest = target / parts[1]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            total += len(data)
    return target


def build_mapping(source: Path, limit: int) -> tuple[Path, int]:
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    sep = "=" * 82
    out = CACHE / "mapping.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with open(out, "w", encoding="utf-8") as handle:
        for start in range(0, len(files), 4):
            group = files[start:start + 4]
            block = [sep, f"Section b{start // 4}: {group[0].parent.name}", "Status: partial", "",
                     "Datasheet text describing the peripheral registers and their fields.", ""]
            for f in group:
                block.append(f"// File: {f.relative_to(source).as_posix()}")
                block.append(f.read_text(encoding="utf-8", errors="replace"))
            text = "\n".join(block) + "\n"
            handle.write(text)
            size += len(text.encode("utf-8"))
            if size >= limit:
                break
    return out, size


def floor(path: Path) -> float:
    t0 = time.perf_counter()
    text = path.read_bytes().decode("utf-8")
    re.findall(r"#\s*define\b", text)
    return time.perf_counter() - t0


def ours(path: Path, settings: CorpusSettings, workers: int) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    data = path.read_bytes()
    chunks, _ = chunk_mapping(data, "bench", settings.chunking, workers)
    rows = [{"pair_id": "bench", "category": "linux_kernel", "section_id": c.section_id,
             "chunk_index": c.chunk_index, "text": c.text, "boundary": c.boundary, "source_files": c.source_files}
            for c in chunks]
    kept, rejected = sample_rows(rows, settings, workers)
    return time.perf_counter() - t0, len(kept), len(rejected)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, help="a folder of real C code (default: linux-source drivers/)")
    parser.add_argument("--mb", type=float, default=64.0, help="megabytes of code to process")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    limit = int(args.mb * 1e6)
    source = args.source.resolve() if args.source else linux_drivers(limit)
    mapping, size = build_mapping(source, limit)
    mb = size / 1e6
    settings = CorpusSettings.load("hero")
    cores = os.cpu_count() or 1
    print(f"input: {source} laid out as a {mb:.1f} MB mapping file; {cores} cores; medians of {args.runs} runs")

    floor_times = [floor(mapping) for _ in range(args.runs)]
    results = {}
    for workers in sorted({1, cores}):
        runs = [ours(mapping, settings, workers) for _ in range(args.runs)]
        results[workers] = (statistics.median(t for t, _, _ in runs), runs[0][1], runs[0][2])
    f = statistics.median(floor_times)
    print(f"floor (read + decode + one regex pass): {mb / f:8.1f} MB/s on 1 core")
    for workers, (t, kept, rejected) in results.items():
        print(f"chunk+clean+filter, {workers} worker(s): {mb / t:8.1f} MB/s total, {mb / t / workers:6.1f} MB/s per core, "
              f"{t / f:5.1f}x the floor's time  ({kept} samples kept, {rejected} rejected)")
    if len(results) > 1:
        t1, tn = results[1][0], results[cores][0]
        print(f"scaling 1 -> {cores} workers: {t1 / tn:.2f}x faster (ideal {cores}x)")
    per_core = mb / results[1][0]
    print(f"target 20 MB/s per core: {'met' if per_core >= 20 else 'NOT met'} ({per_core:.1f} MB/s on one core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
