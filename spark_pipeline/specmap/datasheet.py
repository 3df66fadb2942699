"""Datasheets to section trees.

Every reader yields :class:`Section` objects in document order: an id (the heading's number
where it has one, ``1.2.3``; a generated one otherwise), a title, a level, the section's own
text, a page range (PDF) and the id of its parent.

* PDF: sections from the document outline (bookmarks) when the PDF has one, otherwise from
  numbered headings found in the text. Pages are read one at a time, so a 150-page
  datasheet never needs more than one page's text in flight beyond the sections themselves.
* Markdown: ``#`` headings; plain text: numbered headings (``4.2 Power management``).
* CMSIS-SVD: one section per peripheral and one per register, with its fields.

Unreadable input raises :class:`DatasheetError`, whose message names the file and the fault.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from spark_pipeline.specmap.pairs import DATASHEET_KINDS


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

    def to_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "level": self.level,
                "page_start": self.page_start, "page_end": self.page_end,
                "parent_id": self.parent_id, "source": self.source, "chars": len(self.text)}


_NUMBERED = re.compile(r"^\s*((?:\d+|[A-Z])(?:\.\d+){0,5})\.?\s+([A-Z][^\n]{1,90}?)\s*$")
_DOT_LEADER = re.compile(r"(\.\s?){4,}\s*\d+\s*$|\s{3,}\d+\s*$")
_WS = re.compile(r"\s+")


def _split_number(title: str) -> tuple[str | None, str]:
    m = re.match(r"^\s*((?:\d+|[A-Z])(?:\.\d+)+|\d+)\.?\s+(.*)$", title)
    if m:
        return m.group(1), m.group(2).strip()
    return None, title.strip()


def _unique(ids: set[str], wanted: str) -> str:
    if wanted not in ids:
        ids.add(wanted)
        return wanted
    n = 2
    while f"{wanted}~{n}" in ids:
        n += 1
    ids.add(f"{wanted}~{n}")
    return f"{wanted}~{n}"


def read_datasheet(path: Path) -> list[Section]:
    """Read any supported datasheet; the type comes from the file extension."""
    path = Path(path)
    kind = DATASHEET_KINDS.get(path.suffix.lower())
    if kind is None:
        raise DatasheetError(f"{path}: unknown datasheet type {path.suffix!r}")
    if not path.is_file():
        raise DatasheetError(f"{path}: file does not exist")
    if kind == "pdf":
        sections = list(read_pdf(path))
    elif kind == "svd":
        sections = read_svd(path)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            text = path.read_text(encoding="latin-1")
        sections = read_markdown(text, path.name) if kind == "markdown" else read_text(text, path.name)
    if not sections or not any(s.text.strip() for s in sections):
        raise DatasheetError(f"{path}: no readable text (scanned images, or an empty document)")
    return sections


# ---------------------------------------------------------------------------------- PDF


def _open_pdf(path: Path):
    import pypdf
    from pypdf.errors import PdfReadError

    try:
        reader = pypdf.PdfReader(str(path), strict=False)
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")
            except Exception as exc:  # noqa: BLE001 - pypdf raises several types here
                raise DatasheetError(f"{path}: PDF is encrypted and cannot be opened ({exc})") from exc
            if not ok:
                raise DatasheetError(f"{path}: PDF is encrypted with a user password; "
                                     "supply a decrypted copy")
        _ = len(reader.pages)
        return reader
    except DatasheetError:
        raise
    except (PdfReadError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasheetError(f"{path}: not a readable PDF ({type(exc).__name__}: {exc})") from exc


def _outline_entries(reader) -> list[tuple[int, str, int]]:
    """(level, title, 0-based page) for every outline entry that points at a page."""
    entries: list[tuple[int, str, int]] = []

    def walk(items, level):
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
                continue
            try:
                page = reader.get_destination_page_number(item)
            except Exception:  # noqa: BLE001 - broken destinations are skipped
                page = None
            title = _WS.sub(" ", str(getattr(item, "title", "") or "")).strip()
            if title and page is not None and page >= 0:
                entries.append((level, title, page))

    try:
        walk(reader.outline, 1)
    except Exception:  # noqa: BLE001 - a damaged outline falls back to headings
        return []
    return entries


def _find_title(page_text: str, title: str, start: int = 0, full_title: str = "") -> int:
    """Where a heading starts in ``page_text`` (whitespace- and case-insensitive), or -1.

    A heading on a line of its own (optionally behind its number) is preferred over the
    same words in running text."""
    def pattern(words: list[str]) -> str:
        return r"\s*".join(re.escape(w) for w in words[:8])

    words = title.split()
    if not words:
        return -1
    tries = []
    if full_title and full_title != title:
        tries.append(r"(?m)^[ \t]*" + pattern(full_title.split()))
    tries += [r"(?m)^[ \t]*(?:[\dA-Z]+(?:\.\d+)*\.?[ \t]+)?" + pattern(words), pattern(words)]
    for regex in tries:
        m = re.compile(regex, re.IGNORECASE).search(page_text, start)
        if m:
            return m.start()
    return -1


def read_pdf(path: Path) -> Iterator[Section]:
    """Stream a PDF's sections, reading one page at a time."""
    reader = _open_pdf(path)
    entries = _outline_entries(reader)
    if entries:
        yield from _pdf_by_outline(reader, entries, path)
    else:
        yield from _pdf_by_headings(reader, path)


def _page_texts(reader, path: Path) -> Iterator[tuple[int, str]]:
    for index, page in enumerate(reader.pages):
        try:
            text = page.extract_text() or ""
        except Exception as exc:  # noqa: BLE001 - one bad page must not lose the rest
            raise DatasheetError(f"{path}: page {index + 1} cannot be read ({exc})") from exc
        yield index, text


