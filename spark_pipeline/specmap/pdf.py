"""PDF datasheets to sections, by layout.

Each page's text is read once (pypdf, one page at a time) together with the layout of
every line: where it sits on the page, its font size and how much of it is bold. That
layout decides three things that the words alone cannot:

* **Running headers and footers** (document number, page "12 of 46", chapter name in the
  top margin) repeat at the same height on many pages; they are dropped.
* **Outline sections are cut where their bookmark points**, not at page boundaries: a
  bookmark's destination carries the height on its page, so when three sections start on
  one page each gets the lines below its own destination (a title search is the fallback
  for destinations without a height).
* **Numbered headings without an outline** are told from table rows and list items by how
  they are set: a heading is at least as large as the body text and bold, or larger than
  it; register-table rows such as ``5 ACCEL_XOUT_L[0]`` are set small and are text. A table
  of contents, when the document has one, confirms headings it lists.

Text that cannot be read is dropped: glyphs of composite fonts without a Unicode map
(figure labels in vendor PDFs come out as ``9''`` or control characters).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from spark_pipeline.specmap.sections import (
    DOT_LEADER,
    DatasheetError,
    HeadingSections,
    Section,
    number_key,
    numbered_line,
    plausible_heading,
    split_number,
    unique_id,
)

_BOLD_NAME = re.compile(r"bold|black|heavy|semibold|demi", re.IGNORECASE)
_WS = re.compile(r"\s+")
_DIGITS = re.compile(r"\d+")
_TOC_ENTRY = re.compile(r"(\.\s?){4,}\s*\d+\s*$")  # "4.2 Register 25 ........ 11"


@dataclass
class Line:
    """One line of a page's text with its layout."""

    page: int                 # 0-based
    text: str
    y: float | None = None    # baseline in PDF user space (larger is higher on the page)
    x: float | None = None
    size: float = 0.0         # font size in points, the most common over the line's letters
    bold: float = 0.0         # share of the line's letters set in a bold face
    height: float = 0.0       # the page's height


class _Fonts:
    """Per font dictionary: bold or not (by name, weight or the ForceBold flag), and whether
    its text can be read at all."""

    def __init__(self):
        self._cache: dict[int, bool] = {}
        self._unmapped: dict[int, bool] = {}

    def unmapped(self, font) -> bool:
        """A composite font with an Identity encoding and no ToUnicode map: its "text" is glyph
        numbers (vendor figures come out as ``9''`` or ``),)2``), not characters."""
        if not font:
            return False
        key = id(font)
        if key not in self._unmapped:
            try:
                self._unmapped[key] = (str(font.get("/Subtype", "")) == "/Type0"
                                       and "Identity" in str(font.get("/Encoding", ""))
                                       and "/ToUnicode" not in font)
            except Exception:  # noqa: BLE001 - a malformed font dictionary is read as usual
                self._unmapped[key] = False
        return self._unmapped[key]

    def bold(self, font) -> bool:
        if not font:
            return False
        key = id(font)
        if key not in self._cache:
            self._cache[key] = self._is_bold(font)
        return self._cache[key]

    @staticmethod
    def _is_bold(font) -> bool:
        try:
            if _BOLD_NAME.search(str(font.get("/BaseFont", ""))):
                return True
            descriptor = font.get("/FontDescriptor")
            if descriptor is None and font.get("/DescendantFonts"):
                descendant = font["/DescendantFonts"].get_object()[0].get_object()
                if _BOLD_NAME.search(str(descendant.get("/BaseFont", ""))):
                    return True
                descriptor = descendant.get("/FontDescriptor")
            if descriptor is None:
                return False
            descriptor = descriptor.get_object()
            weight = descriptor.get("/FontWeight")
            if weight is not None and float(weight) >= 600:
                return True
            return bool(int(descriptor.get("/Flags", 0)) & (1 << 18))  # ForceBold
        except Exception:  # noqa: BLE001 - a malformed font dictionary is simply not bold
            return False


def _control_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(1 for c in chars if ord(c) < 32 or 0xE000 <= ord(c) <= 0xF8FF) / len(chars)


def page_lines(page, index: int, fonts: _Fonts | None = None) -> list[Line]:
    """The lines of one page as pypdf extracts them, each with its layout."""
    fonts = fonts or _Fonts()
    pieces: list[tuple[str, float, float, float, bool]] = []

    def visit(text, cm, tm, font, size):
        if not text:
            return
        if fonts.unmapped(font):
            text = "\n" * text.count("\n")  # keep the line breaks, drop the glyph numbers
        scale = math.hypot(tm[2], tm[3]) * math.hypot(cm[2], cm[3]) or 1.0
        x = tm[4] * cm[0] + tm[5] * cm[2] + cm[4]
        y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
        pieces.append((text, x, y, abs(size) * scale, fonts.bold(font)))

    page.extract_text(visitor_text=visit)
    try:
        height = float(page.mediabox.height)
    except Exception:  # noqa: BLE001
        height = 0.0
    lines: list[Line] = []
    parts: list[str] = []
    sizes: Counter = Counter()
    letters = bold_letters = 0
    where: tuple[float, float] | None = None

    def finish():
        nonlocal parts, sizes, letters, bold_letters, where
        text = "".join(parts)
        if text.strip() and _control_share(text) <= 0.1:
            size = sizes.most_common(1)[0][0] if sizes else 0.0
            lines.append(Line(index, text, where[1] if where else None, where[0] if where else None,
                              size, bold_letters / letters if letters else 0.0, height))
        parts, sizes, letters, bold_letters, where = [], Counter(), 0, 0, None

    for text, x, y, size, bold in pieces:
        segments = text.split("\n")
        for n, segment in enumerate(segments):
            if n:
                finish()
            if not segment:
                continue
            parts.append(segment)
            count = sum(c.isalnum() for c in segment)
            if count:
                sizes[round(size * 2) / 2] += count
                letters += count
                bold_letters += count if bold else 0
                if where is None:
                    where = (x, y)
    finish()
    return lines


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


