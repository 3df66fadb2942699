"""Lexical relevance: BM25 over code tokens, and datasheet names matched to identifiers.

Datasheets name things the code names too: peripherals (``USART2``), registers
(``PWR_MGMT_1``, ``GPIOx_MODER``), fields (``TXE``). :func:`datasheet_names` pulls those
names out of a section; :class:`NameIndex` finds them among a repository's identifiers,
including inside longer ones (``MPU_REG_PWR_MGMT_1``, ``USART_CR1_UE``) and in
``PERIPH->REG`` accesses, and tells the files that *use* a name (in code that runs: a
function body, a statement) from those that only *define* it (a ``#define``, a struct
field, an enum constant), because the driver that programs a register matters more than
the tenth copy of a header that lists it.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

from spark_pipeline.specmap.addresses import code_numbers

WORD = re.compile(r"(?<![0-9A-Za-z_])[A-Za-z_][A-Za-z0-9_]*")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_ARROW = re.compile(r"(?=\b([A-Za-z_]\w*)\s*(?:->|\.)\s*([A-Za-z_]\w*))")  # overlapping: a.b->c

STOPWORDS = frozenset("""
a an and are as at be by can for from has have in into is it its of on or that the this to was were
which with when will not no if then than these those all any each may must should only also used use
using see table figure section page note bit bits value values register registers set reset
""".split())

C_KEYWORDS = frozenset("""
auto break case char const continue default do double else enum extern float for goto if inline int
long register restrict return short signed sizeof static struct switch typedef union unsigned void
volatile while bool true false null define include ifdef ifndef endif elif pragma uint8_t uint16_t
uint32_t uint64_t int8_t int16_t int32_t int64_t size_t
""".split())

# Register, field and peripheral names as datasheets write them.
_NAME_PATTERNS = (
    re.compile(r"\b[A-Z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+\b"),  # PWR_MGMT_1, GPIOx_MODER, I2C_CR1
    re.compile(r"\b[A-Z][A-Z0-9]*[0-9][A-Z0-9]*\b"),        # USART2, CR1, TIM10, I2C, I2C1
    re.compile(r"\b[A-Z]{3,}\b"),                           # GPIO, MODER, WHO (filtered below)
    re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b"),       # ctrl_meas, osrs_t (Bosch writes them so)
    re.compile(r"\b[A-Z][a-z]+(?:[A-Z][a-z0-9]*){1,5}\b"),  # SetSleep, GetIrqStatus: commands as SET_SLEEP
)
_CAMEL_WORD = re.compile(r"[A-Z][a-z0-9]*")
_ENGLISH_CAPS = frozenset("""
THE AND FOR NOT ALL ANY ARE BUT CAN HAS ITS MAY NOR ONE OUT TWO USE VIA YES NOTE TABLE FIGURE
SECTION PAGE REV DATE LOW HIGH SET RESET READ WRITE ONLY BIT BITS MAX MIN TYP TBD PDF
""".split())


@functools.lru_cache(maxsize=1 << 18)
def split_identifier(word: str) -> tuple[str, ...]:
    parts = []
    for piece in word.split("_"):
        parts.extend(p.lower() for p in _CAMEL.findall(piece))
    return tuple(p for p in parts if p)


@functools.lru_cache(maxsize=1 << 18)
def _word_tokens(word: str) -> tuple[str, ...]:
    parts = split_identifier(word)
    tokens = [p for p in parts if len(p) > 1 and p not in STOPWORDS and p not in C_KEYWORDS]
    lower = word.lower()
    if len(parts) > 1 and lower not in C_KEYWORDS:
        tokens.append(lower)
    return tuple(tokens)


def tokenize(text: str) -> list[str]:
    """Lowercased subwords of every word, plus the whole word when it is an identifier."""
    tokens: list[str] = []
    for word in WORD.findall(text):
        tokens.extend(_word_tokens(word))
    return tokens


@functools.lru_cache(maxsize=1 << 20)
def component_runs(ident: str, max_parts: int = 4) -> frozenset[str]:
    """Every run of up to ``max_parts`` underscore-separated parts: ``A_B_C`` -> A, B, C, A_B, B_C, A_B_C."""
    parts = [p for p in ident.upper().split("_") if p]
    return frozenset("_".join(parts[i:j]) for i in range(len(parts))
                     for j in range(i + 1, min(len(parts), i + max_parts) + 1))


def _canonical(name: str) -> str:
    """Uppercase, with datasheet placeholders dropped: ``GPIOx_MODER`` -> ``GPIO_MODER``;
    a command written in CamelCase as code names it: ``SetSleep`` -> ``SET_SLEEP``."""
    if "_" not in name and re.fullmatch(r"[A-Z][a-z]+(?:[A-Z][a-z0-9]*)+", name):
        return "_".join(_CAMEL_WORD.findall(name)).upper()
    parts = [re.sub(r"(?<=[A-Z0-9])[xyn]$", "", p) for p in name.split("_")]
    return "_".join(p for p in parts if p).upper()


def datasheet_names(text: str, limit: int = 200) -> list[str]:
    """Names in a section's text that look like peripherals, registers or fields, in order."""
    seen: dict[str, None] = {}
    for pattern in _NAME_PATTERNS:
        for m in pattern.finditer(text):
            raw = m.group(0)
            if raw.isupper() and raw.isalpha() and raw in _ENGLISH_CAPS:
                continue
            name = _canonical(raw)
            if len(name) >= 3 and sum(c.isalpha() for c in name) >= 2:
                seen.setdefault(name, None)
            if len(seen) >= limit:
                return list(seen)
    return list(seen)


