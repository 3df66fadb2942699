"""SpecMap M1–M4 over one repository–datasheet pair (paper §3.2, stage 1).

M1 folder discovery   sections -> folders, the section text cut into word windows (adaptive
                      chunking) and each window scored against every folder
M2 file discovery     files inside the chosen folders, ranked against the best file anywhere
M3 symbol discovery   Universal Ctags symbols inside the chosen files: definitions that carry
                      the section's names and functions whose bodies use them
M4 validation         sequential over sections, so context carries: a section with no
                      direct evidence is looked for in the files of its parent and of the
                      section before it; the status is implemented / partial / not
                      implemented with the evidence, or not_applicable for sections no
                      program implements (electrical, package, ordering, history)

Evidence is weighted by :mod:`.names` (specific register names over generic words, never
the part number), files that use a name rank above files that only define it, and files
for another part of the family rank below the datasheet's own (:mod:`.devices`). The
repository index is built once per revision and cached (:mod:`.index`).

:func:`run_specmap` returns a :class:`SpecMapResult`; :mod:`.mapping_file` writes it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from spark_pipeline.records import Rejection, sha256_file
from spark_pipeline.specmap import cache
from spark_pipeline.specmap.ctags import Symbol
from spark_pipeline.specmap.datasheet import DatasheetError, Section, read_datasheet, sectioning_warnings
from spark_pipeline.specmap.devices import DeviceHints, device_hints
from spark_pipeline.specmap.index import RepoIndex, load_or_build
from spark_pipeline.specmap.judge import Candidate, LexicalJudge, Verdict
from spark_pipeline.specmap.kinds import section_kinds
from spark_pipeline.specmap.lexical import chunk_words, tokenize
from spark_pipeline.specmap.names import NameWeights, is_strong, primary_groups, section_names
from spark_pipeline.specmap.pairs import PairError, ResolvedPair, files_at_revision
from spark_pipeline.specmap.repo import RepoScan, ScanLimits, accepted_types

log = logging.getLogger(__name__)


@dataclass
class SpecMapConfig:
    chunk_words: int = 350
    """M1 adaptive chunking: section text longer than this many words is scored in windows."""
    max_folders: int = 4
    max_files: int = 5
    max_symbols: int = 8
    implemented_coverage: float = 0.5
    """M4: weighted share of a section's specific names (registers, fields, instances) found
    in mapped code for 'implemented' (with at least one mapped symbol carrying one)."""
    max_excerpt_lines: int = 150
    """Mapping file: at most this many code lines per mapped file."""
    context_lines: int = 1
    device_bonus: float = 0.25
    """M1/M2: files whose name carries the datasheet's own part number (``stm32f411xe.h`` for an
    STM32F411 datasheet) score this much higher."""
    sibling_factor: float = 0.35
    """M1/M2: files whose name carries another part of the same family (``stm32f401xc.h``) or
    another core (``core_cm7.h`` for a Cortex-M4) keep this share of their score."""
    define_share: float = 0.5
    """A file that only defines a name (``#define``, struct field) counts this share of one
    that uses it in code."""
    own_name_floor: float = 0.6
    """M1/M2: a file holding one of the section's own specific names (the register under its
    heading) scores at least this share of the best file, however many fields the best holds."""
    generic_factor: float = 0.3
    """M1/M2: where a section has specific names in the repository, a file that holds none of
    them (only plain words and text) keeps this share of its score."""
    max_callers: int = 6
    """M2 on demand: at most this many files that call a section's dedicated functions join it."""
    dedicated_registers: int = 2
    """A function is dedicated to a section's registers when its body uses at most this many
    of the document's register names (an init that programs twenty is not)."""
    path_factor: float = 2.0
    """M1/M2: a file named after the peripheral a section is about (``i2c.c``, ``hal_gpio.c`` for
    a section whose own name is I2C or GPIO) scores this many times more."""
    semantic_weight: float = 0.2
    """M1/M2 with semantic relevance switched on (:mod:`.semantic`): a file gains this much
    times its embedding similarity to the section, relative to the best file's."""
    text_weight: float = 0.3
    """Share of BM25 text relevance in a file's score when the section has names (the rest is
    name evidence); sections without names rank by text alone."""
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
    kind: str | None = None
    """A non-implementable kind (electrical, package, ordering, history, front) or None."""
    weights: dict[str, float] = field(default_factory=dict)
    """The names that carry weight against this repository, heaviest first (:mod:`.names`)."""
    primary: list[list[str]] = field(default_factory=list)
    """What the section is about, as groups of alternative names (:func:`.names.primary_groups`)."""
    document: frozenset[str] = frozenset()
    """Every name of the datasheet (to tell ``MPU6050_RA_CONFIG`` from ``GYRO_CONFIG``)."""

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
    warnings: list[str] = field(default_factory=list)
    """Signs of a wrongly sectioned datasheet (:func:`~.sections.sectioning_warnings`)."""
    index_seconds: float = 0.0
    index_cached: bool = False

    def stats(self) -> dict:
        statuses = [m.verdict.status for m in self.sections]
        applicable = len(self.sections) - statuses.count("not_applicable")
        return {
            "sections": len(self.sections),
            "implemented": statuses.count("implemented"),
            "partial": statuses.count("partial"),
            "not_implemented": statuses.count("not_implemented"),
            "not_applicable": statuses.count("not_applicable"),
            "coverage": round(statuses.count("implemented") / applicable, 4) if applicable else 0.0,
            "mapped_folders": len({f.path for m in self.sections for f in m.folders}),
            "mapped_files": len({f.path for m in self.sections for f in m.files}),
            "mapped_symbols": len({(f.path, s.symbol.name) for m in self.sections for f in m.files
                                   for s in f.symbols}),
            "repo_files_scanned": len(self.scan.files),
            "repo_files_rejected": len(self.scan.rejections),
            "repo_files_non_utf8": len(self.scan.notes),
            "index_seconds": round(self.index_seconds, 3),
            "index_cached": self.index_cached,
            "seconds": round(self.seconds, 3),
            "sections_per_second": round(len(self.sections) / self.seconds, 2) if self.seconds else None,
        }


