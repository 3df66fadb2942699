"""SpecMap on real repository–datasheet pairs it was never fitted on, against hand labels and
a BM25 baseline measured in the same run.

    python benchmarks/specmap_bench.py --repos DIR [--datasheets DIR] [--runs 3] [--fit]
        [--judge-provider openai --judge-model M --judge-url URL --judge-key-env VAR] [--report out.json]

DIR holds checkouts of the public repositories the labels name (``benchmarks/specmap_labels/``),
one folder per repository named ``<owner>__<name>`` at the labelled commit; they are never part
of this project. A datasheet is read from ``--datasheets`` (default: the folder
``$SPARK_REFERENCE_DIR``, when set) or from the checkout of the
repository its label names as its source; its sha256 must match the label. Pairs whose
repository or datasheet is missing are skipped and named.

**Leave one pair out is the headline.** The file model (:mod:`spark_pipeline.specmap.model`:
every weight and threshold of SpecMap's file decision) is fitted per pair on labelled pairs
that exclude it: a development pair on the other development pairs, a test pair on all the
development pairs and never on a test pair. The test pairs were chosen at random (seeded)
before any tuning. ``--fit`` writes the model fitted on all development pairs to
``spark_pipeline/specmap/file_model.json`` (the shipped one).

Printed per pair and pooled per split, for SpecMap and for the same-run baseline (plain BM25
over every source file of the repository: the top 5 files for the section's title and text,
their folders, and the 8 best symbols of those files by BM25 over symbol names), micro-averaged
precision / recall / F1 at three levels (folder, file, symbol), the mean per-pair file F1, the
files mapped under sections the labels call non-implementable, how the outline-less PDFs were
sectioned against their printed headings, the worst three pairs with what went wrong, cold and
warm seconds per pair (medians over ``--runs``), and the judge's tokens.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark_pipeline.specmap.ctags import run_ctags  # noqa: E402
from spark_pipeline.specmap.features import FEATURES  # noqa: E402
from spark_pipeline.specmap.judge import WITH_CODE  # noqa: E402
from spark_pipeline.specmap.lexical import BM25, tokenize  # noqa: E402
from spark_pipeline.specmap.model import Sample, fit  # noqa: E402
from spark_pipeline.specmap.model import load as load_model  # noqa: E402
from spark_pipeline.specmap.pairs import Datasheet, Pair, resolve_pair  # noqa: E402
from spark_pipeline.specmap.pipeline import run_specmap  # noqa: E402
from spark_pipeline.specmap.repo import ScanLimits, scan_repository  # noqa: E402

LABELS = ROOT / "benchmarks" / "specmap_labels"
REFERENCE = Path(os.environ.get("SPARK_REFERENCE_DIR", "/nonexistent"))
MODEL_PATH = ROOT / "spark_pipeline" / "specmap" / "file_model.json"
LEVELS = ("folder", "file", "symbol")
KINDS = {".svd": "svd", ".xml": "svd", ".pdf": "pdf", ".md": "markdown", ".txt": "text"}


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

    def to_dict(self) -> dict:
        return {level: dict(zip(("precision", "recall", "f1"), (round(x, 4) for x in self.prf(level)), strict=True))
                for level in LEVELS}


def norm_title(text: str) -> str:
    """Titles compared loosely: NFKC (``I²C`` -> ``I2C``), lowercase, dashes and quotes as
    spaces, no trailing punctuation, single spaces."""
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = re.sub(r"[\u2010-\u2015\-–—_/“”\"'’`]", " ", text)
    text = re.sub(r"[^\w().,:;+&%°]+", " ", text)
    return re.sub(r"\s+", " ", text).strip(" .:;,")


@dataclass
class PairRun:
    label: dict
    sheet: dict
    repo: Path
    datasheet: Path
    result: object = None
    cold: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    matched: dict = field(default_factory=dict)      # label key -> SectionMapping
    missing: list[str] = field(default_factory=list)  # labelled sections not found
    samples: list[Sample] = field(default_factory=list)


def training_pairs(pair_id: str, split: str, dev_ids: list[str]) -> list[str]:
    """The pairs a pair's model is fitted on: a dev pair's are the other dev pairs, a test
    pair's all the dev pairs; never a test pair, never the pair itself."""
    return [p for p in dev_ids if p != pair_id] if split == "dev" else list(dev_ids)