def read_lines(reader, path: Path) -> Iterator[list[Line]]:
    """Each page's lines, one page at a time."""
    fonts = _Fonts()
    for index, page in enumerate(reader.pages):
        try:
            yield page_lines(page, index, fonts)
        except DatasheetError:
            raise
        except Exception as exc:  # noqa: BLE001 - name the page rather than fail obscurely
            raise DatasheetError(f"{path}: page {index + 1} cannot be read ({type(exc).__name__}: {exc})") from exc


def drop_furniture(pages: list[list[Line]], margin: float = 0.15, min_pages: int = 3,
                   numbered_share: float = 0.3) -> int:
    """Remove running headers and footers in place: lines in the top or bottom ``margin`` of
    the page that repeat at the same height, word for word on ``min_pages`` pages or more, or
    with only their numbers changing (page numbers, "12 of 46") on ``numbered_share`` of the
    pages. (Headings such as "4.8 Registers 37 to 39" also differ only by numbers, but sit at
    the top of a few pages, not of a third of them.) Returns how many lines were dropped."""
    def exact(line: Line) -> str:
        return _WS.sub(" ", line.text.strip().lower())

    def loose(line: Line) -> str:
        return _DIGITS.sub("#", exact(line))

    def in_margin(line: Line) -> bool:
        if line.y is None or not line.height:
            return False
        return line.y >= line.height * (1 - margin) or line.y <= line.height * margin

    seen: dict[tuple[int, str], list[tuple[int, float]]] = defaultdict(list)
    for lines in pages:
        for line in lines:
            if in_margin(line):
                seen[(0, exact(line))].append((line.page, line.y))
                seen[(1, loose(line))].append((line.page, line.y))
    loose_pages = max(min_pages, math.ceil(numbered_share * len(pages)))

    def pages_at(key, y: float) -> int:
        return len({p for p, yy in seen.get(key, ()) if abs(yy - y) <= 3.0})

    def furniture(line: Line) -> bool:
        return in_margin(line) and (pages_at((0, exact(line)), line.y) >= min_pages
                                    or pages_at((1, loose(line)), line.y) >= loose_pages)

    dropped = 0
    for lines in pages:
        kept = [line for line in lines if not furniture(line)]
        dropped += len(lines) - len(kept)
        lines[:] = kept
    return dropped


def body_size(pages: list[list[Line]]) -> float:
    """The font size most of the document's letters are set in."""
    sizes: Counter = Counter()
    for lines in pages:
        for line in lines:
            sizes[line.size] += sum(c.isalnum() for c in line.text)
    return sizes.most_common(1)[0][0] if sizes else 0.0


def read_pdf(path: Path) -> list[Section]:
    """A PDF's sections: from the outline (bookmarks) when it has one, else from headings."""
    reader = _open_pdf(path)
    entries = _outline_entries(reader)
    pages = list(read_lines(reader, path))
    drop_furniture(pages)
    toc = _contents(pages)
    for lines in pages:  # contents entries say where things are, not what they are
        lines[:] = [line for line in lines if not _TOC_ENTRY.search(line.text)]
    if entries:
        return _by_outline(entries, pages, path)
    return _by_headings(pages, toc, path)


# ------------------------------------------------------------------------------ outline


def _outline_entries(reader) -> list[tuple[int, str, int, float | None]]:
    """(level, title, 0-based page, height on the page or None) for every outline entry
    that points at a page."""
    entries: list[tuple[int, str, int, float | None]] = []

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
            top = None
            try:
                raw = item.get("/Top")
                if raw is not None and not isinstance(raw, type(None)):
                    top = float(raw)
            except (TypeError, ValueError):
                top = None
            if title and page is not None and page >= 0:
                entries.append((level, title, page, top))

    try:
        walk(reader.outline, 1)
    except Exception:  # noqa: BLE001 - a damaged outline falls back to headings
        return []
    return entries


def _title_pattern(title: str) -> re.Pattern:
    words = title.split()[:8]
    return re.compile(r"^\s*(?:[\dA-Z]+(?:\.\d+)*\.?\s+)?" + r"\s*".join(re.escape(w) for w in words),
                      re.IGNORECASE)


