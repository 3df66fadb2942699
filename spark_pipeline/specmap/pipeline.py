"""SpecMap M1–M4 over one repository–datasheet pair (paper §3.2, stage 1).

M1 folder discovery   sections -> folders, the section text cut into word windows (adaptive
                      chunking) and each window scored against every folder
M2 file discovery     files inside the chosen folders, ranked
M3 symbol discovery   Universal Ctags symbols inside the chosen files, ranked
M4 validation         sequential over sections, so context carries: a section with no
                      direct evidence is looked for in the files of its parent and of the
                      section before it; the status is implemented / partial / not
                      implemented with the evidence

:func:`run_specmap` returns a :class:`SpecMapResult`; :mod:`.mapping_file` writes it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from spark_pipeline.records import Rejection
from spark_pipeline.specmap.ctags import Symbol, run_ctags
from spark_pipeline.specmap.datasheet import DatasheetError, Section, read_datasheet
from spark_pipeline.specmap.judge import Candidate, LexicalJudge, Verdict
from spark_pipeline.specmap.lexical import (
    BM25,
    NameIndex,
    chunk_words,
    component_runs,
    datasheet_names,
    split_identifier,
    tokenize,
)
from spark_pipeline.specmap.pairs import PairError, ResolvedPair, files_at_revision
from spark_pipeline.specmap.repo import RepoScan, ScanLimits, scan_repository

log = logging.getLogger(__name__)


@dataclass
class SpecMapConfig:
    chunk_words: int = 350
    """M1 adaptive chunking: section text longer than this many words is scored in windows."""
    max_folders: int = 4
    max_files: int = 5
    max_symbols: int = 8
    implemented_coverage: float = 0.5
    """M4: share of a section's names found in mapped code for 'implemented'."""
    max_excerpt_lines: int = 150
    """Mapping file: at most this many code lines per mapped file."""
    context_lines: int = 1
    device_bonus: float = 0.25
    """M1/M2: files whose path names the pair's device (``stm32f411xe.h`` for an STM32F411
    datasheet) score this much higher than their siblings for other parts."""
    scan: ScanLimits = field(default_factory=ScanLimits)


@dataclass
class MappedSymbol:
    symbol: Symbol
    score: float
    reason: str = ""


@dataclass
class MappedFile:
    path: str
    score: float
    reason: str
    symbols: list[MappedSymbol] = field(default_factory=list)


@dataclass
class MappedFolder:
    path: str
    score: float
    reason: str
    files: list[MappedFile] = field(default_factory=list)


@dataclass
class SectionMapping:
    section: Section
    names: list[str]
    folders: list[MappedFolder] = field(default_factory=list)
    verdict: Verdict = field(default_factory=lambda: Verdict("not_implemented"))
    via_context: str | None = None

    @property
    def files(self) -> list[MappedFile]:
        return [f for folder in self.folders for f in folder.files]


@dataclass
class SpecMapResult:
    pair_id: str
    revision: str
    judge: str
    sections: list[SectionMapping]
    scan: RepoScan
    symbols: dict[str, list[Symbol]]
    rejections: list[Rejection]
    usage: dict
    seconds: float

    def stats(self) -> dict:
        statuses = [m.verdict.status for m in self.sections]
        n = len(self.sections) or 1
        return {
            "sections": len(self.sections),
            "implemented": statuses.count("implemented"),
            "partial": statuses.count("partial"),
            "not_implemented": statuses.count("not_implemented"),
            "coverage": round(statuses.count("implemented") / n, 4),
            "mapped_folders": len({f.path for m in self.sections for f in m.folders}),
            "mapped_files": len({f.path for m in self.sections for f in m.files}),
            "mapped_symbols": len({(f.path, s.symbol.name) for m in self.sections for f in m.files
                                   for s in f.symbols}),
            "repo_files_scanned": len(self.scan.files),
            "repo_files_rejected": len(self.scan.rejections),
            "repo_files_non_utf8": len(self.scan.notes),
            "seconds": round(self.seconds, 3),
            "sections_per_second": round(len(self.sections) / self.seconds, 2) if self.seconds else None,
        }


def _normalise(scores: dict[str, float]) -> dict[str, float]:
    best = max(scores.values(), default=0.0)
    return {k: (v / best if best > 0 else 0.0) for k, v in scores.items()}


