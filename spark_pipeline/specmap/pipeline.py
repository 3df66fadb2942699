"""SpecMap M1–M4 over one repository–datasheet pair (paper §3.2, stage 1).

M1 folder discovery   the folders of the candidate files, as relevant as their best file
M2 file discovery     every candidate file of the repository gets an evidence row
                      (:mod:`.features`: the section's names and register numbers it holds
                      and uses, its text relevance over the section's word windows, what kind
                      of file it is) and a probability from the fitted file model
                      (:mod:`.model`); the model's fitted decision keeps the files
M3 symbol discovery   Universal Ctags symbols inside the chosen files: definitions that carry
                      the section's names or numbers and functions whose bodies use them
M4 validation         in document order: implemented when the chosen code holds the section's
                      own names or numbers and a chosen symbol carries one, partial when it
                      holds fewer, not implemented when no file was chosen, not_applicable for
                      sections no program implements (electrical, package, ordering, history,
                      by title or content: :mod:`.kinds`)

Nothing in M1–M4 is a hand-set weight: the judge decides from the model's probabilities
(the offline judge by the model's fitted decision, an LLM judge from the candidates ranked by
them). Build outputs and tests never enter the candidates (:mod:`.roles`). The repository
index is built once per revision and cached (:mod:`.index`).

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
from spark_pipeline.specmap.addresses import document_rows
from spark_pipeline.specmap.ctags import Symbol
from spark_pipeline.specmap.datasheet import DatasheetError, Section, read_datasheet, sectioning_warnings
from spark_pipeline.specmap.devices import DeviceHints, device_hints
from spark_pipeline.specmap.features import candidate_rows
from spark_pipeline.specmap.index import RepoIndex, load_or_build
from spark_pipeline.specmap.judge import Candidate, LexicalJudge, Verdict
from spark_pipeline.specmap.kinds import section_kinds
from spark_pipeline.specmap.lexical import tokenize
from spark_pipeline.specmap.model import FileModel, decide
from spark_pipeline.specmap.model import load as load_model
from spark_pipeline.specmap.names import NameWeights, is_strong, primary_groups, section_names
from spark_pipeline.specmap.pairs import PairError, ResolvedPair, files_at_revision
from spark_pipeline.specmap.repo import RepoScan, ScanLimits, accepted_types
from spark_pipeline.specmap.roles import Roles

log = logging.getLogger(__name__)


@dataclass
class SpecMapConfig:
    chunk_words: int = 350
    """M2 adaptive chunking: section text longer than this many words is scored in windows."""
    max_folders: int = 4
    """With an LLM judge: at most this many folders are offered to it per section."""
    max_files: int | None = None
    """At most this many files (of different contents) per section; None: the file model's
    fitted cap."""
    max_symbols: int = 8
    implemented_coverage: float = 0.5
    """M4: share of a section's own groups (register names or numbers) the chosen code must
    hold for 'implemented' (with a chosen symbol carrying one); fewer is 'partial'."""
    max_excerpt_lines: int = 150
    """Mapping file: at most this many code lines per mapped file."""
    context_lines: int = 1
    llm_candidates: int = 20
    """With an LLM judge: the files offered to it per section, best by the file model first."""
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
    candidates: list[tuple[str, dict[str, float], str]] = field(default_factory=list, repr=False)
    """M2's candidate files: (path, evidence row, content key) (:mod:`.features`)."""
    probabilities: dict[str, float] = field(default_factory=dict)
    """The file model's probability for each candidate."""
    section_probability: float | None = None
    """The section gate's probability that the section carries code (offline judge)."""

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


#: Bumped when the datasheet readers change what they produce (invalidates cached sections).
READER_VERSION = 7


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
                cache_dir: Path | None = None, semantic=None, model: FileModel | None = None) -> SpecMapResult:
    """Map every datasheet section of a pair to folders, files and symbols, and validate it.
    ``cache_dir`` holds repository indexes and parsed datasheets across pairs and runs (none:
    built each time). ``semantic``: a :class:`~.semantic.SemanticScorer` to add embedding
    relevance (none: lexical only). ``model``: the file model (none: the shipped one,
    :func:`.model.load`)."""
    config = config or SpecMapConfig()
    judge = judge or LexicalJudge()
    model = model or load_model()
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
    roles = Roles(hints)
    rows = document_rows([s for s in sections if not s.names])
    names = {s.id: section_names(s, rows) for s in sections}
    kinds = section_kinds(sections, mcu=bool(hints.cores))
    weights = NameWeights.for_document(sections, names, index.names, hints.parts, set(kinds))
    document = frozenset(weights.section_df)

    mappings: list[SectionMapping] = []
    context: list[str] = []
    similar = None
    if semantic is not None:
        vectors_at = (Path(cache_dir) / f"{index.key}.{semantic.name}.semantic") if cache_dir and index.key else None

        def similar(section: Section) -> dict[str, float]:
            return semantic.similarities(f"{section.title}\n{section.text[:1500]}", index, vectors_at)

    primaries = {s.id: weights.primary(primary_groups(s, names[s.id], rows=rows)) for s in sections
                 if s.id not in kinds}
    for i, section in enumerate(sections):
        primary = primaries.get(section.id, [])
        mapping = SectionMapping(section, names[section.id], kind=kinds.get(section.id),
                                 weights=weights.weights(names[section.id], section.id, primary),
                                 primary=primary, document=document)
        if mapping.kind:
            mapping.verdict = Verdict("not_applicable", [f"a {mapping.kind} section: nothing a program implements"])
        else:
            _map_section(mapping, index, hints, roles, judge, config, model, similar)
            _validate(mapping, index, judge, config, context)
        mappings.append(mapping)
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


