"""What every datasheet reader produces: :class:`Section` objects in document order, built
from headings met in reading order; numbered headings told from other numbered lines; and
the warnings that say a document was probably sectioned wrongly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


class DatasheetError(ValueError):
    """A datasheet cannot be read: encrypted, corrupt, empty or of an unknown type."""


@dataclass
class Section:
    id: str
    title: str
    level: int
    text: str = ""
    page_start: int | None = None  # 1-based
    page_end: int | None = None
    parent_id: str | None = None
    source: str = ""
    names: list[str] = field(default_factory=list)  # register/field/peripheral names (SVD: exact)
    primary: list[list[str]] = field(default_factory=list)
    """What the section is about, as groups of alternative names (SVD: the register under each
    peripheral instance and its group, ``I2C3_CR1 | I2C1_CR1 | I2C_CR1``); empty: found from
    the title and first lines (:func:`~spark_pipeline.specmap.names.primary_groups`)."""
    cut: int = 0
    """When the section's text was over the reader's limit: its length before it was cut."""

    def to_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "level": self.level,
                "page_start": self.page_start, "page_end": self.page_end,
                "parent_id": self.parent_id, "source": self.source, "chars": len(self.text)}


NUMBERED = re.compile(r"^\s*((?:\d+|[A-Z])(?:\.\d+){0,5})\.?\s+([A-Z][^\n]{1,90}?)\s*$")
DOT_LEADER = re.compile(r"(\.\s?){4,}\s*\d+\s*$|\s{3,}\d+\s*$")


def split_number(title: str) -> tuple[str | None, str]:
    """``"4.2 Power management"`` -> ``("4.2", "Power management")``; no number -> ``(None, title)``."""
    m = re.match(r"^\s*((?:\d+|[A-Z])(?:\.\d+)+|\d+)\.?\s+(.*)$", title)
    if m:
        return m.group(1), m.group(2).strip()
    return None, title.strip()


def unique_id(ids: set[str], wanted: str) -> str:
    if wanted not in ids:
        ids.add(wanted)
        return wanted
    n = 2
    while f"{wanted}~{n}" in ids:
        n += 1
    ids.add(f"{wanted}~{n}")
    return f"{wanted}~{n}"


def number_key(number: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else ord(p) - ord("A") + 1000 for p in number.split("."))


def numbered_line(line: str) -> tuple[str, str] | None:
    """``(number, title)`` when a line has the shape of a numbered heading: short, no dot
    leader (a table of contents), a title of words that does not end a sentence."""
    if len(line) > 100 or DOT_LEADER.search(line):
        return None
    m = NUMBERED.match(line)
    if not m:
        return None
    number, title = m.group(1), m.group(2)
    if title.endswith((".", ",", ";", ":")) or sum(c.isalpha() for c in title) < 3:
        return None
    key = number_key(number)
    if key[0] >= 1000 and len(key) == 1:
        return None  # a bare capital letter is rarely a heading
    return number, title


def plausible_heading(line: str, last: tuple[int, ...]) -> tuple[str, str, tuple[int, ...]] | None:
    """A numbered heading judged by its text alone (no layout known): it must also follow the
    previous heading's number, since a repeat is a table of contents or a cross-reference."""
    found = numbered_line(line)
    if found is None:
        return None
    key = number_key(found[0])
    if last and not key > last:
        return None
    return found[0], found[1], key


class HeadingSections:
    """Builds a section tree from headings met in reading order: keeps the stack of open
    levels (for parent ids), unique ids, and the lines of the section being read."""

    def __init__(self, source: str, page: int | None = None):
        self.source = source
        self.ids: set[str] = set()
        self.stack: list[tuple[int, str]] = []
        self.lines: list[str] = []
        self.current = Section("front", "Front matter", 1, "", page, page, None, source)

    def _finish(self) -> Section | None:
        self.current.text = "\n".join(self.lines).strip()
        self.lines = []
        return self.current if (self.current.text or self.current.id != "front") else None

    def start(self, wanted_id: str, title: str, level: int, page: int | None = None) -> Section | None:
        """Begin a new section; returns the one it ends (None for an empty front matter)."""
        done = self._finish()
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        parent = self.stack[-1][1] if self.stack else None
        sid = unique_id(self.ids, wanted_id)
        self.stack.append((level, sid))
        self.current = Section(sid, title, level, "", page, page, parent, self.source)
        return done

    def close(self) -> Section:
        self.current.text = "\n".join(self.lines).strip()
        return self.current


def sectioning_warnings(sections: list[Section], giant_share: float = 0.4, giant_chars: int = 10_000,
                        front_share: float = 0.3, empty_share: float = 0.2) -> list[str]:
    """Signs that a document was sectioned wrongly, as sentences naming the document: one
    section holding most of the text (headings inside it were missed), most text outside any
    heading, many sections without text of their own (their text landed in a neighbour)."""
    if not sections:
        return []
    source = sections[0].source or "datasheet"
    cut = [f"{source}: section {s.id} had {s.cut:,} characters and was cut to {len(s.text):,}" for s in sections
           if s.cut]
    sizes = [len(s.text) for s in sections]
    total = sum(sizes) or 1
    warnings = list(cut)
    if total >= 5000 and len(sections) <= 2:
        return cut + [f"{source}: only {len(sections)} section(s) in {total:,} characters of text: "
                "no headings were recognised"]
    biggest = max(range(len(sections)), key=lambda i: sizes[i])
    if sizes[biggest] >= giant_chars and sizes[biggest] / total >= giant_share and len(sections) > 2:
        s = sections[biggest]
        warnings.append(f"{source}: section {s.id} ({s.title[:50]!r}) holds {sizes[biggest] / total:.0%} of the "
                        f"text ({sizes[biggest]:,} characters): headings inside it were probably missed")
    front = sum(len(s.text) for s in sections if s.id == "front")
    if total >= 5000 and front / total >= front_share:
        warnings.append(f"{source}: {front / total:.0%} of the text is outside any heading")
    parents = {s.parent_id for s in sections}
    leaves = [s for s in sections if s.id not in parents and s.id != "front"]
    empty = [s for s in leaves if len(_body(s)) < 20]
    if len(leaves) >= 5 and len(empty) / len(leaves) >= empty_share:
        warnings.append(f"{source}: {len(empty)} of {len(leaves)} sections have no text of their own "
                        f"(e.g. {', '.join(s.id for s in empty[:5])}): their text probably landed in a neighbour")
    return warnings


def _body(section: Section) -> str:
    """A section's text without its heading line."""
    text = section.text.strip()
    first, _, rest = text.partition("\n")
    if section.title and section.title.lower()[:20] in first.lower():
        return rest.strip()
    return text