def _normalise(scores: dict[str, float]) -> dict[str, float]:
    best = max(scores.values(), default=0.0)
    return {k: (v / best if best > 0 else 0.0) for k, v in scores.items()}


#: Bumped when the datasheet readers change what they produce (invalidates cached sections).
READER_VERSION = 2


def read_sections(datasheets, cache_dir: Path | None = None) -> tuple[list[Section], list[Rejection], list[str]]:
    """Every readable datasheet's sections, the unreadable ones as rejections, and the
    sectioning warnings. Parsed sections are cached by the datasheet's content (a 150-page
    PDF takes seconds to read)."""
    sections: list[Section] = []
    rejections: list[Rejection] = []
    warnings: list[str] = []
    for sheet in datasheets:
        path = None
        if cache_dir is not None and Path(sheet.path).is_file():
            path = Path(cache_dir) / f"{sha256_file(sheet.path)[:32]}-{READER_VERSION}-{Path(sheet.path).name}.sections"
        found = cache.load(path, list)
        if found is None:
            try:
                found = read_datasheet(sheet.path)
            except DatasheetError as exc:
                rejections.append(Rejection("datasheet", str(sheet.path), "unreadable_datasheet", str(exc)))
                continue
            cache.store(found, path, 64)
        warnings.extend(sectioning_warnings(found))
        sections.extend(found)
    return sections, rejections, warnings


