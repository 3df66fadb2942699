"""Everything SpecMap looks things up in, built once per repository revision.

Scanning a repository, running Universal Ctags over it and indexing its identifiers and
words costs seconds to tens of seconds on a real tree (a vendor HAL with three copies of a
10,000-macro device header), while a small datasheet maps in a second. The index is
therefore cached on disk under the storage root (:mod:`.cache`), keyed by the repository's
revision (a git commit, or the content hash of a local folder), the scan limits, the ctags
version and :data:`INDEX_VERSION`: every pair on the same repository, and every re-run,
loads it instead (about a second for a 300-file vendor tree); at most :data:`KEEP` indexes
are kept.

Per-file symbol indexes (which symbol names contain which datasheet names, which names a
function's body uses) are built lazily, only for files a section actually picked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spark_pipeline.specmap import cache
from spark_pipeline.specmap.addresses import code_numbers
from spark_pipeline.specmap.ctags import Symbol, ctags_binary, run_ctags
from spark_pipeline.specmap.lexical import (
    BM25,
    NameIndex,
    code_identifiers,
    component_runs,
    split_identifier,
    tokenize,
)
from spark_pipeline.specmap.repo import RepoScan, ScanLimits, scan_repository

log = logging.getLogger(__name__)

INDEX_VERSION = 11
KEEP = 16
#: A symbol spanning more lines than this that encloses functions is a container (a class).
CONTAINER_LINES = 60


class SymbolIndex:
    """One file's symbols, indexed by the runs of their name parts and (functions) by the
    names their bodies use. Copies of a file share the index (:meth:`for_copy`)."""

    def __init__(self, symbols: list[Symbol], text: str):
        functions = [s for s in symbols if s.kind == "function"]
        self.symbols = [s for s in symbols if s.kind != "member" and not (
            s.end - s.line > CONTAINER_LINES and any(s.line <= f.line and f.end <= s.end and f is not s
                                                     for f in functions))]
        self.by_run: dict[str, list[int]] = {}
        self.uses: dict[int, frozenset[str]] = {}
        lines = text.split("\n")
        for i, sym in enumerate(self.symbols):
            for run in component_runs(sym.name):
                self.by_run.setdefault(run, []).append(i)
            if sym.kind == "function" and sym.end >= sym.line:
                body = "\n".join(lines[sym.line - 1:sym.end])
                runs: set[str] = set()
                for ident in code_identifiers(body):
                    runs |= component_runs(ident)
                self.uses[i] = frozenset(runs)

    def parts(self, i: int) -> frozenset[str]:
        """The subwords of symbol ``i``'s name (``HAL_UART_Init`` -> hal, uart, init)."""
        return frozenset(split_identifier(self.symbols[i].name))

    def for_copy(self, symbols: list[Symbol]) -> SymbolIndex:
        """The same index for a byte-identical copy of the file (its own paths in the symbols)."""
        twin = object.__new__(SymbolIndex)
        twin.by_run, twin.uses = self.by_run, self.uses
        by_key = {(s.name, s.line, s.kind): s for s in symbols}
        twin.symbols = [by_key.get((s.name, s.line, s.kind), s) for s in self.symbols]
        return twin


@dataclass
class RepoIndex:
    scan: RepoScan
    symbols: dict[str, list[Symbol]]
    names: NameIndex
    file_bm25: BM25
    includes: dict[str, set[str]] = field(default_factory=dict)
    """File -> the repository files it includes or imports (:func:`include_graph`)."""
    key: str = ""
    """What the index was built from (:func:`index_key`), for caches that hang off it."""
    seconds: float = 0.0
    from_cache: bool = False
    _symbol_index: dict[str, SymbolIndex] = field(default_factory=dict, repr=False)
    _content: dict[str, str] = field(default_factory=dict, repr=False)

    _folders: dict[str, list[str]] | None = field(default=None, repr=False)
    _by_content: dict[str, SymbolIndex] = field(default_factory=dict, repr=False)

    @property
    def folders(self) -> dict[str, list[str]]:
        if self._folders is None:
            self._folders = self.scan.folders
        return self._folders

    def content_key(self, path: str) -> str:
        """A hash of the file's text: copies of one file share it."""
        if path not in self._content:
            self._content[path] = hashlib.sha1(self.scan.files[path].text.encode("utf-8", "replace")).hexdigest()
        return self._content[path]

    def symbol_index(self, path: str) -> SymbolIndex:
        if path not in self._symbol_index:
            key = self.content_key(path)
            shared = self._by_content.get(key)
            symbols = self.symbols.get(path, [])
            if shared is None:
                shared = self._by_content[key] = SymbolIndex(symbols, self.scan.files[path].text)
                self._symbol_index[path] = shared
            else:
                self._symbol_index[path] = shared.for_copy(symbols)
        return self._symbol_index[path]

    def __getstate__(self):
        state = dict(self.__dict__)
        for transient in ("_symbol_index", "_content", "_by_content", "_closures"):
            state[transient] = {}
        state["_folders"] = None
        return state


def build_index(scan: RepoScan, symbols: dict[str, list[Symbol]]) -> RepoIndex:
    """The index of a scanned repository and its ctags symbols."""
    texts = {p: f.text for p, f in scan.files.items()}
    names = NameIndex(texts, symbols=symbols)
    file_docs = {p: tokenize(p.replace("/", " ")) * 3 + tokenize(t) + sorted(n.lower() for n in code_numbers(t))
                 for p, t in texts.items()}
    return RepoIndex(scan, symbols, names, BM25(file_docs), include_graph(texts))