def _evidence(row: dict[str, float], names: list[str]) -> str:
    """A candidate's evidence in a few words, for the sidecar and an LLM judge."""
    parts = [f"holds {', '.join(names[:4])}"] if names else []
    if row.get("number_cov"):
        parts.append(f"register numbers {row['number_cov']:.0%}")
    if row.get("bm25_top"):
        parts.append("among the best by text")
    for flag, words in (("example", "an example or application"), ("own_closure", "included by the part's files"),
                        ("sibling", "another family member")):
        if row.get(flag):
            parts.append(words)
    return "; ".join(parts)


def _map_section(mapping: SectionMapping, index: RepoIndex, hints: DeviceHints, roles: Roles, judge,
                 config: SpecMapConfig, model: FileModel,
                 similar: Callable[[Section], dict[str, float]] | None = None) -> None:
    section = mapping.section
    if not section.text.strip() and not mapping.names:
        return
    query = f"{section.title}\n{section.text}"
    rows, hits = candidate_rows(mapping, index, roles, hints, similar, config.chunk_words)
    probs = [model.probability(row) for _, row, _ in rows]
    mapping.candidates = rows
    mapping.probabilities = {path: round(p, 4) for (path, _, _), p in zip(rows, probs, strict=True)}
    reasons = {path: _evidence(row, hits.get(path, [])) for path, row, _ in rows}

    if isinstance(judge, LexicalJudge):
        decision = model if config.max_files is None else _capped(model, config.max_files)
        chosen, mapping.section_probability = decide(decision, rows, probs)
    else:
        chosen = _ask_judge(judge, section.title, query, rows, probs, reasons, index, config)
    by_folder: dict[str, MappedFolder] = {}
    for path, p in chosen:
        folder = index.scan.files[path].folder
        if folder not in by_folder:
            by_folder[folder] = MappedFolder(folder, round(p, 4), f"holds {path.rsplit('/', 1)[-1]}")
        by_folder[folder].files.append(MappedFile(path, round(p, 4), reasons.get(path, "")))
    mapping.folders = list(by_folder.values())

    # M3: symbols inside each chosen file.
    terms = set(tokenize(query))
    defined = {f.path: {s.name for s in index.symbols.get(f.path, []) if s.kind == "function"} for f in mapping.files}
    functions_anywhere = set().union(*defined.values()) if defined else set()
    for mapped in mapping.files:
        scored = _score_symbols(mapped.path, mapping.weights, terms, index, functions_anywhere, mapping.document,
                                frozenset(n for g in mapping.primary for n in g if "_" not in n and not n.startswith("@")))
        best = max((score for _, score, _ in scored), default=0.0)
        by_name = {sym.name: sym for sym, _, _ in scored}
        sym_candidates = [Candidate(sym.name, score / best if best else 0.0, score, evidence,
                                    preview=f"{sym.kind} line {sym.line}") for sym, score, evidence in scored]
        sym_choices = judge.pick("symbols", section.title, query, sym_candidates,
                                 lambda k, b=by_name: k in b, config.max_symbols)
        mapped.symbols = [MappedSymbol(by_name[c.key], c.score, c.reason) for c in sym_choices]


def _capped(model: FileModel, max_files: int) -> FileModel:
    from dataclasses import replace

    return replace(model, max_files=max_files)