def run_specmap(resolved: ResolvedPair, judge=None, config: SpecMapConfig | None = None,
                progress: Callable[[int, int], None] | None = None,
                cache_dir: Path | None = None, semantic=None) -> SpecMapResult:
    """Map every datasheet section of a pair to folders, files and symbols, and validate it.
    ``cache_dir`` holds repository indexes and parsed datasheets across pairs and runs (none:
    built each time). ``semantic``: a :class:`~.semantic.SemanticScorer` to add embedding
    relevance to M1/M2 (none: lexical only)."""
    config = config or SpecMapConfig()
    judge = judge or LexicalJudge()
    started = time.perf_counter()
    pair = resolved.pair
    sections, rejections, warnings = read_sections(pair.datasheets, cache_dir)
    if not sections:
        raise PairError(f"pair {pair.id!r}: no datasheet could be read: "
                        + "; ".join(r.message for r in rejections))

    listed = files_at_revision(resolved) if resolved.is_git else None
    index = load_or_build(resolved.repo_root, resolved.revision, listed, config.scan, pair.id, cache_dir)
    scan = index.scan
    rejections.extend(scan.rejections)
    if not scan.files:
        others = ", ".join(f"{n} {ext}" for ext, n in sorted(scan.other_types.items(), key=lambda kv: -kv[1])[:6])
        raise PairError(f"pair {pair.id!r}: repository {resolved.repo_root} has no usable source files "
                        f"({scan.other_files} other files{': ' + others if others else ''}; "
                        f"{len(scan.rejections)} rejected). Source files are read in: {accepted_types()}")

    hints = device_hints([s.path for s in pair.datasheets], _first_pages(sections))
    names = {s.id: section_names(s) for s in sections}
    kinds = section_kinds(sections)
    weights = NameWeights.for_document(sections, names, index.names, hints.parts, set(kinds))
    document = frozenset(weights.section_df)

    mappings: list[SectionMapping] = []
    context: list[str] = []
    by_id: dict[str, SectionMapping] = {}
    similar = None
    if semantic is not None:
        vectors_at = (Path(cache_dir) / f"{index.key}.{semantic.name}.semantic") if cache_dir and index.key else None

        def similar(section: Section) -> dict[str, float]:
            return semantic.similarities(f"{section.title}\n{section.text[:1500]}", index, vectors_at)

    primaries = {s.id: weights.primary(primary_groups(s, names[s.id])) for s in sections if s.id not in kinds}
    registers = frozenset(n for groups in primaries.values() for g in groups for n in g if is_strong(n))
    for i, section in enumerate(sections):
        primary = primaries.get(section.id, [])
        mapping = SectionMapping(section, names[section.id], kind=kinds.get(section.id),
                                 weights=weights.weights(names[section.id], section.id, primary),
                                 primary=primary, document=document)
        if mapping.kind:
            mapping.verdict = Verdict("not_applicable", [f"a {mapping.kind} section: nothing a program implements"])
        else:
            _map_section(mapping, index, hints, judge, config, similar)
            _follow_callers(mapping, index, hints, config, registers)
            _validate(mapping, index, judge, config, by_id, mappings[-1] if mappings else None, context)
        mappings.append(mapping)
        by_id[section.id] = mapping
        context.append(f"{section.id} {section.title[:60]}: {mapping.verdict.status}")
        if progress:
            progress(i + 1, len(sections))

    return SpecMapResult(pair.id, resolved.revision, judge.name, mappings, scan, index.symbols, rejections,
                         judge.usage.to_dict(), time.perf_counter() - started, warnings,
                         index.seconds, index.from_cache)


def _first_pages(sections: list[Section]) -> list[str]:
    """The opening text of each datasheet (title page, front matter), for part numbers."""
    firsts: dict[str, str] = {}
    for section in sections:
        if len(firsts.get(section.source, "")) < 3000:
            firsts[section.source] = firsts.get(section.source, "") + f"\n{section.title}\n{section.text[:3000]}"
    return list(firsts.values())


