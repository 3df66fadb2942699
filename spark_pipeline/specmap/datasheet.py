"""Datasheets to section trees.

Every reader yields :class:`Section` objects in document order: an id (the heading's number
where it has one, ``1.2.3``; a generated one otherwise), a title, a level, the section's own
text, a page range (PDF) and the id of its parent.

* PDF (:mod:`.pdf`): sections from the document outline (bookmarks), cut where each bookmark
  points on its page, or, without an outline, from numbered headings told from table rows by
  their layout. Running headers and footers are dropped.
* Markdown: ``#`` headings; plain text: numbered headings (``4.2 Power management``).
* CMSIS-SVD: one section per peripheral and one per register, with its fields.

Unreadable input raises :class:`DatasheetError`, whose message names the file and the fault.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from spark_pipeline.specmap.pairs import DATASHEET_KINDS
from spark_pipeline.specmap.pdf import read_pdf
from spark_pipeline.specmap.sections import (  # noqa: F401 - Section and DatasheetError are re-exported
    DatasheetError,
    HeadingSections,
    Section,
    plausible_heading,
    sectioning_warnings,
    split_number,
    unique_id,
)

_WS = re.compile(r"\s+")


#: Text and Markdown datasheets over this size are refused unread (a 100 MB one-line file
#: took 2 GB of memory); PDFs are read page by page and SVDs are XML.
MAX_TEXT_BYTES = 16 * 1024 * 1024
#: A section's text is cut to this many characters, with a warning (no datasheet section is
#: longer; a longer one is a file without headings).
MAX_SECTION_CHARS = 200_000


def read_datasheet(path: Path) -> list[Section]:
    """Read any supported datasheet; the type comes from the file extension."""
    path = Path(path)
    kind = DATASHEET_KINDS.get(path.suffix.lower())
    if kind is None:
        raise DatasheetError(f"{path}: unknown datasheet type {path.suffix!r}")
    if not path.is_file():
        raise DatasheetError(f"{path}: file does not exist")
    size = path.stat().st_size
    if kind in ("markdown", "text") and size > MAX_TEXT_BYTES:
        raise DatasheetError(f"{path}: {size:,} bytes, over the {MAX_TEXT_BYTES:,}-byte limit for a text "
                             "datasheet; split it into smaller documents")
    if kind == "pdf":
        sections = read_pdf(path)
    elif kind == "svd":
        sections = read_svd(path)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            text = path.read_text(encoding="latin-1")
        sections = read_markdown(text, path.name) if kind == "markdown" else read_text(text, path.name)
    if not sections or not any(s.text.strip() for s in sections):
        what = "scanned images, or an empty document" if kind == "pdf" else "an empty document"
        raise DatasheetError(f"{path}: no readable text ({what})")
    for section in sections:
        if len(section.text) > MAX_SECTION_CHARS:
            section.cut = len(section.text)
            section.text = section.text[:MAX_SECTION_CHARS]
    return sections


# ----------------------------------------------------------------------- Markdown / text


def read_markdown(text: str, source: str = "") -> list[Section]:
    build = HeadingSections(source)
    sections: list[Section] = []
    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        m = None if in_fence else re.match(r"^(#{1,6})\s+(.+?)\s*#*\s*$", line)
        if not m:
            build.lines.append(line)
            continue
        number, title = split_number(m.group(2))
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or f"s{len(sections) + 1}"
        done = build.start(number or slug, title, len(m.group(1)))
        if done:
            sections.append(done)
    sections.append(build.close())
    return sections


def read_text(text: str, source: str = "") -> list[Section]:
    build = HeadingSections(source)
    sections: list[Section] = []
    last: tuple[int, ...] = ()
    for line in text.splitlines():
        heading = plausible_heading(line, last)
        if heading is None:
            build.lines.append(line)
            continue
        number, title, last = heading
        done = build.start(number, title, number.count(".") + 1)
        if done:
            sections.append(done)
    sections.append(build.close())
    return sections


# ------------------------------------------------------------------------------ SVD


def _t(elem, tag: str, default: str = "") -> str:
    child = elem.find(tag)
    return _WS.sub(" ", child.text).strip() if child is not None and child.text else default


def read_svd(path: Path) -> list[Section]:
    """CMSIS-SVD: a section per peripheral, a child section per register with its fields."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DatasheetError(f"{path}: not well-formed SVD XML ({exc})") from exc
    if root.tag != "device":
        raise DatasheetError(f"{path}: not a CMSIS-SVD file (root element <{root.tag}>, expected <device>)")
    peripherals = root.findall("./peripherals/peripheral")
    by_name = {_t(p, "name"): p for p in peripherals}
    instances: dict[str, list[str]] = {}  # base peripheral -> peripherals derived from it
    for p in peripherals:
        if p.get("derivedFrom") and p.find("registers") is None:
            instances.setdefault(p.get("derivedFrom"), []).append(_t(p, "name"))
    sections: list[Section] = []
    ids: set[str] = set()
    cpu = root.find("cpu")
    device = f"Device {_t(root, 'name')}" + (f", CPU {_t(cpu, 'name')}" if cpu is not None else "") + ".\n"
    for periph in peripherals:
        name = _t(periph, "name")
        derived = periph.get("derivedFrom")
        base = by_name.get(derived) if derived else None
        desc = _t(periph, "description") or (base is not None and _t(base, "description")) or ""
        group = _t(periph, "groupName") or (base is not None and _t(base, "groupName")) or ""
        registers = (base if base is not None and periph.find("registers") is None else periph).findall(
            "./registers/register")
        reg_names = [_t(r, "name") for r in registers]
        text = ((device if not sections else "") + f"Peripheral {name}" + (f" ({group})" if group else "")
                + f": {desc}\n"
                f"Base address {_t(periph, 'baseAddress')}.\n"
                + (f"Same register layout as {derived}.\n" if derived else "")
                + ("Registers: " + ", ".join(reg_names) + "." if reg_names else ""))
        names = [name] + ([group] if group and group != name else [])
        psid = unique_id(ids, name)
        sections.append(Section(psid, f"{name}: {desc}"[:120], 1, text, None, None, None, path.name,
                                names + reg_names, [names]))
        if derived:
            continue  # the base peripheral's register sections already describe the layout
        others = instances.get(name, [])
        for reg in registers:
            rname = _t(reg, "name")
            fields = reg.findall("./fields/field")
            field_lines = []
            field_names = []
            for f in fields:
                fname = _t(f, "name")
                field_names.append(fname)
                offset = _t(f, "bitOffset")
                width = _t(f, "bitWidth")
                if offset.isdigit() and width.isdigit():
                    lo, hi = int(offset), int(offset) + int(width) - 1
                    bits = f"bit {lo}" if hi == lo else f"bits [{hi}:{lo}]"
                else:
                    bits = _t(f, "bitRange") or _t(f, "lsb")
                field_lines.append(f"- {fname} {bits}: {_t(f, 'description')}")
            rtext = (f"Register {name}_{rname} ({_t(reg, 'displayName') or rname}) at offset "
                     f"{_t(reg, 'addressOffset')}, reset value {_t(reg, 'resetValue') or 'n/a'}, "
                     f"access {_t(reg, 'access') or 'n/a'}.\n{_t(reg, 'description')}\n"
                     + (f"Also in {', '.join(others)}.\n" if others else "")
                     + ("Fields:\n" + "\n".join(field_lines) if field_lines else ""))
            rsid = unique_id(ids, f"{name}.{rname}")
            register = [f"{name}_{rname}"] + [f"{o}_{rname}" for o in others]
            qualified = [f"{group}_{rname}"] if group and group != name else []
            # How vendor headers spell fields: I2C_CR1_PE (group, register, field).
            field_macros = [f"{group or name}_{rname}_{f}" for f in field_names]
            sections.append(Section(rsid, f"{name}_{rname}: {_t(reg, 'description')}"[:120], 2, rtext.strip(),
                                    None, None, psid, path.name,
                                    register + qualified + [rname] + field_macros + field_names,
                                    [register + qualified]))
    return sections