def _folder(path: str) -> str:
    return os.path.dirname(path) or "."


def _gold(section: dict) -> tuple[set, set, set]:
    files = section.get("files") or {}
    return ({_folder(p) for p in files}, set(files),
            {(p, s) for p, symbols in files.items() for s in (symbols or [])})


def find_section(result, key: str, label: dict):
    """The SpecMap section a label names: by id (numbered headings, SVD registers), else by
    title (the nearest page when two sections share a title)."""
    by_id = {m.section.id: m for m in result.sections}
    if str(key) in by_id:
        return by_id[str(key)]
    want = norm_title(label.get("title") or key)
    found = [m for m in result.sections if norm_title(m.section.title) == want]
    if not found:
        number = norm_title(key)
        found = [m for m in result.sections if norm_title(f"{m.section.id} {m.section.title}") == number]
    if not found:
        return None
    page = label.get("page")
    return min(found, key=lambda m: abs((m.section.page_start or 0) - page)) if page else found[0]


def locate_datasheet(sheet: dict, repos: Path, datasheets: Path | None) -> Path | None:
    name = sheet["file"]
    candidates = []
    if datasheets is not None:
        candidates.append(datasheets / name)
    source = sheet.get("source") or {}
    if source.get("repository"):
        candidates.append(repos / source["repository"].replace("/", "__") / source["path"])
    for path in candidates:
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sheet["sha256"]:
            return path
    return None


def run_pair(run: PairRun, runs: int, cache_root: Path, judge_factory, semantic, model, keep: bool = False) -> None:
    pair = Pair(run.label["id"], run.repo, None, None, (Datasheet(run.datasheet, KINDS[run.datasheet.suffix.lower()]),),
                "", "", "", run.label.get("domain_category", "general"))
    resolved = resolve_pair(pair, cache_root / "storage")
    cache = cache_root / "index" / run.label["id"]
    for _ in range(runs):
        if not keep:
            shutil.rmtree(cache, ignore_errors=True)
        t0 = time.perf_counter()
        run_specmap(resolved, judge_factory(), cache_dir=cache, semantic=semantic, model=model)
        run.cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run.result = run_specmap(resolved, judge_factory(), cache_dir=cache, semantic=semantic, model=model)
        run.warm.append(time.perf_counter() - t0)
    run.matched, run.missing, run.samples = {}, [], []
    for key, label in (run.label.get("sections") or {}).items():
        mapping = find_section(run.result, str(key), label)
        if mapping is None:
            run.missing.append(str(key))
            continue
        run.matched[str(key)] = mapping
        run.samples.append(Sample(run.label["id"], str(key), mapping.candidates, _gold(label)[1]))
    # Sections the labels call non-implementable that SpecMap still mapped are samples too:
    # no file implements them.
    for key in (run.sheet.get("non_implementable") or {}):
        mapping = find_section(run.result, str(key), {"title": str(key)})
        if mapping is not None and mapping.candidates and str(key) not in run.matched:
            run.samples.append(Sample(run.label["id"], f"n/a {key}", mapping.candidates, set()))


class Baseline:
    """Plain BM25 over every source file of the repository (tests, examples and build
    outputs included: it is the baseline, not SpecMap)."""

    def __init__(self, repo: Path):
        self.repo = repo
        scan = scan_repository(repo, None, ScanLimits(excluded_roles=()))
        self.files = scan.files
        self.bm25 = BM25({p: tokenize(p.replace("/", " ")) * 3 + tokenize(f.text) for p, f in scan.files.items()})
        self.symbols: dict[str, list] = {}

    def predict(self, section) -> tuple[set, set, set]:
        query = tokenize(f"{section.title}\n{section.text}")
        scores = self.bm25.scores(query)
        files = sorted(scores, key=lambda p: (-scores[p], p))[:5]
        missing = [p for p in files if p not in self.symbols]
        if missing:
            self.symbols.update(run_ctags(self.repo, missing))
            for p in missing:
                self.symbols.setdefault(p, [])
        docs = {(p, s.name): tokenize(s.name) for p in files for s in self.symbols.get(p, []) if s.kind != "member"}
        picked: set = set()
        if docs:
            sym_scores = BM25(docs).scores(query)
            picked = set(sorted(sym_scores, key=lambda k: (-sym_scores[k], k))[:8])
        return {_folder(p) for p in files}, set(files), picked