class _RepoIndex:
    """Everything M1–M3 look things up in, built once per repository."""

    def __init__(self, scan: RepoScan, symbols: dict[str, list[Symbol]], device_hints: set[str] = frozenset()):
        self.scan = scan
        self.device_files = {p for p in scan.files if any(h in p.lower() for h in device_hints)}
        self.symbols = symbols
        texts = {p: f.text for p, f in scan.files.items()}
        self.names = NameIndex(texts)
        file_docs = {p: tokenize(p.replace("/", " ")) * 3 + tokenize(t) for p, t in texts.items()}
        self.file_bm25 = BM25(file_docs)
        self.folders = scan.folders
        folder_docs = {folder: tokenize(folder.replace("/", " ")) * 3
                       + [t for p in paths for t in file_docs[p]] for folder, paths in self.folders.items()}
        self.folder_bm25 = BM25(folder_docs)
        self._symbol_index: dict[str, _SymbolIndex] = {}

    def symbol_index(self, path: str) -> _SymbolIndex:
        if path not in self._symbol_index:
            self._symbol_index[path] = _SymbolIndex(self.symbols.get(path, []))
        return self._symbol_index[path]


def _combine(bm25: dict[str, float], names: dict[str, float], keys) -> dict[str, tuple[float, float]]:
    """(relative score, raw score) per key: half BM25, half name evidence, each normalised."""
    nb, nn = _normalise(bm25), _normalise(names)
    out = {}
    for k in keys:
        raw = bm25.get(k, 0.0) + 2.0 * names.get(k, 0.0)
        rel = 0.5 * nb.get(k, 0.0) + 0.5 * nn.get(k, 0.0) if names else nb.get(k, 0.0)
        if raw > 0:
            out[k] = (rel, raw)
    return out


class _SymbolIndex:
    """One file's symbols, indexed by the runs of their name parts and by their subwords."""

    def __init__(self, symbols: list[Symbol]):
        self.symbols = [s for s in symbols if s.kind != "member"]
        self.by_run: dict[str, list[int]] = {}
        self.by_part: dict[str, list[int]] = {}
        for i, sym in enumerate(self.symbols):
            for run in component_runs(sym.name):
                self.by_run.setdefault(run, []).append(i)
            for part in set(split_identifier(sym.name)):
                self.by_part.setdefault(part, []).append(i)

    def score(self, names: set[str], terms: set[str]) -> list[tuple[Symbol, float, list[str]]]:
        """3 for a symbol named exactly as a datasheet name, 2 per name it contains as a run
        of parts (``MPU_PWR_MGMT_1`` contains ``PWR_MGMT_1``), 0.5 per subword shared with
        the section text."""
        scores: dict[int, float] = {}
        evidence: dict[int, list[str]] = {}
        for name in names:
            for i in self.by_run.get(name, ()):
                exact = self.symbols[i].name.upper() == name
                scores[i] = scores.get(i, 0.0) + (3.0 if exact else 2.0)
                evidence.setdefault(i, []).append(name)
        for term in terms:
            for i in self.by_part.get(term, ()):
                scores[i] = scores.get(i, 0.0) + 0.5
                evidence.setdefault(i, []).append(term)
        return [(self.symbols[i], sc, evidence[i]) for i, sc in sorted(scores.items())]


def run_specmap(resolved: ResolvedPair, judge=None, config: SpecMapConfig | None = None,
                progress: Callable[[int, int], None] | None = None) -> SpecMapResult:
    """Map every datasheet section of a pair to folders, files and symbols, and validate it."""
    config = config or SpecMapConfig()
    judge = judge or LexicalJudge()
    started = time.perf_counter()
    pair = resolved.pair
    rejections: list[Rejection] = []

    sections: list[Section] = []
    for sheet in pair.datasheets:
        try:
            sections.extend(read_datasheet(sheet.path))
        except DatasheetError as exc:
            rejections.append(Rejection("datasheet", str(sheet.path), "unreadable_datasheet", str(exc)))
    if not sections:
        raise PairError(f"pair {pair.id!r}: no datasheet could be read: "
                        + "; ".join(r.message for r in rejections))

    listed = files_at_revision(resolved) if resolved.is_git else None
    scan = scan_repository(resolved.repo_root, listed, config.scan, label=pair.id)
    rejections.extend(scan.rejections)
    if not scan.files:
        raise PairError(f"pair {pair.id!r}: repository {resolved.repo_root} has no usable source files "
                        f"({scan.other_files} other files, {len(scan.rejections)} rejected)")
    symbols = run_ctags(scan.root, sorted(scan.files))
    index = _RepoIndex(scan, symbols, device_hints(pair.datasheets))

    mappings: list[SectionMapping] = []
    context: list[str] = []
    by_id: dict[str, SectionMapping] = {}
    for i, section in enumerate(sections):
        mapping = _map_section(section, index, judge, config)
        _validate(mapping, index, judge, config, by_id, mappings[-1] if mappings else None, context)
        mappings.append(mapping)
        by_id[section.id] = mapping
        context.append(f"{section.id} {section.title[:60]}: {mapping.verdict.status}")
        if progress:
            progress(i + 1, len(sections))

    return SpecMapResult(pair.id, resolved.revision, judge.name, mappings, scan, symbols, rejections,
                         judge.usage.to_dict(), time.perf_counter() - started)