def _ask_judge(judge, title: str, query: str, rows, probs, reasons: dict[str, str], index: RepoIndex,
               config: SpecMapConfig) -> list[tuple[str, float]]:
    """An LLM judge chooses folders (M1), then files inside them (M2), from the candidates the
    file model ranks best; every path it returns is checked against the repository."""
    ranked = sorted(zip(rows, probs, strict=True), key=lambda rp: (-rp[1], rp[0][0]))[: config.llm_candidates]
    prob = {path: p for (path, _, _), p in ranked}
    folders: dict[str, list[str]] = {}
    for (path, _, _), _p in ranked:
        folders.setdefault(index.scan.files[path].folder, []).append(path)
    folder_candidates = [Candidate(f, max(prob[p] for p in ps), max(prob[p] for p in ps),
                                   [reasons.get(ps[0], "")], preview=", ".join(p.rsplit("/", 1)[-1] for p in ps[:8]))
                         for f, ps in folders.items()]
    picked_folders = judge.pick("folders", title, query, folder_candidates, lambda k: k in index.folders,
                                config.max_folders)
    chosen: list[tuple[str, float]] = []
    limit = config.max_files or 5
    for choice in picked_folders:
        inside = folders.get(choice.key, [])
        candidates = [Candidate(p, prob[p], prob[p], [reasons.get(p, "")],
                                preview=", ".join(s.name for s in index.symbols.get(p, [])[:10])) for p in inside]
        in_folder = set(index.folders.get(choice.key, []))
        for fchoice in judge.pick("files", title, query, candidates, in_folder.__contains__, limit):
            chosen.append((fchoice.key, fchoice.score))
    return chosen


def _tail_match(symbol: str, name: str, document: frozenset[str]) -> bool:
    """``MPU6050_RA_CONFIG`` carries ``CONFIG`` (a driver prefix, then the name); ``GYRO_CONFIG``
    does not (its prefix is another datasheet name)."""
    if not symbol.endswith("_" + name):
        return False
    prefix = symbol[: -len(name) - 1].split("_")
    return not any(part in document for part in prefix)


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
    """M4 by evidence. A section is about its primary groups (the register under its heading
    and its number, :func:`.names.primary_groups`). With files chosen: *implemented* when they
    hold at least ``implemented_coverage`` of the groups and a chosen symbol carries one
    (defines it or a function uses it), else *partial*; a section without such groups
    (prose) is *partial*. With no file chosen: *not implemented*."""
    files = mapping.files
    if not mapping.section.text.strip() and not mapping.names:
        return Verdict("not_implemented", ["the section has no text"])
    if not files:
        best = max(mapping.probabilities.items(), key=lambda kv: kv[1], default=None)
        gate = mapping.section_probability
        own = ", ".join(g[0] for g in mapping.primary[:5])
        if own and not any(f in index.names.files_for(n) for g in mapping.primary for n in g
                           for f in mapping.probabilities):
            return Verdict("not_implemented", [f"no candidate file holds the section's own names or numbers ({own})"
                                               + (f"; best {best[0]} at {best[1]:.2f}" if best else "")])
        if gate is not None:
            why = (f"the section gate judges it to carry no code ({gate:.2f}: what kind of text it is and how "
                   f"sure the file decision is; best file {best[0]} at {best[1]:.2f})" if best else "no file")
        elif best:
            why = f"no file is likely enough to implement it (best {best[0]} at {best[1]:.2f})"
        else:
            why = "no file holds its names, numbers or words"
        return Verdict("not_implemented", [why])
    found = _found_names(mapping, index)
    carried = {e.removeprefix("uses ") for f in files for s in f.symbols for e in s.reason.split(", ") if e}
    evidence = [f"{name} in {path}" for name, path in list(found.items())[:10]]
    evidence += [f"{s.symbol.name} ({s.symbol.kind}) {f.path}:{s.symbol.line}-{s.symbol.end}"
                 for f in files for s in f.symbols[:3]][:10]
    evidence.insert(0, "files chosen by the file model: " + ", ".join(
        f"{f.path} ({f.score:.2f})" for f in files[:5]))
    groups = mapping.primary
    if not groups:
        return Verdict("partial", evidence)

    def held(group: list[str]) -> bool:
        return any(n in carried or (is_strong(n) and n in found) for n in group)

    hit = [g for g in groups if held(g)]
    named = [g for g in hit if any(n in carried and is_strong(n) for n in g)]
    evidence.insert(1, f"{len(hit)}/{len(groups)} of the section's own names or numbers in the chosen code: "
                       + ", ".join(" | ".join(g[:3]) for g in groups[:6]))
    if hit and len(hit) / len(groups) >= config.implemented_coverage and named:
        return Verdict("implemented", evidence)
    return Verdict("partial", evidence)


def _validate(mapping: SectionMapping, index: RepoIndex, judge, config: SpecMapConfig, context: list[str]) -> None:
    """M4, in document order: the judge sees the statuses of the sections before this one."""
    lexical = _lexical_verdict(mapping, index, config)
    summary = {f.path: [s.symbol.name for s in f.symbols] for f in mapping.files}
    mapping.verdict = judge.validate(mapping.section.title, f"{mapping.section.title}\n{mapping.section.text}",
                                     summary, context, lexical)
