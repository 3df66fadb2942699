"""Sections that no program implements.

Datasheets carry chapters about the silicon and the paper, not the registers: electrical
characteristics, packages and their drawings, ordering codes, revision history, tables of
contents. Code never implements them, yet their tables are full of names that code also
uses (``VDD``, ``I2C``, pin names), so a lexical matcher happily maps drivers under them.
SpecMap classifies these sections by their title, or the title of a section they sit in, or
(packages) by their text: a table keyed by package names, board design for a package. They
get the status ``not_applicable``: no candidates are scored, no code is mapped.
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

#: Package names (LQFP64, UFQFPN48, WLCSP49, QFN24, ...): about the silicon's case, never a register.
PACKAGE = re.compile(r"\b(?:LQFP|TQFP|UFQFPN|VFQFPN|QFN|DFN|WLCSP|UFBGA|TFBGA|LFBGA|FBGA|BGA|QFP|SOIC|"
                     r"SSOP|TSSOP|MSOP|SOP|LGA|CSP|PDIP|DIP|SOT)-?\d+[A-Z]*\b")
_BOARD = re.compile(r"\bpcb\b|board design|footprint|pin-to-pin|pinout compatib|drop-in", re.IGNORECASE)


def content_kind(section: Section) -> str | None:
    """A package section told by its text: a table keyed by package names (availability per
    package), or text about board design for packages (pin compatibility, PCB changes)."""
    lines = section.text.splitlines()
    keyed = sum(1 for line in lines if PACKAGE.match(line.strip()))
    if keyed >= 3:
        return "package"
    if PACKAGE.search(section.text) and _BOARD.search(section.text):
        return "package"
    return None


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
        kind = title_kind(section.title) or content_kind(section)
        parent = section.parent_id
        seen = set()
        while kind is None and parent and parent in by_id and parent not in seen:
            seen.add(parent)
            kind = kinds.get(parent) or title_kind(by_id[parent].title)
            parent = by_id[parent].parent_id
        if kind:
            kinds[section.id] = kind
    # A heading with no text of its own whose every subsection is of one kind is of that kind.
    children: dict[str, list[str]] = {}
    for section in sections:
        if section.parent_id:
            children.setdefault(section.parent_id, []).append(section.id)
    for sid, kids in children.items():
        own = {kinds.get(k) for k in kids}
        if sid not in kinds and sid in by_id and len(own) == 1 and None not in own and _headline_only(by_id[sid]):
            kinds[sid] = own.pop()
    return kinds


def _headline_only(section: Section) -> bool:
    body = section.text.strip()
    if body.lower().startswith(section.title.lower()[:20]):
        body = body.split("\n", 1)[1] if "\n" in body else ""
    return len(body.strip()) < 40