def score_pair(run: PairRun, baseline: Baseline | None) -> dict:
    ours, base = Counts(), Counts()
    per_section = []
    for key, label in (run.label.get("sections") or {}).items():
        gold = _gold(label)
        mapping = run.matched.get(str(key))
        if mapping is None:
            predicted = (set(), set(), set())
            for level, g in zip(LEVELS, gold, strict=True):
                ours.add(level, set(), g)
                base.add(level, set(), g)
            per_section.append({"key": str(key), "found": False, "gold": sorted(gold[1])})
            continue
        files = mapping.files if mapping.verdict.status in WITH_CODE else []
        predicted = ({_folder(f.path) for f in files}, {f.path for f in files},
                     {(f.path, s.symbol.name) for f in files for s in f.symbols})
        for level, p, g in zip(LEVELS, predicted, gold, strict=True):
            ours.add(level, p, g)
        if baseline is not None:
            for level, p, g in zip(LEVELS, baseline.predict(mapping.section), gold, strict=True):
                base.add(level, p, g)
        per_section.append({"key": str(key), "found": True, "status": mapping.verdict.status,
                            "extra": sorted(predicted[1] - gold[1]), "missed": sorted(gold[1] - predicted[1]),
                            "hit": len(predicted[1] & gold[1])})
    leaked, leaks, na_found, na_total = 0, [], 0, 0
    for key, kind in (run.sheet.get("non_implementable") or {}).items():
        mapping = find_section(run.result, str(key), {"title": str(key)})
        if mapping is None:
            continue
        na_total += 1
        if mapping.verdict.status == "not_applicable":
            na_found += 1
        if mapping.verdict.status in WITH_CODE and mapping.files:
            leaked += len(mapping.files)
            leaks.append(f"{key} ({kind}): {len(mapping.files)} file(s) as {mapping.verdict.status}")
    headings = None
    if run.sheet.get("headings"):
        # A printed heading matches a section by its title, or by its number and title (labels
        # of numbered headings give "4.12 Checksum Calculation", sections id 4.12 and the title).
        wanted = [norm_title(h["title"]) for h in run.sheet["headings"]]
        sections = [m.section for m in run.result.sections if m.section.id != "front"]
        ours_titles = [norm_title(s.title) for s in sections]
        ours_both = {norm_title(f"{s.id} {s.title}") for s in sections} | set(ours_titles)
        found = sum(1 for w in wanted if w in ours_both)
        correct = sum(1 for s in sections if norm_title(s.title) in set(wanted)
                      or norm_title(f"{s.id} {s.title}") in set(wanted))
        headings = {"labelled": len(wanted), "found": found, "sections": len(ours_titles), "correct": correct,
                    "recall": round(found / len(wanted), 3) if wanted else 0.0,
                    "precision": round(correct / len(ours_titles), 3) if ours_titles else 0.0}
    stats = run.result.stats()
    return {"id": run.label["id"], "split": run.label["split"], "ours": ours, "base": base,
            "labelled": len(run.label.get("sections") or {}), "missing": run.missing, "sections": per_section,
            "leaked": leaked, "leaks": leaks, "non_applicable_found": na_found, "non_implementable": na_total,
            "headings": headings, "cold": statistics.median(run.cold), "warm": statistics.median(run.warm),
            "files": len(run.result.scan.files), "n_sections": len(run.result.sections),
            "tokens": run.result.usage.get("tokens", 0),
            "stats": {k: stats[k] for k in ("implemented", "partial", "not_implemented", "not_applicable")}}


def _row(name: str, counts: Counts) -> str:
    return f"  {name:9} " + " | ".join("{:4.2f} {:4.2f} {:4.2f}".format(*counts.prf(level)) for level in LEVELS)