def _pdf_by_outline(reader, entries, path: Path) -> Iterator[Section]:
    ids: set[str] = set()
    stack: list[tuple[int, str]] = []
    sections: list[Section] = []
    full_titles: list[str] = []
    for n, (level, title, page) in enumerate(entries):
        number, bare = _split_number(title)
        sid = _unique(ids, number or f"s{n + 1}")
        while stack and stack[-1][0] >= level:
            stack.pop()
        parent = stack[-1][1] if stack else None
        stack.append((level, sid))
        sections.append(Section(sid, bare, level, "", page + 1, page + 1, parent, path.name))
        full_titles.append(title)
    # Outlines are nearly always in page order; sort stably so text is cut in reading order.
    order = sorted(range(len(sections)), key=lambda i: (entries[i][2], i))
    starts: dict[int, list[int]] = {}
    for i in order:
        starts.setdefault(entries[i][2], []).append(i)
    current: int | None = None
    pending: list[str] = []
    for page_index, text in _page_texts(reader, path):
        cursor = 0
        for i in starts.get(page_index, []):
            at = _find_title(text, sections[i].title, cursor, full_titles[i])
            if at < 0:
                at = cursor
            if current is not None:
                if at > cursor:
                    pending.append(text[cursor:at])
                    sections[current].page_end = page_index + 1
                sections[current].text = "".join(pending).strip()
                yield sections[current]  # complete: the next section has begun
            pending = []
            current = i
            cursor = at
        if current is not None:
            pending.append(text[cursor:] + "\n")
            sections[current].page_end = page_index + 1
    if current is not None:
        sections[current].text = "".join(pending).strip()
        yield sections[current]


class _HeadingSections:
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
        sid = _unique(self.ids, wanted_id)
        self.stack.append((level, sid))
        self.current = Section(sid, title, level, "", page, page, parent, self.source)
        return done

    def close(self) -> Section:
        self.current.text = "\n".join(self.lines).strip()
        return self.current


def _pdf_by_headings(reader, path: Path) -> Iterator[Section]:
    build = _HeadingSections(path.name, 1)
    last_number: tuple[int, ...] = ()
    for page_index, text in _page_texts(reader, path):
        for line in text.splitlines():
            heading = _heading(line, last_number)
            if heading is None:
                build.lines.append(line)
                continue
            number, title, last_number = heading
            done = build.start(number, title, number.count(".") + 1, page_index + 1)
            if done:
                yield done
        build.current.page_end = page_index + 1
    yield build.close()


def _number_key(number: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else ord(p) - ord("A") + 1000 for p in number.split("."))


def _heading(line: str, last: tuple[int, ...]) -> tuple[str, str, tuple[int, ...]] | None:
    """A numbered heading that follows the previous one plausibly, else None."""
    if len(line) > 100 or _DOT_LEADER.search(line):
        return None
    m = _NUMBERED.match(line)
    if not m:
        return None
    number, title = m.group(1), m.group(2)
    if title.endswith((".", ",", ";", ":")) or sum(c.isalpha() for c in title) < 3:
        return None
    key = _number_key(number)
    if last and not key > last:
        return None  # numbers run forward; a repeat is a table of contents or a reference
    if key[0] >= 1000 and len(key) == 1:
        return None  # a bare capital letter is rarely a heading
    return number, title, key


# ----------------------------------------------------------------------- Markdown / text


def read_markdown(text: str, source: str = "") -> list[Section]:
    build = _HeadingSections(source)
    sections: list[Section] = []
    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        m = None if in_fence else re.match(r"^(#{1,6})\s+(.+?)\s*#*\s*$", line)
        if not m:
            build.lines.append(line)
            continue
        number, title = _split_number(m.group(2))
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or f"s{len(sections) + 1}"
        done = build.start(number or slug, title, len(m.group(1)))
        if done:
            sections.append(done)
    sections.append(build.close())
    return sections


def read_text(text: str, source: str = "") -> list[Section]:
    build = _HeadingSections(source)
    sections: list[Section] = []
    last: tuple[int, ...] = ()
    for line in text.splitlines():
        heading = _heading(line, last)
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
    for periph in peripherals:
        name = _t(periph, "name")
        derived = periph.get("derivedFrom")
        base = by_name.get(derived) if derived else None
        desc = _t(periph, "description") or (base is not None and _t(base, "description")) or ""
        group = _t(periph, "groupName") or (base is not None and _t(base, "groupName")) or ""
        registers = (base if base is not None and periph.find("registers") is None else periph).findall(
            "./registers/register")
        reg_names = [_t(r, "name") for r in registers]
        text = (f"Peripheral {name}" + (f" ({group})" if group else "") + f": {desc}\n"
                f"Base address {_t(periph, 'baseAddress')}.\n"
                + (f"Same register layout as {derived}.\n" if derived else "")
                + ("Registers: " + ", ".join(reg_names) + "." if reg_names else ""))
        names = [name] + ([group] if group and group != name else [])
        psid = _unique(ids, name)
        sections.append(Section(psid, f"{name}: {desc}"[:120], 1, text, None, None, None, path.name,
                                names + reg_names))
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
            rsid = _unique(ids, f"{name}.{rname}")
            sections.append(Section(rsid, f"{name}_{rname}: {_t(reg, 'description')}"[:120], 2, rtext.strip(),
                                    None, None, psid, path.name,
                                    [f"{name}_{rname}"] + [f"{o}_{rname}" for o in others]
                                    + [rname] + field_names))
    return sections