_NUMBERED_TAIL = re.compile(r"^(\w*_[A-Z]{3,})[0-9]$")
_TYPEDEF = re.compile(r"\b([A-Z][A-Z0-9]*)_Type(?:Def)?\b")


def code_identifiers(text: str, max_types: int = 3) -> set[str]:
    """Identifiers of a source file, uppercased, plus ``A_B`` for each ``A->B`` / ``A.B``
    (``GPIOx->MODER`` as ``GPIO_MODER``). All-lowercase identifiers (``fifo_count``,
    ``self.bus``) are software's own names, not a datasheet's, and are left out. Register accesses through a pointer
    (``port->IDR``, ``huart->Instance->BRR``) also count as ``GROUP_REG`` for the CMSIS
    register types the file names (``GPIO_TypeDef``, ``NRF_UART_Type``), when it names at
    most ``max_types`` of them."""
    idents = {w.upper() for w in WORD.findall(text)
              if len(w) > 1 and not w.islower() and w.lower() not in C_KEYWORDS}
    # ACCEL_XOUT0 (the first of a register pair, numbered by the driver) also counts as ACCEL_XOUT.
    idents |= {m.group(1) for w in idents if (m := _NUMBERED_TAIL.match(w))}
    idents |= code_numbers(text)  # register numbers and opcodes as names: @2D
    arrows = [(a, b) for a, b in _ARROW.findall(text) if not (a.islower() and b.islower())]
    groups = set(_TYPEDEF.findall(text)) if arrows else set()
    if len(groups) > max_types:
        groups = set()
    for a, b in arrows:
        base = a[:-1] if len(a) > 2 and a[-1] == "x" and a[-2].isupper() else a
        idents.add(f"{base}_{b}".upper())
        for group in groups:
            idents.add(f"{group}_{b}".upper())
    return idents


#: ctags kinds (as :mod:`.ctags` maps them) whose lines define names rather than use them.
DEFINING_KINDS = frozenset({"macro", "constant", "typedef", "enum", "variable", "member", "prototype"})


def use_text(text: str, symbols=()) -> str:
    """The part of a file that uses names: every line outside the definitions ctags found
    (macros, enum constants, typedefs, variables, struct bodies that hold no functions) and
    outside ``#define`` lines."""
    lines = text.split("\n")
    defining = [False] * (len(lines) + 2)
    functions = [(s.line, s.end) for s in symbols if s.kind == "function"]
    for sym in symbols:
        kind = sym.kind
        if kind == "struct" and any(sym.line <= a and b <= sym.end for a, b in functions):
            continue  # a class with methods: its methods use names
        if kind in DEFINING_KINDS or kind == "struct":
            for n in range(max(sym.line, 1), min(max(sym.end, sym.line), len(lines)) + 1):
                defining[n] = True
    kept = [line for n, line in enumerate(lines, start=1)
            if not defining[n] and not line.lstrip().startswith("#define")]
    return "\n".join(kept)