def _find_heading_y(lines: list[Line], title: str, full_title: str) -> float | None:
    """The height of the line that starts with a section's title (for destinations that
    carry no height)."""
    for candidate in (full_title, title):
        if not candidate.split():
            continue
        pattern = _title_pattern(candidate)
        for line in lines:
            if line.y is not None and pattern.match(line.text):
                return line.y + 0.3 * max(line.size, 1.0)
    return None


def _by_outline(entries, pages: list[list[Line]], path: Path) -> list[Section]:
    ids: set[str] = set()
    stack: list[tuple[int, str]] = []
    sections: list[Section] = []
    for n, (level, title, page, _top) in enumerate(entries):
        number, bare = split_number(title)
        sid = unique_id(ids, number or f"s{n + 1}")
        while stack and stack[-1][0] >= level:
            stack.pop()
        parent = stack[-1][1] if stack else None
        stack.append((level, sid))
        sections.append(Section(sid, bare, level, "", page + 1, None, parent, path.name))

    starts: dict[int, list[int]] = defaultdict(list)
    for i, (_level, _title, page, _top) in enumerate(entries):
        if page < len(pages):
            starts[page].append(i)
    texts: dict[int | None, list[str]] = defaultdict(list)  # None: before the first bookmark
    tops: dict[int, float] = {}
    owner: int | None = None
    for page_index, lines in enumerate(pages):
        here = starts.get(page_index, [])
        for i in here:
            top = entries[i][3]
            if top is None:
                top = _find_heading_y(lines, sections[i].title, entries[i][1])
            tops[i] = top if top is not None else math.inf
        # Highest destination first; a line belongs to the lowest destination at or above it.
        ordered = sorted(here, key=lambda i: (-tops[i], i))
        carried = owner
        for line in lines:
            if line.y is None:
                target = owner
            else:
                target = carried
                for i in ordered:
                    if line.y <= tops[i] + 0.3 * max(line.size, 1.0):
                        target = i
                    else:
                        break
                owner = target if target is not None else owner
            texts[target].append(line.text)
            if target is not None:
                sections[target].page_end = page_index + 1
        if ordered:
            owner = ordered[-1]
    for i, section in enumerate(sections):
        section.text = "\n".join(texts.get(i, [])).strip()
        if section.page_end is None:
            section.page_end = section.page_start
    order = sorted(range(len(sections)), key=lambda i: (entries[i][2], -tops.get(i, math.inf), i))
    result = [sections[i] for i in order]
    front = "\n".join(texts.get(None, [])).strip()
    if front:
        result.insert(0, Section(unique_id(ids, "front"), "Front matter", 1, front, 1,
                                 entries[order[0]][2] + 1 if order else 1, None, path.name))
    return result


# ----------------------------------------------------------------------------- headings


def _contents(pages: list[list[Line]]) -> dict[str, str]:
    """Number -> title of the entries of a table of contents (lines ending in a dot leader
    and a page number)."""
    toc: dict[str, str] = {}
    for lines in pages:
        for line in lines:
            if not DOT_LEADER.search(line.text):
                continue
            text = DOT_LEADER.sub("", line.text).strip()
            number, title = split_number(text)
            if number and title:
                toc.setdefault(number, title)
    return toc if len(toc) >= 3 else {}


def _same_title(a: str, b: str) -> bool:
    wa = re.findall(r"[a-z0-9]+", a.lower())
    wb = re.findall(r"[a-z0-9]+", b.lower())
    n = min(len(wa), len(wb), 3)
    return n > 0 and wa[:n] == wb[:n]


def _by_headings(pages: list[list[Line]], toc: dict[str, str], path: Path) -> list[Section]:
    body = body_size(pages)
    toc_depth = max((n.count(".") + 1 for n in toc), default=0)  # deeper headings are rarely listed

    def set_as_heading(line: Line) -> bool:
        return line.size >= body - 0.5 and (line.bold >= 0.6 or line.size >= body + 1.5)

    # Layout decides only when some numbered line is set apart; a document in one plain font
    # falls back to the text rule (numbers run forward).
    has_layout = any(line.y is not None and numbered_line(line.text) and set_as_heading(line)
                     for lines in pages for line in lines)
    build = HeadingSections(path.name, 1)
    sections: list[Section] = []
    last: tuple[int, ...] = ()
    for page_index, lines in enumerate(pages):
        for line in lines:
            heading = None
            if not has_layout:
                found = plausible_heading(line.text, last)
                heading = found[:2] if found else None
            else:
                found = numbered_line(line.text)
                if found is not None:
                    number, title = found
                    key = number_key(number)
                    listed = number in toc and _same_title(toc[number], title)
                    if listed and line.size >= body - 1.0:
                        heading = found
                    elif (set_as_heading(line) and (not last or key > last)
                          and (not toc or number in toc or len(key) > toc_depth)):
                        heading = found
            if heading is None:
                build.lines.append(line.text)
                continue
            number, title = heading
            last = number_key(number)
            done = build.start(number, title, number.count(".") + 1, page_index + 1)
            if done:
                sections.append(done)
        build.current.page_end = page_index + 1
    sections.append(build.close())
    return sections
