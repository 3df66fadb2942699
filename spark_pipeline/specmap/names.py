"""How much a datasheet name says about where a section's code is.

Not every capitalised word of a datasheet is a register: ``REGISTER``, ``DEVICE``, the part
number, the bus every section mentions. A name's weight is the product of

* **rarity in the repository**: IDF over the files whose identifiers contain it;
* **shape**: ``PWR_MGMT_1`` or ``I2C_CR1_PE`` (parts joined by ``_``) are register and field
  names; ``USART2`` or ``CR1`` (letters and digits) are instance or register names that many
  peripherals share; a plain word (``SLEEP``, ``MODER``) is weakest, and weaker still when
  the datasheet also uses it as an ordinary lowercase word in its prose (``sleep mode``);
* **specificity to the section**: a name that most sections of the document mention (the
  part number, the bus) says nothing about any one section and weighs nothing; one that a
  third of them mention weighs little;
* **ownership**: a name mentioned in passing ("see LP_WAKE_CTRL in register 108") belongs to
  the section that mentions it most, and weighs less everywhere else, so the power
  management 2 fields do not fill the symbol slots of power management 1.

The datasheet's own part numbers never count (they would route every section to whatever
file names the part).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

from spark_pipeline.specmap.addresses import section_numbers, token
from spark_pipeline.specmap.kinds import PACKAGE
from spark_pipeline.specmap.lexical import NameIndex, datasheet_names
from spark_pipeline.specmap.sections import Section

_PROSE_WORD = re.compile(r"\b[a-z][a-z]{2,}\b")


def section_names(section: Section, rows: dict[str, int] | None = None) -> list[str]:
    """The names a section carries: the SVD's exact names, else those found in its title and
    text, with the numbers of its registers and commands as ``@2D`` names (:mod:`.addresses`:
    its own, those its table lists, and those the document's tables give the names it
    mentions)."""
    if section.names:
        return section.names
    names = datasheet_names(f"{section.title}\n{section.text}")
    own, listed = section_numbers(section)
    numbers = [t for group in own for t in group] + listed
    if rows:
        numbers += [token(rows[n]) for n in names if n in rows]
    return list(dict.fromkeys(names + numbers))


def is_strong(name: str) -> bool:
    """A name that identifies a register, field or peripheral instance by itself (a register
    number ``@2D`` does too)."""
    return "_" in name or name.startswith("@") or any(c.isdigit() for c in name)


def _one_letter_apart(a: str, b: str) -> bool:
    """``b`` is ``a`` with one letter more (``SMPRT_DIV`` / ``SMPLRT_DIV``: datasheets have typos)."""
    if len(b) != len(a) + 1:
        return False
    for i, c in enumerate(b):
        if c.isalpha() and b[:i] + b[i + 1:] == a:
            return True
    return False


def primary_groups(section: Section, names: list[str], lines: int = 3, limit: int = 12,
                   rows: dict[str, int] | None = None) -> list[list[str]]:
    """What a section is about: its own groups when the reader knows them (SVD), else each
    specific name in its title and first ``lines`` lines (datasheets name the register right
    under the heading: ``PWR_MGMT_1``, ``ACCEL_XOUT_H, ACCEL_XOUT_L, ...``), else the plain
    names there (``CONFIG``). Names further down are cross-references to other registers
    ("see FIFO_EN"), not what the section describes; a name one letter longer than a primary
    one joins its group, since datasheets misspell their own headings (``SMPRT_DIV``)."""
    if section.primary:
        return section.primary
    head = "\n".join([section.title] + [ln for ln in section.text.splitlines() if ln.strip()][:lines])
    in_head = [n for n in datasheet_names(head) if n in names and not n.startswith("@")]
    chosen = [n for n in in_head if is_strong(n)] or in_head
    groups = [[n] + [m for m in names if _one_letter_apart(n, m) or _one_letter_apart(m, n)] for n in chosen]
    # ACCEL_XOUT_H / ACCEL_XOUT_L hold the bytes of ACCEL_XOUT: code may name the value instead.
    for group in groups:
        stem = re.sub(r"_?[HL]$", "", group[0]) if re.search(r"[A-Z0-9]_?[HL]$", group[0]) else ""
        if stem and stem != group[0] and "_" in stem:
            group.append(stem)
    # The register's or command's number names it as well as its name does (a driver may
    # write either): a number of the heading joins the group of the name it belongs to.
    own, _listed = section_numbers(section)
    rows = rows or {}
    for numbers in own:
        home = next((g for g in groups if any(token(rows[n]) in numbers for n in g if n in rows)), None)
        if home is not None:
            home.extend(t for t in numbers if t not in home)
        elif len(groups) < limit:
            groups.append(list(numbers))
    for group in groups:
        extra = [token(rows[n]) for n in group if n in rows and token(rows[n]) not in group]
        group.extend(extra)
    return groups[:limit]


@dataclass
class NameWeights:
    """Weights of the names of one document's sections against one repository."""

    index: NameIndex
    section_df: Counter = field(default_factory=Counter)
    n_sections: int = 0
    prose: frozenset[str] = frozenset()
    hints: frozenset[str] = frozenset()
    owner: dict[str, str] = field(default_factory=dict)
    common_share: float = 0.35
    """A name mentioned by at least this share of the sections (of six or more) weighs nothing."""
    borrowed_share: float = 0.35
    """A name another section owns keeps this share of its weight."""

    @classmethod
    def for_document(cls, sections: list[Section], names: dict[str, list[str]], index: NameIndex,
                     hints: set[str] = frozenset(), skip: set[str] = frozenset()) -> NameWeights:
        """Statistics over the document's sections, leaving out ``skip`` (the ids of sections
        no program implements: their pin and characteristics tables mention every bus)."""
        df: Counter = Counter()
        prose: set[str] = set()
        mentions: dict[str, tuple[int, str]] = {}
        sections = [s for s in sections if s.id not in skip]
        for section in sections:
            own = set(names.get(section.id, ()))
            df.update(own)
            prose.update(_PROSE_WORD.findall(section.text))
            if section.names:
                continue  # exact names (SVD): each section lists its own
            upper = f"{section.title}\n{section.text}".upper()
            head = "\n".join(upper.splitlines()[:10])  # the register table under the heading
            for name in own:
                count = upper.count(name) + 3 * head.count(name)
                if count > mentions.get(name, (0, ""))[0]:
                    mentions[name] = (count, section.id)
        return cls(index, df, len(sections), frozenset(prose), frozenset(h.upper() for h in hints),
                   {name: sid for name, (_, sid) in mentions.items()})

    def _is_part_number(self, name: str) -> bool:
        """One of the datasheet's part numbers, or a part number of the same family
        (``STM32F401`` in an STM32F411 datasheet): neither says where a section's code is."""
        flat = name.replace("_", "")
        if PACKAGE.fullmatch(name):
            return True  # LQFP64: the case, not a register
        for hint in self.hints:
            n = min(len(flat), len(hint))
            if n >= 5 and all(a == b or a == "X" or b == "X" for a, b in zip(flat[:n], hint[:n], strict=True)):
                return True
            family = re.match(r"[A-Z]+\d", hint)
            if (family and len(flat) >= 5 and flat.startswith(family.group(0)) and sum(c.isdigit() for c in flat) >= 2
                    and re.fullmatch(r"[A-Z]+\d[A-Z0-9]*", flat)):
                return True
        return False

    def shape(self, name: str) -> float:
        if name.startswith("@"):
            return 1.0  # a register number or opcode
        if "_" in name:
            return 1.0 + 0.5 * min(name.count("_"), 3)
        if any(c.isdigit() for c in name):
            return 0.7
        return 0.1 if name.lower() in self.prose else 0.4

    def specificity(self, name: str) -> float:
        df = self.section_df.get(name, 0)
        if not df or self.n_sections < 2:
            return 1.0
        if self.n_sections >= 6 and df / self.n_sections >= self.common_share:
            return 0.0
        return min(1.0, math.log(1 + self.n_sections / df) / math.log(11))

    def weight(self, name: str) -> float:
        if self._is_part_number(name):
            return 0.0
        idf = self.index.idf(name)
        if idf <= 0:
            return 0.0
        return idf * self.shape(name) * self.specificity(name)

    def primary(self, groups: list[list[str]]) -> list[list[str]]:
        """Primary groups without part numbers, document-wide names (``MPU``) and plain words the
        datasheet also writes in lowercase (``OFF``)."""
        kept = [[n for n in g if n.startswith("@") or (not self._is_part_number(n) and self.specificity(n) > 0
                 and not (n.isalpha() and n.lower() in self.prose))] for g in groups]
        return [g for g in kept if g]

    def weights(self, names: list[str], section_id: str | None = None,
                primary: list[list[str]] = ()) -> dict[str, float]:
        """The names of one section with a weight above zero, heaviest first; names another
        section owns (and that are not this section's primary names) weigh less."""
        own = {n for g in primary for n in g}
        out = {n: self.weight(n) * (self.borrowed_share if section_id is not None and n not in own
                                    and self.owner.get(n, section_id) != section_id else 1.0)
               for n in names}
        return dict(sorted(((n, w) for n, w in out.items() if w > 0), key=lambda kv: (-kv[1], kv[0])))