def _score_files(mapping: SectionMapping, index: RepoIndex, hints: DeviceHints, config: SpecMapConfig,
                 similar: Callable[[Section], dict[str, float]] | None = None
                 ) -> tuple[dict[str, tuple[float, float]], dict[str, list[str]], dict[str, float]]:
    """Every file's (relative score, raw score), the names each file holds, and each folder's
    text relevance."""
    section = mapping.section
    name_scores, name_hits = index.names.score_files(mapping.weights, config.define_share)
    file_bm25: dict[str, float] = {}
    folder_bm25: dict[str, float] = {}
    for window in chunk_words(section.text or section.title, config.chunk_words):
        window_tokens = tokenize(f"{section.title} {window}")
        for path, score in index.file_bm25.scores(window_tokens).items():
            file_bm25[path] = max(file_bm25.get(path, 0.0), score)
        for folder, score in index.folder_bm25.scores(window_tokens).items():
            folder_bm25[folder] = max(folder_bm25.get(folder, 0.0), score)
    nn, nb = _normalise(name_scores), _normalise(file_bm25)
    text_share = config.text_weight if name_scores else 1.0
    own = {n for g in mapping.primary for n in g if is_strong(n) and n in mapping.weights}
    acronyms = {re.sub(r"\d+$", "", n).lower() for g in mapping.primary for n in g
                if "_" not in n and 3 <= len(n) <= 8} - {""}
    specific = any(is_strong(n) for n in mapping.weights)
    files: dict[str, tuple[float, float]] = {}
    for path in set(name_scores) | set(file_bm25):
        rel = (1 - text_share) * nn.get(path, 0.0) + text_share * nb.get(path, 0.0)
        held = name_hits.get(path, ())
        if acronyms and acronyms & _name_tokens(path):
            rel *= config.path_factor  # i2c.c for an I2C section, stm32f4xx_hal_gpio.c for GPIOs
        if own & set(held):
            rel = max(rel, config.own_name_floor)  # it holds the register the section is about
        elif specific and not any(is_strong(n) for n in held):
            rel *= config.generic_factor  # only words and text, where the section has real names
        if hints.is_device_file(path):
            rel *= 1 + config.device_bonus
        elif hints.is_sibling(path):
            rel *= config.sibling_factor
        raw = 2.0 * name_scores.get(path, 0.0) + file_bm25.get(path, 0.0)
        if rel > 0 and raw > 0:
            files[path] = (rel, raw)
    if similar is not None and config.semantic_weight > 0:
        sims = similar(section)
        top = max(sims.values(), default=0.0)
        for path, sim in sims.items():
            share = max(sim, 0.0) / top if top > 0 else 0.0
            if path in files or share >= 0.9:  # a close match in meaning joins even without words in common
                rel, raw = files.get(path, (0.0, 0.0))
                files[path] = (rel + config.semantic_weight * share, raw + share)
    best = max((rel for rel, _ in files.values()), default=0.0) or 1.0
    return {p: (rel / best, raw) for p, (rel, raw) in files.items()}, name_hits, folder_bm25


def _name_tokens(path: str) -> set[str]:
    """The words of a file's name: ``stm32f4xx_hal_gpio.c`` -> stm32f4xx, hal, gpio."""
    stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return {t.lower() for t in re.split(r"[_\-.]+", stem) if t}


def _map_section(mapping: SectionMapping, index: RepoIndex, hints: DeviceHints, judge,
                 config: SpecMapConfig, similar: Callable[[Section], dict[str, float]] | None = None) -> None:
    section = mapping.section
    if not section.text.strip() and not mapping.names:
        return
    query = f"{section.title}\n{section.text}"
    files, name_hits, folder_bm25 = _score_files(mapping, index, hints, config, similar)

    # M1: a folder is as relevant as its best file, with its text as a whole as the tie-break.
    best_in_folder: dict[str, tuple[float, float]] = {}
    for path, (rel, raw) in files.items():
        folder = index.scan.files[path].folder
        if folder not in best_in_folder or rel > best_in_folder[folder][0]:
            best_in_folder[folder] = (rel, raw)
    folder_norm = _normalise(folder_bm25)
    candidates = [Candidate(k, 0.85 * rel + 0.15 * folder_norm.get(k, 0.0), raw,
                            sorted({n for p in index.folders[k] for n in name_hits.get(p, [])})[:8],
                            preview=", ".join(sorted(p.rsplit("/", 1)[-1] for p in index.folders[k])[:8]))
                  for k, (rel, raw) in best_in_folder.items()]
    ranked = judge.pick("folders", section.title, query, candidates, lambda k: k in index.folders,
                        len(candidates))
    folders = _distinct(ranked, best_in_folder, files, index, config.max_folders)

    # M2: files inside the chosen folders, each against the best file anywhere.
    terms = set(tokenize(query))
    picked_files: list[tuple[str, object]] = []
    for choice in folders:
        paths = index.folders[choice.key]
        candidates = [Candidate(p, files[p][0], files[p][1], name_hits.get(p, [])[:8],
                                preview=", ".join(s.name for s in index.symbols.get(p, [])[:10]))
                      for p in paths if p in files]
        picked = judge.pick("files", section.title, query, candidates,
                            lambda k, ps=set(paths): k in ps, config.max_files)
        folder = MappedFolder(choice.key, choice.score, choice.reason)
        mapping.folders.append(folder)
        for fchoice in picked:
            folder.files.append(MappedFile(fchoice.key, fchoice.score, fchoice.reason))
            picked_files.append((fchoice.key, folder))
    mapping.folders = [f for f in mapping.folders if f.files]

    # M3: symbols inside each chosen file, unless M4 cannot find the section in them anyway:
    # its own names are registers and no chosen file holds one (symbols are scored lazily).
    strong_groups = [g for g in mapping.primary if all(is_strong(n) for n in g)]
    if strong_groups and len(strong_groups) == len(mapping.primary) and not any(
            f.path in index.names.files_for(n) for f in mapping.files for g in strong_groups for n in g):
        return
    defined = {f.path: {s.name for s in index.symbols.get(f.path, []) if s.kind == "function"} for f in mapping.files}
    functions_anywhere = set().union(*defined.values()) if defined else set()
    for mapped in mapping.files:
        scored = _score_symbols(mapped.path, mapping.weights, terms, index, functions_anywhere, mapping.document,
                                frozenset(n for g in mapping.primary for n in g if "_" not in n))
        best = max((score for _, score, _ in scored), default=0.0)
        by_name = {sym.name: sym for sym, _, _ in scored}
        sym_candidates = [Candidate(sym.name, score / best if best else 0.0, score, evidence,
                                    preview=f"{sym.kind} line {sym.line}") for sym, score, evidence in scored]
        sym_choices = judge.pick("symbols", section.title, query, sym_candidates,
                                 lambda k, b=by_name: k in b, config.max_symbols)
        mapped.symbols = [MappedSymbol(by_name[c.key], c.score, c.reason) for c in sym_choices]


