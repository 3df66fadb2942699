"""Spec-conditioned completion items (beyond the paper): from a held-out pair's mapping file,
each section's datasheet text with the beginning of the code SpecMap mapped to it (the
prompt) and the rest of that code (the reference).

A mapping section (docs/specmap.md) is a header (``Section <id>: <title>``, ``Source:``,
``Status:``, ``Folders:``), the datasheet text, then the code, each file introduced by a
``// File: <path>`` line. An item is made of a section that

* has status ``implemented`` or ``partial`` (only those carry code),
* has datasheet text of at least ``min_text_words`` words (``(no text)`` has none),
* has at least ``min_code_lines`` non-blank lines of code.

Its **specification** is ``Section <id>: <title>``, a blank line and the datasheet text (the
``Source``/``Status``/``Folders`` lines are SpecMap's findings, not the datasheet's, and are
left out). Its **code** (file markers included, as the corpus shows them) is cut between
lines: the prefix holds the first ``ceil(prefix_fraction x lines)`` lines (at least one,
leaving at least one), the reference the rest. Both are cleaned like the corpus' samples.

The item's ``text`` (what the contamination checks compare) is the whole code, prefix and
reference, and its ``sample_hash`` that text's hash. Items whose code a training pair's
sample copies, nearly copies or contains are dropped (the held-out rule of
:func:`~spark_pipeline.corpus.evalsets.unshared_held_out`), as are items whose code repeats
an earlier item's (SpecMap maps one piece of code under several sections: one
implementation is one item), and at most ``max_items_per_pair`` are kept per pair (a
deterministic draw ordered by hash, kept in section order).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from spark_pipeline.corpus.chunking import split_mapping
from spark_pipeline.corpus.cleaning import Cleaner
from spark_pipeline.corpus.integrity import Duplicate, deduplicate
from spark_pipeline.corpus.settings import CleaningSettings, SpecConditionedSettings

SPLIT = "spec_conditioned"
WITH_CODE = ("implemented", "partial")
_HEADER = re.compile(r"^Section (?P<id>\S+?): ?(?P<title>.*)$")
_FILE = re.compile(r"^// File: (.+)$", re.M)
_WORDS = re.compile(r"\w+")


@dataclass
class MappingSection:
    section_id: str
    title: str
    status: str
    text: str
    code: str
    files: list[str]


def parse_section(block: str) -> MappingSection | None:
    """One section of a mapping file (as :func:`~spark_pipeline.corpus.chunking.split_mapping`
    returns it) split into its header fields, datasheet text and code; None without a header."""
    lines = block.split("\n")
    head = _HEADER.match(lines[0]) if lines else None
    if not head:
        return None
    status, i = "", 1
    while i < len(lines) and re.match(r"^(Source|Status|Folders):", lines[i]):
        if lines[i].startswith("Status:"):
            status = lines[i].removeprefix("Status:").strip().split(" ", 1)[0]
        i += 1
    body = "\n".join(lines[i:])
    marker = _FILE.search(body)
    text, code = (body[:marker.start()], body[marker.start():]) if marker else (body, "")
    text = text.strip()
    if text == "(no text)":
        text = ""
    return MappingSection(head["id"], head["title"].strip(), status, text, code.strip("\n"), _FILE.findall(code))


def cut_code(code: str, prefix_fraction: float) -> tuple[str, str]:
    """(prefix, reference) of ``code`` cut between lines; the prefix ends with its newline."""
    lines = code.split("\n")
    k = min(max(math.ceil(prefix_fraction * len(lines)), 1), len(lines) - 1)
    return "\n".join(lines[:k]) + "\n", "\n".join(lines[k:])


def section_items(mapping: bytes, pair_id: str, category: str, settings: SpecConditionedSettings,
                  cleaning: CleaningSettings) -> list[dict]:
    """Every item one pair's mapping file yields, in section order (before deduplication,
    decontamination and the cap). ``chunk_index`` numbers the pair's items."""
    from spark_pipeline.corpus.stages import text_hash

    sections, _ = split_mapping(mapping, f"{pair_id}/mapping.txt")
    cleaner = Cleaner(cleaning)
    items = []
    for _, block in sections:
        s = parse_section(block)
        if s is None or s.status not in WITH_CODE or not s.code:
            continue
        text = cleaner.clean(s.text)[0].strip() if s.text else ""
        code = cleaner.clean(s.code)[0].strip("\n")
        if len(_WORDS.findall(text)) < settings.min_text_words:
            continue
        if sum(1 for line in code.split("\n") if line.strip()) < settings.min_code_lines:
            continue
        prefix, reference = cut_code(code, settings.prefix_fraction)
        whole = prefix + reference
        items.append({"split": SPLIT, "pair_id": pair_id, "category": category, "section_id": s.section_id,
                      "chunk_index": len(items), "text": whole, "sample_hash": text_hash(whole),
                      "section_title": s.title, "section_text": f"Section {s.section_id}: {s.title}\n\n{text}",
                      "code_prefix": prefix, "reference": reference, "source_files": s.files})
    return items


@dataclass
class SpecItems:
    items: list[dict]
    duplicates: list[Duplicate]
    """Items dropped because an earlier item has the same (or nearly the same) code."""
    shared: list[Duplicate]
    """Items dropped because a training pair's sample copies, nearly copies or contains their code."""
    capped: int
    """Items left out by ``max_items_per_pair``."""


def spec_conditioned_items(mappings: dict[str, tuple[bytes, str]], domain: list[dict],
                           settings: SpecConditionedSettings, cleaning: CleaningSettings, threshold: float,
                           permutations: int) -> SpecItems:
    """The split from the held-out pairs' mapping files (``pair id -> (bytes, category)``, in
    pipeline order) and the training pairs' samples ``domain``."""
    from spark_pipeline.corpus.evalsets import unshared_held_out

    rows = [item for pair_id, (data, category) in mappings.items()
            for item in section_items(data, pair_id, category, settings, cleaning)]
    unshared, shared = unshared_held_out(rows, domain, threshold)
    unique, duplicates = deduplicate(unshared, threshold, permutations)
    kept, capped = [], 0
    for pair_id in mappings:
        mine = [r for r in unique if r["pair_id"] == pair_id]
        chosen = {id(r) for r in sorted(mine, key=lambda r: r["sample_hash"])[:settings.max_items_per_pair]}
        kept.extend(r for r in mine if id(r) in chosen)
        capped += len(mine) - len(chosen)
    return SpecItems(kept, duplicates, shared, capped)