def why(row: dict) -> str:
    """What went wrong on a pair, from its sections: labelled sections not found, files mapped
    that are not gold, gold files missed."""
    lines = []
    if row["missing"]:
        lines.append(f"{len(row['missing'])} labelled section(s) not found in the sectioning "
                     f"({', '.join(row['missing'][:4])})")
    extra = defaultdict(int)
    missed = defaultdict(int)
    for s in row["sections"]:
        for p in s.get("extra", []):
            extra[p] += 1
        for p in s.get("missed", s.get("gold", []) if not s["found"] else []):
            missed[p] += 1
    if extra:
        top = sorted(extra.items(), key=lambda kv: -kv[1])[:3]
        lines.append("mapped but not gold: " + ", ".join(f"{p} ({n} sections)" for p, n in top))
    if missed:
        top = sorted(missed.items(), key=lambda kv: -kv[1])[:3]
        lines.append("gold but missed: " + ", ".join(f"{p} ({n} sections)" for p, n in top))
    if row["headings"] and row["headings"]["recall"] < 0.8:
        h = row["headings"]
        lines.append(f"headings found {h['found']}/{h['labelled']}, {h['correct']}/{h['sections']} of ours are real")
    return "; ".join(lines) or "no single cause"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repos", type=Path, help="folder of checkouts named <owner>__<name>")
    parser.add_argument("--datasheets", type=Path, default=REFERENCE if REFERENCE.is_dir() else None,
                        help="folder of datasheets by file name (default: the reference folder when present)")
    parser.add_argument("--labels", type=Path, action="append",
                        help=f"a folder of label files (repeatable; default {LABELS.relative_to(ROOT)})")
    parser.add_argument("--runs", type=int, default=1, help="cold and warm runs per pair (timings are medians)")
    parser.add_argument("--pair", action="append", help="only these pair ids (the folds still use every dev pair)")
    parser.add_argument("--split", default="all", help="dev, test, another split a label file names, or all")
    parser.add_argument("--fit", action="store_true", help=f"write the model fitted on all dev pairs to {MODEL_PATH}")
    parser.add_argument("--no-lopo", action="store_true", help="score every pair with the shipped model")
    parser.add_argument("--verbose", action="store_true", help="per section: status, files extra and missed")
    parser.add_argument("--report", type=Path, help="write the figures as JSON here")
    parser.add_argument("--work", type=Path, help="keep indexes and caches in this folder between runs (the cold "
                        "timings are then only cold on the first run)")
    parser.add_argument("--collect-only", action="store_true", help="with --samples: stop after writing them")
    parser.add_argument("--samples", type=Path, help="write every labelled section's candidates (evidence rows "
                        "and gold) here, as JSON lines, for studying the model")
    parser.add_argument("--semantic", nargs="?", const="", default=None, metavar="MODEL_DIR",
                        help="add sentence-embedding relevance (the 'semantic' extra's model, or MODEL_DIR)")
    parser.add_argument("--judge-provider", choices=("openai", "anthropic"), help="LLM judge instead of the offline one")
    parser.add_argument("--judge-model", default="")
    parser.add_argument("--judge-url", default="", help="API root, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--judge-key-env", default="", help="name of the environment variable holding the key")
    args = parser.parse_args()
    if args.repos is None or not args.repos.is_dir():
        print("skipped: pass --repos with a folder of checkouts (the labels in benchmarks/specmap_labels/ name "
              "each repository and commit)")
        return 0
    repos = args.repos.resolve()
    sheets, labels = {}, []
    for folder in args.labels or [LABELS]:
        for path in sorted((folder / "datasheets").glob("*.yaml")):
            sheet = yaml.safe_load(path.read_text())
            sheets[sheet["file"]] = sheet
        labels += [yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))]
    semantic = None
    if args.semantic is not None:
        from spark_pipeline.specmap.semantic import SemanticScorer

        semantic = SemanticScorer(args.semantic or None)

    with tempfile.TemporaryDirectory(prefix="specmap-bench-") as scratch:
        tmp = str(args.work) if args.work else scratch
        judge_cache = Path(tmp) / "judge"
        if args.judge_provider:
            from spark_pipeline.llm import LLMConfig
            from spark_pipeline.specmap.judge import LLMJudge

            config = LLMConfig(provider=args.judge_provider, model=args.judge_model, base_url=args.judge_url,
                               api_key_env=args.judge_key_env)
            shared = LLMJudge(config, judge_cache)

            def judge_factory():
                return shared
        else:
            def judge_factory():
                return None
        runs: list[PairRun] = []
        for label in labels:
            sheet = sheets.get(label["datasheet"])
            repo = repos / label["repository"].replace("/", "__")
            datasheet = locate_datasheet(sheet, repos, args.datasheets) if sheet else None
            if not repo.is_dir() or datasheet is None:
                print(f"skipped {label['id']}: " + (f"no checkout at {repo}" if not repo.is_dir() else
                      f"datasheet {label['datasheet']} with sha256 {sheet['sha256'][:12] if sheet else '?'} not found"))
                continue
            runs.append(PairRun(label, sheet, repo, datasheet))
        wanted = [r for r in runs if (not args.pair or r.label["id"] in args.pair)
                  and (args.split == "all" or r.label["split"] == args.split)]
        dev_runs = [r for r in runs if r.label["split"] == "dev"]
        needed = {id(r) for r in wanted} | ({id(r) for r in dev_runs} if not args.no_lopo or args.fit else set())
        try:
            shipped = load_model() if MODEL_PATH.is_file() else None
        except ValueError as exc:  # fitted on other features: collect with the bootstrap model
            print(f"note: {exc}")
            shipped = None
        # Pass 1: every needed pair once, to collect its candidates' evidence (the model does
        # not change the evidence), with the timings.
        for run in runs:
            if id(run) not in needed:
                continue
            print(f"mapping {run.label['id']} ...", flush=True)
            run_pair(run, max(args.runs, 1), Path(tmp), judge_factory, semantic, shipped or _bootstrap_model(),
                     keep=args.work is not None)
        dev_samples = {r.label["id"]: r.samples for r in dev_runs}
        if args.samples:
            with args.samples.open("w") as out:
                for run in runs:
                    for sample in run.samples:
                        out.write(json.dumps({"pair": sample.pair, "split": run.label["split"],
                                              "section": sample.section, "gold": sorted(sample.gold),
                                              "candidates": sample.candidates}) + "\n")
            if args.collect_only:
                print(f"wrote {args.samples}")
                return 0
        if args.fit:
            model = fit([s for samples in dev_samples.values() for s in samples], FEATURES)
            model.save(MODEL_PATH)
            print(f"wrote {MODEL_PATH}: {model.note}; threshold {model.threshold}, relative {model.relative}, "
                  f"max files {model.max_files}")
            shipped = model
        # Pass 2: each pair mapped with a model that never saw it.
        rows = []
        for run in wanted:
            if args.no_lopo:
                model = shipped
                fold = "shipped model"
            else:
                pairs = training_pairs(run.label["id"], run.label["split"], sorted(dev_samples))
                model = fit([s for pid in pairs for s in dev_samples[pid]], FEATURES)
                fold = f"fitted on {len(pairs)} dev pairs" + (" (not this one)" if run.label["split"] == "dev" else "")
            pair = Pair(run.label["id"], run.repo, None, None,
                        (Datasheet(run.datasheet, KINDS[run.datasheet.suffix.lower()]),), "", "", "",
                        run.label.get("domain_category", "general"))
            resolved = resolve_pair(pair, Path(tmp) / "storage")
            run.result = run_specmap(resolved, judge_factory(), cache_dir=Path(tmp) / "index" / run.label["id"],
                                     semantic=semantic, model=model)
            run.matched = {k: m for k in run.matched for m in [find_section(run.result, k, run.label["sections"][k])]
                           if m is not None}
            row = score_pair(run, Baseline(run.repo))
            row["fold"] = fold
            rows.append(row)
            if args.verbose:
                for s in row["sections"]:
                    print(f"  [{row['id']}] {s['key']}: " + (f"{s['status']} +{s['hit']} extra {s['extra'][:4]} "
                          f"missed {s['missed'][:4]}" if s["found"] else "NOT FOUND"))
                for leak in row["leaks"]:
                    print(f"  [{row['id']}] non-implementable carries code: {leak}")
    if not rows:
        print("no pair could run")
        return 1
    return report(rows, args)


