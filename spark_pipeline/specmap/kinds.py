"""Sections that no program implements.

Datasheets carry chapters about the silicon, the board and the paper, not the registers:
electrical characteristics and performance curves, packages and pins, application circuits
and layout advice, ordering codes, revision history, front matter (features, description,
contents, the vendor's links). Code never implements them, yet their tables are full of names
that code also uses (``VDD``, ``I2C``, pin names), so a matcher happily maps drivers under them.
SpecMap recognises them, gives them the status ``not_applicable`` and maps no code:

* **by title**, against the chapter names of the common datasheet templates (TI, ADI, Maxim,
  Microchip, ST, NXP, Nordic, Semtech, Bosch, ...);
* **by the title of a section they sit in** (a table inside "Electrical characteristics"),
  when the nesting comes from the document (numbers, the outline), not from heading styles;
* **by content** (:func:`content_kind`), for what titles do not say: tables of min/typ/max
  figures with units, performance curves ("... vs. Temperature"), package drawings in
  millimetres, soldering profiles, ordering codes, application circuits and layout advice
  (capacitors, resistors, traces), tables keyed by package names;
* a heading with no text of its own whose subsections are all of one kind is of that kind.

Pins: a peripheral chip's pins are wired, not programmed, so its pin descriptions are
``package``; a microcontroller's are programmed (alternate functions), so for a datasheet
with a CPU core (:class:`~.devices.DeviceHints`) pin sections stay implementable.
"""

from __future__ import annotations

import re

from spark_pipeline.specmap.sections import Section

#: kind -> title patterns (lowercase, matched anywhere in the title).
KIND_PATTERNS: dict[str, tuple[str, ...]] = {
    "electrical": (
        r"electrical characteristic", r"absolute maximum", r"maximum ratings", r"operating condition",
        r"current consumption", r"power consumption", r"supply current", r"\bdc characteristic",
        r"\bac characteristic", r"\bemc\b", r"\besd\b", r"electrostatic", r"latch-?up", r"thermal characteristic",
        r"electrical sensitivit", r"timing characteristic", r"electrical specification", r"^specifications?$",
        r"^\w+ specifications$", r"typical (?:operating|performance) (?:characteristic|curve)", r"performance curves",
        r"typical characteristics", r"timing requirements?", r"^timing diagrams?$", r"parameter measurement",
        r"(?:noise|offset|dynamic|thermal) performance", r"operating range", r"recommended operating",
        r"(?:spi|i2c|i²c|bus|interface|serial) timing", r"switching characteristic", r"thermal information",
        r"thermal resistance", r"thermal response", r"handling (?:information|precaution)",
        r"power[- ](?:up |down )?sequenc", r"power[- ]supply schemes?", r"\baccuracy$",
    ),
    "package": (
        r"package information", r"package (?:outline|dimension|drawing|mechanical|types?|view|marking)",
        r"mechanical data", r"mechanical (?:dimension|drawing|specification)", r"\bdimensions?\b",
        r"device marking", r"\bmarking\b", r"footprint", r"land pattern", r"soldering", r"reflow", r"tape and reel",
        r"pcb design rules", r"packaging", r"outline dimensions", r"die pad", r"pad (?:floor plan|layout)",
        r"package thermal", r"\bpackages?$", r"exposed (?:thermal )?pad", r"storage (?:condition|temperature)",
        r"moisture sensitiv", r"material (?:content|declaration)",
    ),
    "pins": (
        r"pin (?:configuration|description|assignment|arrangement|information|definition|function|diagram|out)",
        r"\bpinouts?\b", r"terminal (?:description|configuration|function)", r"(?:ground|power|supply) pins?\b",
    ),
    "application": (
        r"typical applications? circuit", r"typical operating circuit", r"application (?:information|circuit|"
        r"schematic|design|example|and implementation|hints|diagram)", r"applications information",
        r"^typical applications?$", r"\blayout\b", r"power[- ]supply (?:recommendation|decoupling|bypass|"
        r"consideration|configuration)", r"\bbypass(?:ing)?\b", r"\bdecoupling\b", r"design (?:requirements|procedure|"
        r"recommendation|consideration|guideline)", r"mechanical considerations", r"power (?:considerations|dissipation)",
        r"thermal considerations", r"reference design", r"peripheral rf information",
    ),
    "ordering": (r"ordering information", r"ordering code", r"part numbering", r"order(?:ing)? part number",
                 r"product identification", r"ordering guide", r"device summary"),
    "history": (r"revision history", r"document history", r"change (?:log|history)", r"document revision",
                r"^\d{1,2}/\d{2}\s*[—–-]\s*rev", r"^rev(?:ision)?\.? [\w.]+ to rev"),
    "front": (r"^contents$", r"table of contents", r"list of (?:tables|figures)", r"important notice",
              r"disclaimer", r"trademark", r"legal information", r"^(?:key )?features$", r"benefits and features",
              r"^(?:general |product )?description$", r"^(?:functional )?block diagram", r"system diagram",
              r"^applications$", r"glossary", r"abbreviations", r"documentation support", r"related (?:documentation|links)",
              r"community resources", r"technical support", r"product page", r"evaluation kits?", r"application notes",
              r"white papers", r"sample and buy", r"design resources", r"^discussions$", r"^press$", r"user guides",
              r"tools and simulations", r"software and systems requirements", r"comparable parts", r"^data ?sheet$",
              r"^documentation$", r"^informational$", r"notification of documentation", r"purpose and scope",
              r"^introduction$", r"^notice$", r"^precautions?\b", r"sales and service", r"contact information",
              r"^(?:support|resources)$", r"^references?$", r"^definitions?$"),
}
#: Kinds that apply to a microcontroller's datasheet too (its pins are programmed).
MCU_EXEMPT = frozenset({"pins"})
_COMPILED = {kind: re.compile("|".join(patterns)) for kind, patterns in KIND_PATTERNS.items()}