def _tail_match(symbol: str, name: str, document: frozenset[str]) -> bool:
    """``MPU6050_RA_CONFIG`` carries ``CONFIG`` (a driver prefix, then the name); ``GYRO_CONFIG``
    does not (its prefix is another datasheet name)."""
    if not symbol.endswith("_" + name):
        return False
    prefix = symbol[: -len(name) - 1].split("_")
    return not any(part in document for part in prefix)


_DISTINCTIVE = re.compile(r"_|[a-z][A-Z]")


def _follow_callers(mapping: SectionMapping, index: RepoIndex, hints: DeviceHints, config: SpecMapConfig,
                    registers: frozenset[str]) -> None:
    """M2, on demand: the functions a section mapped that are dedicated to its registers (they
    use one of the section's own names and at most ``dedicated_registers`` of all the
    document's register names: ``setClockSource``, not an init that programs twenty) lead to
    the files that call or declare them: the driver's API header, the examples and tests
    that exercise that register. Up to ``max_callers`` such files join the section, each
    with the functions (or prototypes) that name the dedicated function."""
    own = {n for g in mapping.primary for n in g if "_" in n}  # registers, not a bus (I2C1_init is generic)
    if not own or not mapping.files or config.max_callers <= 0:
        return
    dedicated: set[str] = set()
    for mapped in mapping.files:
        if not any(c.symbol.kind == "function" for c in mapped.symbols):
            continue
        sindex = index.symbol_index(mapped.path)
        position = {id(sym): i for i, sym in enumerate(sindex.symbols)}
        for chosen in mapped.symbols:
            sym = chosen.symbol
            runs = sindex.uses.get(position.get(id(sym), -1), frozenset())
            if (sym.kind == "function" and runs & own and len(runs & registers) <= config.dedicated_registers
                    and len(sym.name) >= 6 and _DISTINCTIVE.search(sym.name)):
                dedicated.add(sym.name)
    mapped_paths = {f.path for f in mapping.files}
    callers: dict[str, list[str]] = {}
    for name in sorted(dedicated):
        for path in index.references.get(name, ()):
            if path in mapped_paths or path not in index.scan.files or hints.is_sibling(path):
                continue
            if any(s.name == name and s.kind == "function" for s in index.symbols.get(path, [])):
                continue  # another implementation of the function (a sibling core's header), not a caller
            callers.setdefault(path, []).append(name)
    ranked = sorted(callers.items(), key=lambda kv: (-len(kv[1]), kv[0]))[: config.max_callers]
    for path, names in ranked:
        lines = index.scan.files[path].text.split("\n")
        pattern = re.compile(r"\b(?:" + "|".join(re.escape(n) for n in names) + r")\b")
        hits = [n for n, line in enumerate(lines, start=1) if pattern.search(line)]
        symbols, seen = [], set()
        for sym in index.symbols.get(path, []):
            if sym.kind not in ("function", "prototype") or sym.name in seen:
                continue
            if any(sym.line <= h <= max(sym.end, sym.line) for h in hits):
                seen.add(sym.name)
                symbols.append(MappedSymbol(sym, 0.5, "names " + ", ".join(names[:4])))
        mapped = MappedFile(path, 0.5, "calls or declares " + ", ".join(names[:4]), symbols[: config.max_symbols])
        folder_path = index.scan.files[path].folder
        folder = next((f for f in mapping.folders if f.path == folder_path), None)
        if folder is None:
            folder = MappedFolder(folder_path, 0.5, "holds callers of the section's functions")
            mapping.folders.append(folder)
        folder.files.append(mapped)