_C_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^">]+)[">]', re.M)
_PY_IMPORT = re.compile(r"^\s*(?:from\s+(\.*[\w.]*)\s+import\s+([\w, ]+)|import\s+([\w.]+))", re.M)
_RS_MOD = re.compile(r"^\s*(?:pub(?:\([\w:]+\))?\s+)?mod\s+(\w+)\s*;", re.M)


def include_graph(texts: dict[str, str]) -> dict[str, set[str]]:
    """Which repository files each file includes (C/C++ ``#include``, resolved against the
    including file's folder, then by path suffix, then by a unique file name), imports
    (Python, also relative) or declares as a module (Rust ``mod x;``)."""
    by_name: dict[str, list[str]] = {}
    for path in texts:
        by_name.setdefault(posixpath.basename(path), []).append(path)
    graph: dict[str, set[str]] = {}

    def resolve(base: str, target: str) -> str | None:
        joined = posixpath.normpath(posixpath.join(base, target))
        if joined in texts:
            return joined
        suffix = [p for p in by_name.get(posixpath.basename(target), []) if p.endswith("/" + target) or p == target]
        if len(suffix) == 1:
            return suffix[0]
        same = by_name.get(posixpath.basename(target), [])
        return same[0] if len(same) == 1 else None

    for path, text in texts.items():
        base = posixpath.dirname(path)
        found: set[str] = set()
        if path.endswith(".py"):
            for m in _PY_IMPORT.finditer(text):
                module, names, plain = m.group(1), m.group(2), m.group(3)
                if plain:
                    targets = [plain.replace(".", "/")]
                else:
                    dots = len(module) - len(module.lstrip("."))
                    root = posixpath.normpath(posixpath.join(base, *([".."] * max(dots - 1, 0)))) if dots else ""
                    stem = module.lstrip(".").replace(".", "/")
                    head = posixpath.join(root, stem) if root not in ("", ".") else stem
                    targets = [head] + [posixpath.join(head, n.strip()) for n in names.split(",") if n.strip()]
                for target in targets:
                    for candidate in (target + ".py", posixpath.join(target, "__init__.py")):
                        resolved = candidate if candidate in texts else None
                        if resolved is None and not candidate.startswith("/"):
                            resolved = resolve(base, posixpath.basename(candidate)) if "/" not in target else None
                        if resolved:
                            found.add(resolved)
        elif path.endswith(".rs"):
            for m in _RS_MOD.finditer(text):
                for candidate in (posixpath.join(base, m.group(1) + ".rs"), posixpath.join(base, m.group(1), "mod.rs")):
                    if candidate in texts:
                        found.add(candidate)
        else:
            for m in _C_INCLUDE.finditer(text):
                resolved = resolve(base, m.group(1))
                if resolved:
                    found.add(resolved)
        found.discard(path)
        if found:
            graph[path] = found
    return graph


def closure(graph: dict[str, set[str]], start: set[str], files: Iterable[str] = (), depth: int = 3) -> set[str]:
    """The files ``start`` includes, up to ``depth`` steps, with the source files (among
    ``files``) that implement each header reached (``SX126x.h`` -> ``SX126x.cpp``)."""
    stems: dict[str, list[str]] = {}
    for path in set(graph) | {p for targets in graph.values() for p in targets} | set(files):
        stems.setdefault(posixpath.splitext(path)[0], []).append(path)
    seen = set(start)
    frontier = set(start)
    for _ in range(depth):
        nxt = set()
        for path in frontier:
            nxt |= graph.get(path, set())
        nxt -= seen
        seen |= nxt
        frontier = nxt
    for path in list(seen):
        stem = posixpath.splitext(path)[0]
        seen.update(stems.get(stem, []))
        if path.endswith((".h", ".hpp", ".hh")):  # SX126x.h -> SX126x_config.cpp beside it
            seen.update(p for key, paths in stems.items() if key.startswith(stem + "_") for p in paths)
    return seen - set(start)


def index_key(revision: str, limits: ScanLimits, listed: set[str] | None) -> str:
    """What an index depends on: the tree, the scan rules, the ctags build, the index code."""
    import subprocess

    version = subprocess.run([ctags_binary(), "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    listing = hashlib.sha256("\n".join(sorted(listed)).encode()).hexdigest() if listed is not None else ""
    raw = json.dumps([INDEX_VERSION, revision, asdict(limits), version, listing], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def load_or_build(root: Path, revision: str, listed: set[str] | None, limits: ScanLimits, label: str,
                  cache_dir: Path | None) -> RepoIndex:
    """The repository's index from the cache when present, else built (and cached)."""
    started = time.perf_counter()
    key = index_key(revision, limits, listed) if cache_dir is not None else ""
    path = Path(cache_dir) / f"{key}.index" if cache_dir is not None else None
    index = cache.load(path, RepoIndex)
    if index is not None:
        index.scan.root = Path(root).resolve()
        index.from_cache = True
        index.seconds = time.perf_counter() - started
        return index
    scan = scan_repository(root, listed, limits, label=label)
    symbols = run_ctags(scan.root, sorted(scan.files)) if scan.files else {}
    index = build_index(scan, symbols)
    index.key = key
    if scan.files:
        cache.store(index, path, KEEP)
    index.seconds = time.perf_counter() - started
    return index