def _bootstrap_model():
    """Before any model was fitted (the evidence is the same whatever the model, so any model
    collects it): keep files that hold a third of the section's name weight."""
    from spark_pipeline.specmap.model import FileModel

    weights = tuple(10.0 if f == "name_cov" else 0.0 for f in FEATURES)
    return FileModel(FEATURES, weights, -3.3, tuple(0.0 for _ in FEATURES), tuple(1.0 for _ in FEATURES),
                     note="bootstrap")


def report(rows: list[dict], args) -> int:
    print(f"\nSpecMap ({'LLM judge ' + args.judge_model if args.judge_provider else 'offline judge'}"
          f"{' + semantic relevance' if args.semantic is not None else ''}) vs BM25 over files; "
          f"{'shipped model' if args.no_lopo else 'leave one pair out'}; precision recall F1 per level")
    print(f"  {'':9} {'folder':^14} | {'file':^14} | {'symbol':^14}")
    out = {"pairs": [], "splits": {}}
    for row in rows:
        missing = f"; labelled sections not found: {', '.join(row['missing'][:6])}" if row["missing"] else ""
        print(f"{row['id']} [{row['split']}, {row['fold']}] ({row['files']} source files, {row['n_sections']} "
              f"sections, {row['labelled']} labelled{missing})")
        print(_row("SpecMap", row["ours"]))
        print(_row("BM25", row["base"]))
        heading = ""
        if row["headings"]:
            h = row["headings"]
            heading = f"; headings: {h['found']}/{h['labelled']} printed headings found, {h['correct']}/{h['sections']} sections real"
        print(f"  seconds: cold {row['cold']:.1f}, warm {row['warm']:.1f}; judge tokens {row['tokens']}; "
              f"status {row['stats']}; non-implementable: {row['non_applicable_found']}/{row['non_implementable']} "
              f"recognised, {row['leaked']} files under them{heading}")
        out["pairs"].append({k: (v.to_dict() if isinstance(v, Counts) else v) for k, v in row.items()
                             if k != "sections"})
    for split in sorted({r["split"] for r in rows}, key=lambda x: (x != "dev", x != "test", x)):
        chosen = [r for r in rows if r["split"] == split]
        if not chosen:
            continue
        ours, base = Counts(), Counts()
        for r in chosen:
            ours.merge(r["ours"])
            base.merge(r["base"])
        f_ours, f_base = ours.prf("file")[2], base.prf("file")[2]
        mean_ours = statistics.mean(r["ours"].prf("file")[2] for r in chosen)
        mean_base = statistics.mean(r["base"].prf("file")[2] for r in chosen)
        leaked = sum(r["leaked"] for r in chosen)
        print(f"\n{split} set ({len(chosen)} pairs, pooled)")
        print(_row("SpecMap", ours))
        print(_row("BM25", base))
        print(f"  file F1 {f_ours:.3f} vs BM25 {f_base:.3f}: ratio {f_ours / f_base if f_base else float('inf'):.2f}; "
              f"mean per-pair file F1 {mean_ours:.3f} vs {mean_base:.3f}; files under non-implementable sections: {leaked}")
        worst = sorted(chosen, key=lambda r: r["ours"].prf("file")[2])[:3]
        print("  worst pairs:")
        for r in worst:
            print(f"    {r['id']} (file F1 {r['ours'].prf('file')[2]:.2f}, BM25 {r['base'].prf('file')[2]:.2f}): {why(r)}")
        out["splits"][split] = {"pairs": len(chosen), "ours": ours.to_dict(), "bm25": base.to_dict(),
                                "file_f1_ratio": round(f_ours / f_base, 3) if f_base else None,
                                "mean_pair_file_f1": round(mean_ours, 4), "mean_pair_file_f1_bm25": round(mean_base, 4),
                                "leaked_files": leaked,
                                "worst": [{"id": r["id"], "why": why(r)} for r in worst]}
    largest = max(rows, key=lambda r: r["files"])
    print(f"\nlargest repository: {largest['id']} ({largest['files']} source files): cold {largest['cold']:.1f} s, "
          f"warm {largest['warm']:.1f} s")
    if args.report:
        args.report.write_text(json.dumps(out, indent=1))
        print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