def _distinct(ranked, best_in_folder, files, index: RepoIndex, limit: int):
    """The first ``limit`` folders whose best files differ in content; folders that hold a
    copy of an already chosen folder's best file (the same device header vendored into three
    projects) come along without taking a slot."""
    chosen, seen = [], set()
    for choice in ranked:
        best = [p for p in index.folders[choice.key] if p in files and files[p][0] >= best_in_folder[choice.key][0]]
        key = index.content_key(best[0]) if best else choice.key
        if key in seen:
            chosen.append(choice)
            continue
        if len(seen) >= limit:
            continue
        seen.add(key)
        chosen.append(choice)
    return chosen


def _head_match(symbol: str, name: str) -> bool:
    """``I2C_TypeDef``, ``I2C_CR1_PE`` or ``I2C1`` for the peripheral ``I2C``."""
    return bool(re.match(re.escape(name) + r"(?:\d*_|\d+$)", symbol))


def _score_symbols(path: str, weights: dict[str, float], terms: set[str], index: RepoIndex,
                   functions_anywhere: set[str], document: frozenset[str] = frozenset(),
                   acronyms: frozenset[str] = frozenset()) -> list[tuple[Symbol, float, list[str]]]:
    """A file's symbols scored for a section, one entry per name (best kept):

    * the symbol's name holds a section name: 3 for exactly the name, 2 for a run of its
      parts (``MPU_PWR_MGMT_1`` holds ``PWR_MGMT_1``), times the name's relative weight;
      a name without ``_`` (``DR``, ``CONFIG``) counts only as the whole symbol name or after
      a prefix that is not itself a datasheet name (``MPU6050_RA_CONFIG``), so ``ADC_DR_DATA``
      never lands under an I2C data register nor ``GYRO_CONFIG`` under ``CONFIG``; the
      peripheral a prose section is about (``I2C``) also names ``I2C_TypeDef``, ``I2C_CR1_PE``;
    * a function's body uses section names: twice their relative weights, up to 6 (the
      init sequence that programs several of the section's registers ranks first);
    * 0.02 per subword shared with the section's text, up to 0.1 (a tie-break).

    Prototypes whose definition is in a mapped file are left out: the definition is shown."""
    if not weights:
        weights = {}
    top = max(weights.values(), default=1.0) or 1.0
    sindex = index.symbol_index(path)
    scores: dict[int, float] = {}
    evidence: dict[int, list[str]] = {}
    for name, w in weights.items():
        wn = w / top
        bare = "_" not in name
        for i in sindex.by_run.get(name, ()):
            upper = sindex.symbols[i].name.upper()
            exact = upper == name
            if bare and not exact and not _tail_match(upper, name, document):
                if not (name in acronyms and _head_match(upper, name)):
                    continue
                scores[i] = scores.get(i, 0.0) + 1.5 * wn + (0.2 if sindex.symbols[i].kind in ("struct", "typedef")
                                                             else 0.0)
                evidence.setdefault(i, []).append(name)
                continue
            scores[i] = scores.get(i, 0.0) + (3.0 if exact else 2.0) * wn
            evidence.setdefault(i, []).append(name)
    for i, runs in sindex.uses.items():
        used = [n for n in weights if n in runs]
        if used:
            scores[i] = scores.get(i, 0.0) + min(6.0, 2.0 * sum(weights[n] / top for n in used))
            evidence.setdefault(i, []).extend(f"uses {n}" for n in used[:6])
    shared = {i: len(sindex.parts(i) & terms) for i in scores}
    best: dict[str, tuple[Symbol, float, list[str]]] = {}
    for i, score in scores.items():
        sym = sindex.symbols[i]
        if sym.kind == "prototype" and sym.name in functions_anywhere:
            continue
        score += min(0.1, 0.02 * shared.get(i, 0))
        rank = (score, sym.kind == "function", -sym.line)
        held = best.get(sym.name)
        if held is None or rank > (held[1], held[0].kind == "function", -held[0].line):
            best[sym.name] = (sym, score, evidence[i])
    return sorted(best.values(), key=lambda t: (t[0].line, t[0].name))