def device_hints(datasheets) -> set[str]:
    """Part numbers in the datasheets' file names (``stm32f411-datasheet.pdf`` -> ``stm32f411``):
    words of four or more characters that mix letters and digits."""
    hints = set()
    for sheet in datasheets:
        for word in re.split(r"[^a-z0-9]+", Path(sheet.path).stem.lower()):
            if len(word) >= 4 and re.search(r"[a-z]", word) and re.search(r"\d", word):
                hints.add(word)
    return hints


def _section_names(section: Section) -> list[str]:
    return section.names or datasheet_names(f"{section.title}\n{section.text}")


def _map_section(section: Section, index: _RepoIndex, judge, config: SpecMapConfig) -> SectionMapping:
    names = _section_names(section)
    query = f"{section.title}\n{section.text}"
    mapping = SectionMapping(section, names)
    if not section.text.strip() and not names:
        return mapping
    name_scores, name_hits = index.names.score_files(names)
    query_tokens = tokenize(query)
    terms = set(query_tokens)

    # Every window of the section (adaptive chunking) scores every file; a file keeps its best window.
    file_bm25: dict[str, float] = {}
    folder_bm25: dict[str, float] = {}
    for window in chunk_words(section.text or section.title, config.chunk_words):
        window_tokens = tokenize(f"{section.title} {window}")
        for path, score in index.file_bm25.scores(window_tokens).items():
            file_bm25[path] = max(file_bm25.get(path, 0.0), score)
        for folder, score in index.folder_bm25.scores(window_tokens).items():
            folder_bm25[folder] = max(folder_bm25.get(folder, 0.0), score)
    files = _combine(file_bm25, name_scores, index.scan.files)
    for path in index.device_files:
        if path in files:  # the pair's own device: its header wins over its siblings'
            rel, raw = files[path]
            files[path] = (rel * (1 + config.device_bonus), raw)

    # M1: a folder is as relevant as its best file, with its text as a whole as the tie-break.
    best_in_folder: dict[str, tuple[float, float]] = {}
    for path, (rel, raw) in files.items():
        folder = index.scan.files[path].folder
        if folder not in best_in_folder or rel > best_in_folder[folder][0]:
            best_in_folder[folder] = (rel, raw)
    folder_norm = _normalise(folder_bm25)
    top = max((r for r, _ in best_in_folder.values()), default=0.0) or 1.0
    candidates = [Candidate(k, (0.8 * rel / top + 0.2 * folder_norm.get(k, 0.0)), raw,
                            sorted({n for p in index.folders[k] for n in name_hits.get(p, [])})[:8],
                            preview=", ".join(sorted(p.rsplit("/", 1)[-1] for p in index.folders[k])[:8]))
                  for k, (rel, raw) in best_in_folder.items()]
    folders = judge.pick("folders", section.title, query, candidates, lambda k: k in index.folders,
                         config.max_folders)

    # M2: files inside the chosen folders, ranked against each other.
    for choice in folders:
        paths = index.folders[choice.key]
        local = {p: files[p] for p in paths if p in files}
        best = max((rel for rel, _ in local.values()), default=0.0) or 1.0
        candidates = [Candidate(p, rel / best, raw, name_hits.get(p, [])[:8],
                                preview=", ".join(s.name for s in index.symbols.get(p, [])[:10]))
                      for p, (rel, raw) in local.items()]
        picked = judge.pick("files", section.title, query, candidates,
                            lambda k, ps=set(paths): k in ps, config.max_files)
        folder = MappedFolder(choice.key, choice.score, choice.reason)
        # M3: symbols inside each chosen file.
        name_set = set(names)
        for fchoice in picked:
            scored = index.symbol_index(fchoice.key).score(name_set, terms)
            best = max((s for _, s, _ in scored), default=0.0)
            by_name = {}
            for sym, _score, _evidence in scored:
                by_name.setdefault(sym.name, sym)
            sym_candidates = [Candidate(sym.name, score / best if best else 0.0, score, evidence,
                                        preview=f"{sym.kind} line {sym.line}")
                              for sym, score, evidence in scored]
            sym_choices = judge.pick("symbols", section.title, query, sym_candidates,
                                     lambda k, b=by_name: k in b, config.max_symbols)
            mapped = MappedFile(fchoice.key, fchoice.score, fchoice.reason,
                                [MappedSymbol(by_name[c.key], c.score, c.reason) for c in sym_choices])
            folder.files.append(mapped)
        if folder.files:
            mapping.folders.append(folder)
    return mapping