class NameIndex:
    """Which files mention a datasheet name, as a whole identifier or a run of its parts,
    and which of them use it (outside definitions; see :func:`use_text`)."""

    def __init__(self, files: dict[str, str], max_parts: int = 4, symbols: dict | None = None):
        self._where: dict[str, set[str]] = defaultdict(set)
        self._used: dict[str, set[str]] = defaultdict(set)
        self.n_files = max(len(files), 1)
        for path, text in files.items():
            for run in self._runs(code_identifiers(text), max_parts):
                self._where[run].add(path)
            if symbols is not None:
                for run in self._runs(code_identifiers(use_text(text, symbols.get(path, ()))), max_parts):
                    self._used[run].add(path)
        self.has_uses = symbols is not None

    @staticmethod
    def _runs(idents: set[str], max_parts: int) -> set[str]:
        runs: set[str] = set()
        for ident in idents:
            runs |= component_runs(ident, max_parts)
        return runs

    def files_for(self, name: str) -> set[str]:
        return self._where.get(name.upper(), set())

    def users_of(self, name: str) -> set[str]:
        """Files that use the name in code (all files that mention it, without symbols)."""
        return self._used.get(name.upper(), set()) if self.has_uses else self.files_for(name)

    def idf(self, name: str) -> float:
        df = len(self.files_for(name))
        return math.log(1 + self.n_files / df) if df else 0.0

    def weight(self, name: str) -> float:
        """Rarer and longer names are stronger evidence."""
        return self.idf(name) * (1.0 + 0.5 * (name.count("_")))

    def score_files(self, names: Iterable[str] | dict[str, float], define_share: float = 0.5
                    ) -> tuple[dict[str, float], dict[str, list[str]]]:
        """Per file, the summed weight of the names it mentions (a name it only defines counts
        ``define_share`` of one it uses); ``names`` may carry their own weights."""
        weighted = names if isinstance(names, dict) else {n: self.weight(n) for n in names}
        scores: dict[str, float] = defaultdict(float)
        matched: dict[str, list[str]] = defaultdict(list)
        for name, w in weighted.items():
            if w <= 0:
                continue
            users = self.users_of(name)
            for path in self.files_for(name):
                scores[path] += w * (1.0 if path in users else define_share)
                matched[path].append(name)
        return dict(scores), dict(matched)


class BM25:
    """Okapi BM25 over tokenized documents (k1=1.5, b=0.75)."""

    def __init__(self, docs: dict[str, list[str]], k1: float = 1.5, b: float = 0.75):
        self.k1, self.b = k1, b
        self.keys = list(docs)
        self.lengths = {k: len(v) for k, v in docs.items()}
        self.avg = (sum(self.lengths.values()) / len(docs)) if docs else 1.0
        self.postings: dict[str, dict[str, int]] = defaultdict(dict)
        for key, tokens in docs.items():
            for term, tf in Counter(tokens).items():
                self.postings[term][key] = tf
        n = len(docs)
        self.idf = {t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self.postings.items()}

    def scores(self, query: Iterable[str]) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for term in set(query):
            postings = self.postings.get(term)
            if not postings:
                continue
            idf = self.idf[term]
            for key, tf in postings.items():
                norm = self.k1 * (1 - self.b + self.b * self.lengths[key] / (self.avg or 1.0))
                out[key] += idf * tf * (self.k1 + 1) / (tf + norm)
        return dict(out)


def chunk_words(text: str, max_words: int, overlap: int = 20) -> list[str]:
    """Adaptive chunking: a section longer than ``max_words`` becomes overlapping windows."""
    words = text.split()
    if len(words) <= max_words:
        return [text]
    step = max(max_words - overlap, 1)
    return [" ".join(words[i:i + max_words]) for i in range(0, len(words) - overlap, step)]