def _found_names(mapping: SectionMapping, index: RepoIndex) -> dict[str, str]:
    """Each weighted section name found in a mapped file -> that file."""
    found = {}
    for f in mapping.files:
        for name in mapping.weights:
            if name not in found and f.path in index.names.files_for(name):
                found[name] = f.path
    return found


def _lexical_verdict(mapping: SectionMapping, index: RepoIndex, config: SpecMapConfig) -> Verdict:
    """M4 by evidence. A section is about its primary names (the register under its heading,
    :func:`.names.primary_groups`): *implemented* when mapped code holds at least
    ``implemented_coverage`` of those groups and a mapped symbol carries a specific one
    (``PWR_MGMT_1``, ``USART2``: defines it, or a function uses it); *partial* when mapped
    code holds some of them; *not implemented* otherwise, whatever generic words the code
    shares with the section. A section whose own names are plain words (``CONFIG``) is at
    most partial; one with none (prose) is partial when a mapped symbol carries a specific
    name of its text, else not implemented."""
    files = mapping.files
    if not mapping.section.text.strip() and not mapping.names:
        return Verdict("not_implemented", ["the section has no text"])
    if not files:
        return Verdict("not_implemented", ["no folder or file scored above the relevance floor"])
    found = _found_names(mapping, index)
    carried = {e.removeprefix("uses ") for f in files for s in f.symbols for e in s.reason.split(", ") if e}
    evidence = [f"{name} in {path}" for name, path in list(found.items())[:10]]
    evidence += [f"{s.symbol.name} ({s.symbol.kind}) {f.path}:{s.symbol.line}-{s.symbol.end}"
                 for f in files for s in f.symbols[:3]][:10]
    groups = mapping.primary
    if groups:
        def held(group: list[str]) -> bool:
            return any(n in carried or (is_strong(n) and n in found) for n in group)

        hit = [g for g in groups if held(g)]
        named = [g for g in hit if any(n in carried and is_strong(n) for n in g)]
        evidence.insert(0, f"{len(hit)}/{len(groups)} of the section's own names in mapped code: "
                           + ", ".join(" | ".join(g[:3]) for g in groups[:6]))
        if hit and len(hit) / len(groups) >= config.implemented_coverage and named:
            return Verdict("implemented", evidence)
        if hit:
            return Verdict("partial", evidence)
        others = sorted(found)[:5]
        return Verdict("not_implemented", [f"none of the section's own names ({', '.join(g[0] for g in groups[:5])}) "
                                           "is in the mapped code" + (f"; it shares only {', '.join(others)}"
                                                                      if others else "")])
    if any(is_strong(n) and n in carried for n in found):
        return Verdict("partial", evidence)
    return Verdict("not_implemented", ["the mapped code holds none of the section's register, field or "
                                       "peripheral names, only " + (", ".join(sorted(found)[:5]) or "text")])


def _validate(mapping: SectionMapping, index: RepoIndex, judge, config: SpecMapConfig,
              by_id: dict[str, SectionMapping], previous: SectionMapping | None, context: list[str]) -> None:
    """M4. Sequential: a section with no evidence of its own borrows the files of its parent
    or of the section before it when those files mention the section's names."""
    strong = [n for g in mapping.primary for n in g if is_strong(n)] or [n for n in mapping.weights if is_strong(n)]
    if not mapping.files and strong:
        for neighbour in (by_id.get(mapping.section.parent_id or ""), previous):
            if neighbour is None or not neighbour.files:
                continue
            hits = {n: [f for f in neighbour.files if f.path in index.names.files_for(n)] for n in strong}
            if any(hits.values()):
                terms = set(tokenize(mapping.section.title))
                defined = {s.name for f in neighbour.files for s in index.symbols.get(f.path, [])
                           if s.kind == "function"}
                for folder in neighbour.folders:
                    kept = []
                    for f in folder.files:
                        if not any(f in v for v in hits.values()):
                            continue
                        scored = _score_symbols(f.path, mapping.weights, terms, index, defined, mapping.document)
                        scored.sort(key=lambda t: (-t[1], t[0].line))
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