def _found_names(mapping: SectionMapping, index: _RepoIndex) -> dict[str, str]:
    """Each section name found in a mapped file -> that file."""
    found = {}
    for f in mapping.files:
        for name in mapping.names:
            if name not in found and f.path in index.names.files_for(name):
                found[name] = f.path
    return found


def _lexical_verdict(mapping: SectionMapping, index: _RepoIndex, config: SpecMapConfig) -> Verdict:
    files = mapping.files
    n_symbols = sum(len(f.symbols) for f in files)
    if not mapping.section.text.strip() and not mapping.names:
        return Verdict("not_implemented", ["the section has no text"])
    if not files:
        return Verdict("not_implemented", ["no folder or file scored above the relevance floor"])
    found = _found_names(mapping, index)
    evidence = [f"{name} in {path}" for name, path in list(found.items())[:10]]
    evidence += [f"{s.symbol.name} ({s.symbol.kind}) {f.path}:{s.symbol.line}-{s.symbol.end}"
                 for f in files for s in f.symbols[:3]][:10]
    if mapping.names:
        coverage = len(found) / len(mapping.names)
        evidence.insert(0, f"{len(found)}/{len(mapping.names)} datasheet names found in mapped code")
        if coverage >= config.implemented_coverage and n_symbols:
            return Verdict("implemented", evidence)
        if found or n_symbols:
            return Verdict("partial", evidence)
        return Verdict("not_implemented", evidence or ["mapped files mention none of the section's names"])
    strong = [s for f in files for s in f.symbols if s.score >= 0.75]
    if n_symbols and strong:
        return Verdict("implemented", evidence)
    return Verdict("partial", evidence or ["files relevant by text, no symbol matched"])


def _validate(mapping: SectionMapping, index: _RepoIndex, judge, config: SpecMapConfig,
              by_id: dict[str, SectionMapping], previous: SectionMapping | None, context: list[str]) -> None:
    """M4. Sequential: a section with no evidence of its own borrows the files of its parent
    or of the section before it when those files mention the section's names."""
    if not mapping.files and mapping.names:
        for neighbour in (by_id.get(mapping.section.parent_id or ""), previous):
            if neighbour is None or not neighbour.files:
                continue
            hits = {n: [f for f in neighbour.files if f.path in index.names.files_for(n)] for n in mapping.names}
            if any(hits.values()):
                name_set = set(mapping.names)
                terms = set(tokenize(mapping.section.title))
                for folder in neighbour.folders:
                    kept = []
                    for f in folder.files:
                        if not any(f in v for v in hits.values()):
                            continue
                        scored = [t for t in index.symbol_index(f.path).score(name_set, terms) if t[1] >= 2.0]
                        scored.sort(key=lambda t: -t[1])
                        syms = [MappedSymbol(sym, 1.0, ", ".join(ev)) for sym, _, ev in scored[: config.max_symbols]]
                        kept.append(MappedFile(f.path, f.score, f"context of section {neighbour.section.id}", syms))
                    if kept:
                        mapping.folders.append(MappedFolder(folder.path, folder.score, folder.reason, kept))
                mapping.via_context = neighbour.section.id
                break
    lexical = _lexical_verdict(mapping, index, config)
    if mapping.via_context:
        lexical.evidence.insert(0, f"found through the context of section {mapping.via_context}")
    summary = {f.path: [s.symbol.name for s in f.symbols] for f in mapping.files}
    mapping.verdict = judge.validate(mapping.section.title, f"{mapping.section.title}\n{mapping.section.text}",
                                     summary, context, lexical)