#: Package names (LQFP64, UFQFPN48, WLCSP49, QFN24, ...): about the silicon's case, never a register.
PACKAGE = re.compile(r"\b(?:LQFP|TQFP|UFQFPN|VFQFPN|QFN|DFN|WLCSP|UFBGA|TFBGA|LFBGA|FBGA|BGA|QFP|SOIC|"
                     r"SSOP|TSSOP|MSOP|SOP|LGA|CSP|PDIP|DIP|SOT)-?\d+[A-Z]*\b")
_BOARD = re.compile(r"\bpcb\b|board design|footprint|pin-to-pin|pinout compatib|drop-in", re.IGNORECASE)


UNIT = re.compile(r"(?<![A-Za-z])[-+±]?\d+(?:\.\d+)?\s?(?:mV|µV|uV|V|mA|µA|uA|nA|A|mW|µW|W|°C|ºC|K/W|ns|µs|us|ms|"
                   r"MHz|kHz|Hz|pF|nF|µF|uF|kΩ|MΩ|Ω|ohms?|dB|dBm|ppm|mm|%)(?![A-Za-z])")
_MINMAX = re.compile(r"\b(?:min|typ|max)(?:imum|ical)?\b\.?", re.IGNORECASE)
_CURVE = re.compile(r"\bvs\.?\s|\bversus\b", re.IGNORECASE)
BOARD_WORDS = re.compile(r"\b(?:capacitors?|resistors?|inductors?|ferrite|bypass|decoupling|traces?|ground plane|"
                          r"layout|pcb|schematic|bead|antenna|crystal load|placed close)\b", re.IGNORECASE)
_SOLDER = re.compile(r"\b(?:reflow|preheat|soak|peak temperature|ramp[- ]up|liquidus)\b", re.IGNORECASE)
_ORDER = re.compile(r"\b(?:tape and reel|tape & reel|\breel\b|\btray\b|\btube\b|ordering|orderable|part number)\b",
                    re.IGNORECASE)
