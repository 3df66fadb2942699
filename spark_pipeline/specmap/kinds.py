"""Sections that no program implements.

Datasheets carry chapters about the silicon and the paper, not the registers: electrical
characteristics, packages and their drawings, ordering codes, revision history, tables of
contents. Code never implements them, yet their tables are full of names that code also
uses (``VDD``, ``I2C``, pin names), so a lexical matcher happily maps drivers under them.
SpecMap classifies these sections by their title, or the title of a section they sit in,
and gives them the status ``not_applicable``: no candidates are scored, no code is mapped.
"""

from __future__ import annotations

import re

from spark_pipeline.specmap.sections import Section

#: kind -> title patterns (lowercase, matched anywhere in the title).
KIND_PATTERNS: dict[str, tuple[str, ...]] = {
    "electrical": (
        r"electrical characteristic", r"absolute maximum", r"operating condition", r"current consumption",
        r"power consumption", r"supply current", r"\bdc characteristic", r"\bac characteristic",
        r"\bemc\b", r"\besd\b", r"electrostatic", r"latch-?up", r"thermal characteristic",
        r"electrical sensitivit", r"timing characteristic", r"electrical specification",
    ),
    "package": (
        r"package information", r"package (?:outline|dimension|drawing|mechanical)", r"mechanical data",
        r"mechanical (?:dimension|drawing|specification)", r"\bdimensions?\b", r"device marking", r"\bmarking\b",
        r"footprint", r"land pattern", r"soldering", r"reflow", r"tape and reel", r"pcb design rules",
        r"packaging",
    ),
    "ordering": (r"ordering information", r"ordering code", r"part numbering", r"order(?:ing)? part number"),
    "history": (r"revision history", r"document history", r"change (?:log|history)", r"document revision"),
    "front": (r"^contents$", r"table of contents", r"list of (?:tables|figures)", r"important notice",
              r"disclaimer", r"trademark", r"legal information"),
}
_COMPILED = {kind: re.compile("|".join(patterns)) for kind, patterns in KIND_PATTERNS.items()}


def title_kind(title: str) -> str | None:
    """The non-implementable kind a title names, if any."""
    low = title.lower().strip()
    for kind, pattern in _COMPILED.items():
        if pattern.search(low):
            return kind
    return None


def section_kinds(sections: list[Section]) -> dict[str, str]:
    """Section id -> non-implementable kind, for the sections that have one: by their own
    title, else by the nearest enclosing section that has one (a table inside "Electrical
    characteristics" is electrical too)."""
    by_id = {s.id: s for s in sections}
    kinds: dict[str, str] = {}
    for section in sections:
        kind = title_kind(section.title)
        parent = section.parent_id
        seen = set()
        while kind is None and parent and parent in by_id and parent not in seen:
            seen.add(parent)
            kind = kinds.get(parent) or title_kind(by_id[parent].title)
            parent = by_id[parent].parent_id
        if kind:
            kinds[section.id] = kind
    return kinds
