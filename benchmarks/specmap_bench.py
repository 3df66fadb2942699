"""SpecMap on real repository–datasheet pairs, against a hand-labelled set and a BM25 baseline.

    python benchmarks/specmap_bench.py --repos DIR [--labels benchmarks/specmap_labels.yaml] [--runs 3]

DIR holds checkouts of the public repositories the labels name, one folder per repository
named ``<owner>__<name>`` (for example ``NAKSEUNGCHOI__stm32f411RE-bare-metal``); they are
never part of this project. The datasheets are read from ../shared/reference/ beside the
checkout. Pairs whose repository or datasheet is absent are skipped and named.

Per pair and overall it prints, for SpecMap (the offline lexical judge) and for a same-run
baseline (plain BM25 over whole files: the top 5 files of the repository for the section's
title and text, their folders, and the 8 best symbols of those files by BM25 over symbol
names), micro-averaged precision / recall / F1 at three levels:

* folder: the folders of the mapped files against the folders of the gold files;
* file: the files that reach the corpus under the section (the mapping file's code: only
  sections found implemented or partial carry code) against the gold files;
* symbol: (file, symbol) pairs shown under the section against the gold ones.

It also prints each pair's seconds (cold: index built; warm: index from the cache), its
sections per second, the judge's tokens (zero for the offline judge), and how many files sit
under sections the labels call non-implementable (electrical, package, ...; it must be 0).
Timings are medians over ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark_pipeline.specmap.judge import WITH_CODE  # noqa: E402
from spark_pipeline.specmap.lexical import BM25, tokenize  # noqa: E402
from spark_pipeline.specmap.pairs import Datasheet, Pair, resolve_pair  # noqa: E402
from spark_pipeline.specmap.pipeline import run_specmap  # noqa: E402

REFERENCE = ROOT.parent / "shared" / "reference"
LEVELS = ("folder", "file", "symbol")


class Counts:
    def __init__(self):
        self.tp = defaultdict(int)
        self.pred = defaultdict(int)
        self.gold = defaultdict(int)

    def add(self, level: str, predicted: set, gold: set) -> None:
        self.tp[level] += len(predicted & gold)
        self.pred[level] += len(predicted)
        self.gold[level] += len(gold)

    def merge(self, other: Counts) -> None:
        for level in LEVELS:
            self.tp[level] += other.tp[level]
            self.pred[level] += other.pred[level]
            self.gold[level] += other.gold[level]

    def prf(self, level: str) -> tuple[float, float, float]:
        p = self.tp[level] / self.pred[level] if self.pred[level] else 0.0
        r = self.tp[level] / self.gold[level] if self.gold[level] else 0.0
        return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def _folder(path: str) -> str:
    return os.path.dirname(path) or "."


def _gold(section: dict) -> tuple[set, set, set]:
    files = section.get("files") or {}
    return ({_folder(p) for p in files}, set(files),
            {(p, s) for p, symbols in files.items() for s in (symbols or [])})


def _find(sections_by_id: dict, by_title: dict, key: str, label: dict):
    if key in sections_by_id:
        return sections_by_id[key]
    title = (label.get("title") or key).lower()
    return by_title.get(title)


def _baseline(index_files: dict, symbols: dict, section) -> tuple[set, set, set]:
    bm25 = _baseline.cache.get(id(index_files))
    if bm25 is None:
        bm25 = BM25({p: tokenize(f.text) for p, f in index_files.items()})
        _baseline.cache[id(index_files)] = bm25
    scores = bm25.scores(tokenize(f"{section.title}\n{section.text}"))
    files = sorted(scores, key=lambda p: (-scores[p], p))[:5]
    sym_docs = {(p, s.name): tokenize(s.name) for p in files for s in symbols.get(p, []) if s.kind != "member"}
    picked: set = set()
    if sym_docs:
        sym_scores = BM25(sym_docs).scores(tokenize(f"{section.title}\n{section.text}"))
        picked = set(sorted(sym_scores, key=lambda k: (-sym_scores[k], k))[:8])
    return {_folder(p) for p in files}, set(files), picked


_baseline.cache = {}


def run_pair(pair_label: dict, repos: Path, runs: int, cache_root: Path, verbose: bool = False,
             semantic=None) -> dict | None:
    repo = repos / pair_label["repository"].replace("/", "__")
    sheet = REFERENCE / pair_label["datasheet"]
    if not repo.is_dir() or not sheet.is_file():
        print(f"skipped {pair_label['id']}: {'no checkout at ' + str(repo) if not repo.is_dir() else 'no ' + str(sheet)}")
        return None
    kind = {".svd": "svd", ".pdf": "pdf", ".md": "markdown", ".txt": "text"}[sheet.suffix.lower()]
    pair = Pair(pair_label["id"], repo, None, None, (Datasheet(sheet, kind),), "", "", "",
                pair_label.get("domain_category", "general"))
    resolved = resolve_pair(pair, cache_root / "storage")
    cache = cache_root / "index" / pair_label["id"]
    cold, warm = [], []
    result = None
    for _ in range(runs):
        shutil.rmtree(cache, ignore_errors=True)
        t0 = time.perf_counter()
        result = run_specmap(resolved, cache_dir=cache, semantic=semantic)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = run_specmap(resolved, cache_dir=cache, semantic=semantic)
        warm.append(time.perf_counter() - t0)

    by_id = {m.section.id: m for m in result.sections}
    by_title = {m.section.title.lower(): m for m in result.sections}
    ours, base = Counts(), Counts()
    missing = []
    for key, label in (pair_label.get("sections") or {}).items():
        gold = _gold(label)
        mapping = _find(by_id, by_title, str(key), label)
        if mapping is None:
            missing.append(str(key))
            for level, g in zip(LEVELS, gold, strict=True):
                ours.add(level, set(), g)
                base.add(level, set(), g)
            continue
        carries = mapping.verdict.status in WITH_CODE
        files = [f for f in mapping.files] if carries else []
        predicted = ({_folder(f.path) for f in files}, {f.path for f in files},
                     {(f.path, s.symbol.name) for f in files for s in f.symbols})
        for level, p, g in zip(LEVELS, predicted, gold, strict=True):
            ours.add(level, p, g)
        if verbose:
            extra, lost = sorted(predicted[1] - gold[1]), sorted(gold[1] - predicted[1])
            print(f"  [{pair_label['id']}] {key} {mapping.verdict.status}: +{len(predicted[1] & gold[1])} "
                  f"extra {extra[:6]} missed {lost[:6]}")
        for level, p, g in zip(LEVELS, _baseline(result.scan.files, result.symbols, mapping.section), gold,
                               strict=True):
            base.add(level, p, g)
    non_impl = pair_label.get("non_implementable") or {}
    leaked = 0
    for key in non_impl:
        mapping = _find(by_id, by_title, str(key), {"title": str(key)})
        if mapping is not None and mapping.verdict.status in WITH_CODE:
            leaked += len(mapping.files)
            if verbose:
                print(f"  [{pair_label['id']}] non-implementable {key} ({non_impl[key]}) carries "
                      f"{len(mapping.files)} files as {mapping.verdict.status}")
    statuses = result.stats()
    return {"id": pair_label["id"], "labelled": len(pair_label.get("sections") or {}), "ours": ours, "base": base, "missing": missing, "cold": statistics.median(cold),
            "warm": statistics.median(warm), "sections": len(result.sections), "tokens": result.usage.get("tokens", 0),
            "leaked": leaked, "non_impl": len(non_impl), "files": len(result.scan.files),
            "stats": {k: statuses[k] for k in ("implemented", "partial", "not_implemented", "not_applicable")},
            "warnings": result.warnings}


def _row(name: str, counts: Counts) -> str:
    cells = []
    for level in LEVELS:
        p, r, f = counts.prf(level)
        cells.append(f"{p:4.2f} {r:4.2f} {f:4.2f}")
    return f"  {name:9} " + " | ".join(cells)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repos", type=Path, help="folder of checkouts named <owner>__<name>")
    parser.add_argument("--labels", type=Path, default=ROOT / "benchmarks" / "specmap_labels.yaml")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pair", action="append", help="only these pair ids")
    parser.add_argument("--verbose", action="store_true", help="per section: files found, extra and missed")
    parser.add_argument("--semantic", nargs="?", const="", default=None, metavar="MODEL_DIR",
                        help="add sentence-embedding relevance (the 'semantic' extra's model, or MODEL_DIR)")
    args = parser.parse_args()
    if not REFERENCE.is_dir():
        print(f"skipped: the reference datasheets are not at {REFERENCE}")
        return 0
    if args.repos is None or not args.repos.is_dir():
        print("skipped: pass --repos with a folder of checkouts (see the labels file for the repositories)")
        return 0
    labels = yaml.safe_load(args.labels.read_text())
    non_impl = labels.get("non_implementable") or {}
    semantic = None
    if args.semantic is not None:
        from spark_pipeline.specmap.semantic import SemanticScorer

        semantic = SemanticScorer(args.semantic or None)
    total_ours, total_base = Counts(), Counts()
    rows = []
    with tempfile.TemporaryDirectory(prefix="specmap-bench-") as tmp:
        for pair_label in labels["pairs"]:
            if args.pair and pair_label["id"] not in args.pair:
                continue
            pair_label = {**pair_label, "non_implementable": non_impl.get(pair_label["datasheet"], {})}
            row = run_pair(pair_label, args.repos.resolve(), args.runs, Path(tmp), args.verbose, semantic)
            if row is None:
                continue
            rows.append(row)
            total_ours.merge(row["ours"])
            total_base.merge(row["base"])
    if not rows:
        print("no pair could run")
        return 1
    print(f"\nSpecMap (offline lexical judge{' + semantic relevance' if semantic else ''}) vs BM25 over files; {args.runs} run(s), medians; "
          "precision recall F1 per level")
    print(f"  {'':9} {'folder':^14} | {'file':^14} | {'symbol':^14}")
    for row in rows:
        missing = f"; labelled sections not found: {', '.join(row['missing'])}" if row["missing"] else ""
        print(f"{row['id']}  ({row['files']} source files, {row['sections']} sections, "
              f"{row['labelled']} labelled{missing})")
        print(_row("SpecMap", row["ours"]))
        print(_row("BM25", row["base"]))
        print(f"  seconds: cold {row['cold']:.1f} (index built), warm {row['warm']:.1f} (index cached), "
              f"{row['sections'] / row['warm']:.1f} sections/s warm; judge tokens {row['tokens']}; "
              f"status {row['stats']}; files under non-implementable sections: {row['leaked']} "
              f"(of {row['non_impl']} labelled such)")
        for warning in row["warnings"]:
            print(f"  warning: {warning}")
    print("overall")
    print(_row("SpecMap", total_ours))
    print(_row("BM25", total_base))
    f_ours, f_base = total_ours.prf("file")[2], total_base.prf("file")[2]
    if f_base:
        print(f"file-level F1 ratio SpecMap / BM25 baseline: {f_ours / f_base:.2f}")
    print(f"files under non-implementable sections, all pairs: {sum(r['leaked'] for r in rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