_MM = re.compile(r"\b\d+(?:\.\d+)?\s?mm\b|\bmillimet", re.IGNORECASE)
_NAME = re.compile(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b|0x[0-9A-Fa-f]+|\b[0-9A-F]{2}h\b")


#: A title that names a register or a command (``Register 55 – INT Pin / Bypass Enable``,
#: ``Set Contrast (81h)``, ``PWR_MGMT_1``) is about code, whatever else its words say.
_REGISTER_TITLE = re.compile(r"\bregisters?\b|\bcommands?\b|\bopcode|0x[0-9a-f]+|\b[0-9a-f]{2}h\b|"
                             r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b", re.IGNORECASE)


def content_kind(section: Section) -> str | None:
    """A non-implementable kind told by what a section holds (thresholds: docs/specmap.md):

    * ``electrical``: a min/typ/max table (the words and a third of its lines carrying a value
      with a unit), or performance curves (two or more "... vs. ..." captions) with values;
    * ``package``: a table keyed by package names, text about board design for packages,
      a drawing in millimetres (a third of its lines), a soldering profile;
    * ``ordering``: part numbers with reels and trays;
    * ``application``: circuit and layout advice (capacitors, resistors, traces, decoupling:
      three different such words, one per 60 words) without register names or numbers.
    """
    text = section.text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or _NAME.search("\n".join(lines[:4])):
        return None  # the section opens with a register name or number: it is about one
    n = len(lines)
    units = sum(1 for ln in lines if UNIT.search(ln))
    names = len(_NAME.findall(text))
    header = any(len({w.lower()[:3] for w in _MINMAX.findall(ln)}) >= 2 for ln in lines)
    if n >= 6 and header and units >= 0.3 * n and names <= 0.1 * n:
        return "electrical"
    if len(_CURVE.findall(text)) >= 2 and units >= 0.2 * n and names <= 0.05 * n:
        return "electrical"
    keyed = sum(1 for line in lines if PACKAGE.match(line.strip()))
    if keyed >= 3:
        return "package"
    if PACKAGE.search(text) and _BOARD.search(text):
        return "package"
    if n >= 6 and sum(1 for ln in lines if _MM.search(ln)) >= 0.3 * n:
        return "package"
    if len(set(m.lower() for m in _SOLDER.findall(text))) >= 2:
        return "package"
    if len(_ORDER.findall(text)) >= 2 and keyed >= 1:
        return "ordering"
    words = len(text.split())
    board = BOARD_WORDS.findall(text)
    if words >= 30 and len({b.lower() for b in board}) >= 3 and len(board) * 60 >= words and names == 0:
        return "application"
    return None


def title_kind(title: str, mcu: bool = False) -> str | None:
    """The non-implementable kind a title names, if any (for a microcontroller's datasheet,
    not its pins)."""
    if _REGISTER_TITLE.search(title):
        return None
    low = title.lower().strip()
    low = re.sub(r"^(?:\d+(?:\.\d+)*|[a-z](?:\.\d+)*)\.?\s+", "", low)  # "7.4 Thermal ..." -> "thermal ..."
    for kind, pattern in _COMPILED.items():
        if mcu and kind in MCU_EXEMPT:
            continue
        if pattern.search(low):
            return "package" if kind == "pins" else kind
    return None


def section_kinds(sections: list[Section], mcu: bool = False) -> dict[str, str]:
    """Section id -> non-implementable kind, for the sections that have one: by their own
    title or content, else by the nearest enclosing section that has one (a table inside
    "Electrical characteristics" is electrical too). ``mcu``: the datasheet is a
    microcontroller's (its pin sections are programmed)."""
    by_id = {s.id: s for s in sections}
    kinds: dict[str, str] = {}
    for section in sections:
        if section.id == "front" and section.title == "Front matter":
            kinds[section.id] = "front"  # the text before the first heading: the title page
            continue
        kind = title_kind(section.title, mcu) or (None if section.names else content_kind(section))
        parent = section.parent_id if _trusted_nesting(section) else None
        seen = set()
        while kind is None and parent and parent in by_id and parent not in seen:
            seen.add(parent)
            kind = kinds.get(parent) or title_kind(by_id[parent].title, mcu)
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


_NUMBER_ID = re.compile(r"^(?:\d+|[A-Z])(?:\.\d+)*(?:~\d+)?$|^s\d+(?:~\d+)?$|^[A-Z]+\d*\.\w+$")


def _trusted_nesting(section: Section) -> bool:
    """A section's parent is known from the document (its number, its outline entry, an SVD
    register under its peripheral), not guessed from heading styles: only then does it
    inherit its parent's kind (an unnumbered document's first bold heading, "Data Sheet", is
    not the parent of everything after it)."""
    return bool(_NUMBER_ID.match(section.id)) or bool(section.names)


def _headline_only(section: Section) -> bool:
    body = section.text.strip()
    if body.lower().startswith(section.title.lower()[:20]):
        body = body.split("\n", 1)[1] if "\n" in body else ""
    return len(body.strip()) < 40
