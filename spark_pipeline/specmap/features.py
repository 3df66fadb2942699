"""The evidence row of a candidate file for a datasheet section (what :mod:`.model` weighs).

Every value is a plain fact about the pair, scaled to about 0..1, with no threshold in it:

* **names** (:mod:`.names`): ``name_rel`` the file's weighted name score relative to the
  section's best file (a name used in code counts twice one only defined), ``name_cov`` the
  share of the section's name weight the file holds;
* **what the section is about** (its primary groups: the register under its heading, its
  number): ``primary_cov`` the share of groups the file mentions, ``primary_use`` the share it
  uses in code, ``number_cov`` the share of the section's own register numbers and opcodes
  (``@2D``, :mod:`.addresses`) it holds, ``strong_cov`` the share of the weight of its
  register-shaped names (``PWR_MGMT_1``, ``USART2``, ``@2D``; plain words such as ``VDD`` aside);
* **text**: ``bm25_rel`` BM25 over the section's word windows relative to the best file,
  ``bm25_top`` among the three best, ``semantic`` embedding similarity when switched on;
* **the file** (:mod:`.roles`, :mod:`.devices`): ``path_match`` its name carries the
  peripheral or register the section is about (``i2c.c``), ``own_part`` it names the
  datasheet's part, ``own_closure`` the part's files include it (a base class's driver, the
  register header), ``sibling`` another member of the datasheet's family, ``example`` an
  example or application, ``header`` (another microcontroller's vendor library and other parts'
  drivers never become candidates: :meth:`.roles.Roles.excluded`);
* **the section**: ``section_named`` (it has register names), ``section_numbered`` (it has
  register numbers), ``section_prose`` (neither), how much of it reads like electrical figures
  (``section_units``: lines with a value and a unit), pins (``section_pins``) or board advice
  (``section_board``: capacitors, resistors, traces), how many registers it names
  (``section_registers``), and the repository's size;
* products the linear model cannot form by itself: text and file-name evidence apart for
  sections with names (``bm25_named``, ``path_named``) and prose sections (``bm25_prose``,
  ``path_prose``), and ``example_caller``: an example or application that uses none of the
  section's own names or numbers in code (it only calls the driver; one that programs the
  register itself is weighed like any file).

The model sees only the features in :data:`FEATURES`; the row holds a few more facts
(``own_closure``, ``header``, ``repo_size``, ...) for the sidecar and for study.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from spark_pipeline.specmap.index import closure
from spark_pipeline.specmap.kinds import BOARD_WORDS, UNIT
from spark_pipeline.specmap.lexical import STOPWORDS, chunk_words, split_identifier, tokenize
from spark_pipeline.specmap.names import is_strong

FEATURES = (
    "name_rel", "name_cov", "strong_cov", "primary_cov", "primary_use", "number_cov", "bm25_named", "bm25_prose", "semantic",
    "path_named", "path_prose", "own_part", "sibling", "example_caller", "section_prose", "section_units", "section_pins", "section_board", "section_registers",
)

_HEADER = (".h", ".hh", ".hpp", ".hxx", ".inc")
#: At most this many candidate files per section: every file holding a weighted name, and
#: the best files by text.
MAX_CANDIDATES = 150
TEXT_CANDIDATES = 15


def _stem_tokens(path: str) -> set[str]:
    """The words of a file's name: ``stm32f4xx_hal_gpio.c`` -> stm32f4xx, hal, gpio;
    ``RTC_DS3231.cpp`` -> rtc, ds3231."""
    stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    words = {t.lower() for t in re.split(r"[_\-.\s]+", stem) if t}
    for word in list(words):
        words |= set(split_identifier(word))
    return words


def _section_keys(mapping) -> set[str]:
    """The words a file named after this section would carry: the parts of its primary names
    and the acronyms of its title (``I2C``, ``GPIO``, ``FIFO``)."""
    keys: set[str] = set()
    for group in mapping.primary:
        for name in group:
            if not name.startswith("@"):
                keys |= {p.lower() for p in name.split("_") if len(p) >= 3}
    keys |= {w.lower() for w in re.findall(r"\b[A-Z][A-Z0-9]{1,7}\b", mapping.section.title) if len(w) >= 3}
    return keys - STOPWORDS - {"reg", "register", "registers", "bit", "bits", "mode", "data", "control"}


_PIN_WORD = re.compile(r"\b(?:pins?|pads?|balls?)\b", re.IGNORECASE)


def section_profile(section, weights: dict[str, float]) -> dict[str, float]:
    """What kind of text a section is, whatever file is weighed against it."""
    lines = [ln for ln in section.text.splitlines() if ln.strip()]
    words = max(len(section.text.split()), 1)
    n = max(len(lines), 1)
    registers = sum(1 for name in weights if is_strong(name))
    return {
        "section_units": sum(1 for ln in lines if UNIT.search(ln)) / n,
        "section_pins": min(1.0, len(_PIN_WORD.findall(section.text)) / n),
        "section_board": min(1.0, 60 * len(BOARD_WORDS.findall(section.text)) / words),
        "section_registers": min(1.0, math.log1p(registers) / math.log(50)),
    }


def own_closure(index, hints) -> set[str]:
    """The files the datasheet's own part files include (its base class's driver, its register
    header), cached on the index per set of part numbers."""
    cache = index.__dict__.setdefault("_closures", {})
    key = tuple(sorted(hints.parts))
    if key not in cache:
        own = {p for p in index.scan.files if hints.is_device_file(p)}
        cache[key] = closure(index.includes, own, index.scan.files) if own else set()
    return cache[key]


def candidate_rows(mapping, index, roles, hints, similar: Callable | None = None, chunk: int = 350
                   ) -> tuple[list[tuple[str, dict[str, float], str]], dict[str, list[str]]]:
    """(path, feature row, content key) for every candidate file of a section, and the
    section's names each file holds."""
    section = mapping.section
    weights = mapping.weights
    name_scores, hits = index.names.score_files(weights, 0.5)
    # Register-shaped names of the section (some may be in no file: then no file holds them);
    # a section with none falls back to all its names.
    has_strong = any(is_strong(n) for n in mapping.names) or any(is_strong(n) for g in mapping.primary for n in g)
    strong = {n: w for n, w in weights.items() if is_strong(n)}
    strong_scores = index.names.score_files(strong, 0.5)[0] if has_strong else name_scores
    total_strong = (sum(strong.values()) if has_strong else sum(weights.values())) or 1.0
    bm25: dict[str, float] = {}
    numbers = [n.lower() for g in mapping.primary for n in g if n.startswith("@")]  # raw register numbers match too
    for window in chunk_words(section.text or section.title, chunk):
        for path, score in index.file_bm25.scores(tokenize(f"{section.title} {window}") + numbers).items():
            bm25[path] = max(bm25.get(path, 0.0), score)
    top_text = sorted(bm25, key=lambda p: (-bm25[p], p))[:TEXT_CANDIDATES]
    ranked_names = sorted(name_scores, key=lambda p: (-name_scores[p], p))
    sims = similar(section) if similar is not None else {}
    best_sim = max(sims.values(), default=0.0) or 1.0
    close = [p for p, sim in sorted(sims.items(), key=lambda kv: -kv[1]) if sim >= 0.9 * best_sim][:5]
    paths = list(dict.fromkeys(ranked_names + top_text + close))[:MAX_CANDIDATES]
    closure = own_closure(index, hints)
    paths = [p for p in paths if p in index.scan.files
             and roles.excluded(p, index.scan.files[p].role, closure) is None]
    if not paths:
        return [], hits
    best_name = max(name_scores.values(), default=0.0) or 1.0
    total_weight = sum(weights.values()) or 1.0
    best_text = max(bm25.values(), default=0.0) or 1.0
    text_rank = {p: i for i, p in enumerate(top_text)}

    groups = mapping.primary
    named = any(any(is_strong(n) and not n.startswith("@") for n in g) for g in groups)
    numbered = any(any(n.startswith("@") for n in g) for g in groups)
    number_groups = [g for g in groups if any(n.startswith("@") for n in g)]
    keys = _section_keys(mapping)
    repo_size = math.log10(max(len(index.scan.files), 1)) / 4
    profile = section_profile(section, weights)
    rows = []
    for path in paths:
        where = [any(path in index.names.files_for(n) for n in g) for g in groups]
        used = [any(path in index.names.users_of(n) for n in g) for g in groups]
        numbers = [any(path in index.names.files_for(n) for n in g if n.startswith("@")) for g in number_groups]
        file = index.scan.files[path]
        role = getattr(file, "role", "source")
        own = hints.is_device_file(path)
        row = {
            "name_rel": name_scores.get(path, 0.0) / best_name,
            "name_cov": min(1.0, name_scores.get(path, 0.0) / total_weight),
            "strong_cov": min(1.0, strong_scores.get(path, 0.0) / (total_strong or 1.0)),
            "primary_cov": sum(where) / len(groups) if groups else 0.0,
            "primary_use": sum(used) / len(groups) if groups else 0.0,
            "number_cov": sum(numbers) / len(number_groups) if number_groups else 0.0,
            "bm25_rel": bm25.get(path, 0.0) / best_text,
            "bm25_top": 1.0 if text_rank.get(path, 99) < 3 else 0.0,
            "semantic": max(sims.get(path, 0.0), 0.0) / best_sim if sims else 0.0,
            "path_match": 1.0 if keys & _stem_tokens(path) else 0.0,
            "own_part": 1.0 if own else 0.0,
            "own_closure": 1.0 if path in closure else 0.0,
            "sibling": 1.0 if hints.is_sibling(path) else 0.0,
            "example": 1.0 if role == "example" else 0.0,
            "header": 1.0 if path.lower().endswith(_HEADER) else 0.0,
            "section_named": 1.0 if named else 0.0,
            "section_numbered": 1.0 if numbered else 0.0,
            "section_prose": 0.0 if groups else 1.0,
            "repo_size": repo_size,
            **profile,
        }
        named = 1.0 - row["section_prose"]
        row["bm25_named"] = row["bm25_rel"] * named
        row["bm25_prose"] = row["bm25_rel"] * row["section_prose"]
        row["path_named"] = row["path_match"] * named
        row["path_prose"] = row["path_match"] * row["section_prose"]
        # An example or application that uses none of the section's own names or numbers in
        # code only calls the driver; one that programs the register itself is its code too.
        row["example_caller"] = row["example"] if row["primary_use"] == 0 else 0.0
        rows.append((path, row, index.content_key(path)))
    return rows, hits
