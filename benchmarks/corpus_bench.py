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

Real-pairs mode, ``--pairs DIR``: SpecMap, then stages 2-4, on the real repository-datasheet
pairs of ``benchmarks/specmap_labels/`` (checkouts in DIR named ``<owner>__<name>``; each
datasheet from the reference folder or its source repository's checkout, as SpecMap's benchmark
finds it), one pair held out. Printed: the share of rows and
characters that were duplicates (exact and near, Jaccard >= 0.8) before deduplication and
after; contamination found by the exact check (near, exact, contained) against what plain
MinHash LSH at 0.8 flags; the samples over 2,048 tokens with OLMo-3's vocabulary (split into
rows now; the tokens the old cut would have dropped); and chunk+clean+filter MB/s per core
on the pairs' mapping files against the floor on the same bytes.
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


def real_pairs(repos: Path, runs: int) -> int:
    """SpecMap -> mixture on real pairs: duplicates, contamination, long samples, throughput."""
    import yaml

    from spark_pipeline.corpus.evalsets import select_in_domain
    from spark_pipeline.corpus.integrity import EvalIndex, deduplicate, lsh_matches
    from spark_pipeline.corpus.mixture import assemble
    from spark_pipeline.corpus.stages import chunk_rows
    from spark_pipeline.specmap.mapping_file import write_mapping
    from spark_pipeline.specmap.pairs import Datasheet, Pair, resolve_pair
    from spark_pipeline.specmap.pipeline import run_specmap
    from spark_pipeline.tokens.tokenizer import load_tokenizer

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from specmap_bench import LABELS, REFERENCE, locate_datasheet

    sheets = {}
    for path in sorted((LABELS / "datasheets").glob("*.yaml")):
        sheet = yaml.safe_load(path.read_text())
        sheets[sheet["file"]] = sheet
    labels = {"pairs": [yaml.safe_load(p.read_text()) for p in sorted(LABELS.glob("*.yaml"))]}
    settings = CorpusSettings.load("hero", {"eval": {"in_domain_samples": 200}})
    work = Path(tempfile.mkdtemp(prefix="corpus-real-"))
    held_out_pair = "mpu6000_python_mrtijn"
    domain, held_out, mappings = [], [], []
    for entry in labels["pairs"]:
        repo = repos / entry["repository"].replace("/", "__")
        sheet = locate_datasheet(sheets[entry["datasheet"]], repos, REFERENCE if REFERENCE.is_dir() else None)
        if not repo.is_dir() or sheet is None:
            print(f"skipped {entry['id']}: no checkout or datasheet")
            continue
        kind = "svd" if sheet.suffix == ".svd" else "pdf"
        pair = Pair(entry["id"], repo, None, None, (Datasheet(sheet, kind),), "", "", "", entry["domain_category"])
        result = run_specmap(resolve_pair(pair, work / "storage"), cache_dir=work / "cache")
        out = work / "specmap" / entry["id"]
        write_mapping(result, out)
        mappings.append(out / "mapping.txt")
        rows, _ = chunk_rows(out / "mapping.txt", entry["id"], entry["domain_category"], settings)
        kept, _ = sample_rows(rows, settings)
        (held_out if entry["id"] == held_out_pair else domain).extend(kept)
    if not domain:
        print("no pair could run")
        return 1
    in_domain = select_in_domain(domain, settings.eval)
    evaluation = [{**r, "split": "in_domain"} for r in in_domain] + [{**r, "split": "held_out"} for r in held_out]

    # Duplicates as the old mixture carried them (every domain row but the evaluation samples).
    eval_ids = {(r["pair_id"], r["section_id"], r["chunk_index"]) for r in in_domain}
    before = [r for r in domain if (r["pair_id"], r["section_id"], r["chunk_index"]) not in eval_ids]
    kept, drops = deduplicate(before, settings.eval.minhash_threshold, settings.eval.minhash_permutations)
    dup_chars = sum(len(d.dropped["text"]) for d in drops)
    chars = sum(len(r["text"]) for r in before)
    print(f"pairs: {len({r['pair_id'] for r in domain})} in training, held out: {held_out_pair}; "
          f"{len(domain)} domain samples, {len(in_domain)} in-domain and {len(held_out)} held-out evaluation samples")
    print(f"duplicates before: {len(drops)} of {len(before)} rows ({len(drops) / len(before):.1%}), "
          f"{dup_chars / chars:.1%} of the characters "
          f"({sum(d.kind == 'exact' for d in drops)} exact, {sum(d.kind == 'near' for d in drops)} near)")
    in_dups = len(deduplicate(in_domain)[1])
    print(f"in-domain evaluation set: {len(in_domain)} rows, {in_dups} duplicates before deduplication")
    mixture = assemble(domain, [], evaluation, settings, compare_lsh=True)
    again = deduplicate([{**r, "text": r["text"]} for r in mixture.rows])[1]
    print(f"duplicates after: {len(again)} in {len(mixture.rows)} mixture rows")
    index = EvalIndex(evaluation, settings.eval.minhash_threshold)
    exact = [index.match(r) for r in kept]
    kinds = {k: sum(1 for c in exact if c and c.kind == k) for k in ("exact", "near", "contained")}
    lsh = lsh_matches(kept, evaluation, settings.eval.minhash_threshold, settings.eval.minhash_permutations)
    print(f"contamination by the exact check: {sum(kinds.values())} rows {kinds}; plain MinHash LSH at 0.8 "
          f"flags {lsh}")
    # Independent recount, by brute force over every pair of rows (no LSH, no index).
    from itertools import combinations

    from spark_pipeline.corpus import checks
    from spark_pipeline.corpus.integrity import exact_key, jaccard, shingle_hashes
    from spark_pipeline.corpus.mixture import write_mixture
    from spark_pipeline.corpus.parquet import read_rows

    eos = settings.mixture.eos
    texts = [r["text"].removesuffix(eos) for r in mixture.rows]
    sh = [shingle_hashes(t) for t in texts]
    exact_dups = len(texts) - len({exact_key(t) for t in texts})
    near_pairs = sum(1 for i, j in combinations(range(len(sh)), 2) if jaccard(sh[i], sh[j]) >= 0.8)
    ev_sh = [shingle_hashes(r["text"]) for r in evaluation]
    leaks = sum(1 for a in sh for b in ev_sh
                if jaccard(a, b) >= 0.8 or (b and len(a & b) / len(b) >= 0.8))
    control = sum(1 for t in texts for c in t if (ord(c) < 32 and c not in "\t\n\r") or 0x7F <= ord(c) <= 0x9F)
    manifest = write_mixture(work / "mixture", mixture, settings, {}, "domain_only")
    written = [r for shard in manifest["shards"] for r in read_rows(work / "mixture" / shard["file"])]
    ok, wrong = checks.manifest_matches_rows(manifest, written, len(read_rows(work / "mixture" / "duplicates.parquet")),
                                             len(read_rows(work / "mixture" / "contamination.parquet")))
    print(f"brute-force recount of the mixture: {exact_dups} exact duplicates, {near_pairs} row pairs at Jaccard "
          f">= 0.8, {leaks} row/evaluation pairs at Jaccard or containment >= 0.8 "
          f"(contamination kept on purpose: {manifest['contamination']['kept_on_purpose']}), {control} control "
          f"characters; manifest counts {'equal the recount' if ok else 'DIFFER: ' + '; '.join(wrong)}")
    tokenizer_file = REFERENCE / "dolma2-tokenizer.json"
    tok = load_tokenizer(f"hf:{tokenizer_file}" if tokenizer_file.exists() else "dolma2-offline")
    lengths = [len(ids) for ids in tok.encode_documents([r["text"] for r in mixture.rows])]
    over = [n for n in lengths if n > 2048]
    print(f"samples over 2,048 tokens ({tok.name.split('/')[-1]}): {len(over)} of {len(lengths)} "
          f"({len(over) / len(lengths):.2%}); now split into rows, the old cut would have dropped "
          f"{sum(n - 2048 for n in over):,} tokens")
    data = b"".join(p.read_bytes() for p in mappings)
    joined = work / "all_mappings.txt"
    joined.write_bytes(data)
    mb = len(data) / 1e6
    f = statistics.median(floor(joined) for _ in range(runs))
    t = statistics.median(ours(joined, settings, 1)[0] for _ in range(runs))
    print(f"chunk+clean+filter on the pairs' {mb:.1f} MB of mapping files: {mb / t:.1f} MB/s on one core, "
          f"{t / f:.1f}x the floor's time (floor {mb / f:.0f} MB/s); medians of {runs}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, help="a folder of real C code (default: linux-source drivers/)")
    parser.add_argument("--pairs", type=Path, help="real-pairs mode: folder of the labelled pairs' checkouts")
    parser.add_argument("--mb", type=float, default=64.0, help="megabytes of code to process")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.pairs:
        return real_pairs(args.pairs.resolve(), args.runs)
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
