"""PDF datasheets to sections, by layout.

PDFium (through ``pypdfium2``) gives every character of a page with its box, its font
size and its font's weight and name. From those, each page becomes lines in **reading
order**, and the lines decide what the words alone cannot:

* **Columns.** A page set in two columns (vendor datasheets often are) is read column by
  column: a vertical gutter that no line crosses splits the page, lines that span it (a wide
  table, a full-width heading) split it into bands, and each band is read left column first.
* **Running headers and footers** (document number, page "12 of 46", chapter name in the
  top margin) repeat at the same height on many pages; they are dropped.
* **Outline sections** are cut at their heading line in reading order: the line that
  starts with the bookmark's title near where the bookmark points, else the first line at or
  below the bookmark's destination in its column.
* **Headings without an outline** are told by how they are set: a line alone on its
  baseline, short, bold or larger than the body text, and not a caption ("Figure 3.",
  "Table 2."). Numbered or not ("4.28 Register 107 – Power Management 1", "ABSOLUTE MAXIMUM
  RATINGS", "Register 0x2D—POWER_CTL"). Table rows (several cells on one baseline), list
  items and figure labels (set small) stay text; a heading broken over two lines is joined.
  Heading levels come from the number when there is one, else from the rank of the style
  (larger first, then bold, then capitals). A table of contents, when there is one,
  confirms numbered headings it lists. A document set in one plain font falls back to the
  text rule (numbers run forward).

Text that cannot be read is dropped: glyphs without a Unicode mapping (figure labels in
vendor PDFs) and rotated text (axis labels of plots).
"""

from __future__ import annotations

import ctypes
import math
import re
from collections import Counter, defaultdict
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
_CAPTION = re.compile(r"^(?:figure|fig\.|table|note|notes|example|equation)\s*[\dA-Z]*[.:\-–—)]?(?:\s|$)",
                      re.IGNORECASE)


@dataclass
class Line:
    """One line (or one cell of a table row) of a page, with its layout. Coordinates are
    points from the page's top-left corner."""

    page: int                 # 0-based
    text: str
    x0: float = 0.0
    x1: float = 0.0
    top: float = 0.0
    bottom: float = 0.0
    size: float = 0.0         # font size in points, the most common over the line's letters
    bold: float = 0.0         # share of the line's letters set in a bold face
    height: float = 0.0       # the page's size
    width: float = 0.0
    peers: int = 1            # cells on this baseline in this column (a table row when > 1)
    column: int = 0           # 0 full width or left column, 1 right column
    gap: float = 0.0          # space above the line, from the line before it in reading order
    hyphen: bool = False      # ends in a soft hyphen: the word goes on in the next line

    @property
    def y(self) -> float:
        return self.top


# --------------------------------------------------------------------------- characters


def is_bold(name: str, weight: int = -1) -> bool:
    """A bold face, by its name (``Arial-BoldMT``, ``TradeGothicLTStd-BdCn20``,
    ``Helvetica-Black``); the weight PDFium reports is used only for fonts whose name carries
    no style (it reports 712 for ``MinionPro-Regular``)."""
    name = name.split("+", 1)[-1]
    if _BOLD_NAME.search(name):
        return True
    style = re.split(r"[-,]", name, maxsplit=1)[1] if re.search(r"[-,]", name) else ""
    if style:
        return bool(re.match(r"(?:bd|b$|bi$|bdit|bdcn|bold)", style, re.IGNORECASE))
    return weight >= 700


class _Fonts:
    """Per text object: its size in points and whether it is bold (cached: a page has a few
    hundred text objects and thousands of characters). One per page: PDFium reuses the
    addresses of a closed page's objects."""

    def __init__(self):
        self._cache: dict[int, tuple[float, bool, bool]] = {}

    def style(self, raw, textpage, index: int) -> tuple[float, bool, int]:
        """(size in points, bold, turn): the quarter turns of the text's baseline (0 upright,
        1 reading upwards, 3 reading downwards, -1 at another angle); an oblique face only
        shears the text and is upright."""
        obj = raw.FPDFText_GetTextObject(textpage, index)
        key = ctypes.cast(obj, ctypes.c_void_p).value or 0
        found = self._cache.get(key)
        if found is None:
            matrix = raw.FS_MATRIX()
            scale, turn = 1.0, 0
            if raw.FPDFText_GetMatrix(textpage, index, ctypes.byref(matrix)):
                scale = math.hypot(matrix.c, matrix.d) or math.hypot(matrix.a, matrix.b) or 1.0
                angle = math.degrees(math.atan2(matrix.b, matrix.a)) % 360
                turn = next((q for q in range(4) if min(abs(angle - 90 * q), 360 - abs(angle - 90 * q)) < 3), -1)
            size = abs(raw.FPDFText_GetFontSize(textpage, index)) * scale
            weight = raw.FPDFText_GetFontWeight(textpage, index)
            buf = ctypes.create_string_buffer(128)
            flags = ctypes.c_int(0)
            raw.FPDFText_GetFontInfo(textpage, index, buf, 128, ctypes.byref(flags))
            bold = is_bold(buf.value.decode("latin-1", "replace"), weight)
            found = self._cache[key] = (round(size * 2) / 2, bold, turn)
        return found


def _page_turn(raw, textpage, count: int, fonts: _Fonts) -> int:
    """How the page's text runs: 0 upright, 1 or 3 when most of its letters are turned a
    quarter (a landscape table on a portrait page)."""
    turns: Counter = Counter()
    for i in range(count):
        code = raw.FPDFText_GetUnicode(textpage, i)
        if 48 <= code < 123 and chr(code).isalnum():
            turns[fonts.style(raw, textpage, i)[2]] += 1
    turn, n = turns.most_common(1)[0] if turns else (0, 0)
    return turn if turn in (1, 3) and n > 0.5 * sum(turns.values()) else 0


def _page_segments(raw, page, index: int, fonts: _Fonts) -> list[Line]:
    """The page's text as segments: runs of characters on one baseline with no wide gap.
    A page whose text is mostly turned a quarter is read in the text's own frame; text at
    any other angle than the page's (axis labels, margin notes) is dropped."""
    page_width, page_height = page.get_size()
    textpage = page.get_textpage()
    try:
        count = raw.FPDFText_CountChars(textpage)
        turn = _page_turn(raw, textpage, count, fonts)
        width, height = (page_height, page_width) if turn else (page_width, page_height)

        def frame(x: float, y: float) -> tuple[float, float]:
            """(x across the line, distance from the top) in the text's frame."""
            if turn == 1:
                return y, x
            if turn == 3:
                return page_height - y, page_width - x
            return x, page_height - y

        left, right, bottom, top = (ctypes.c_double() for _ in range(4))
        ox, oy = ctypes.c_double(), ctypes.c_double()
        segments: list[Line] = []
        parts: list[str] = []
        sizes: Counter = Counter()
        letters = bold_letters = 0
        box = [math.inf, -math.inf, math.inf, -math.inf]  # x0, x1, top, bottom
        state = {"base": None, "x1": None, "size": 0.0, "hyphen": False}

        def finish():
            nonlocal parts, sizes, letters, bold_letters, box
            text = "".join(parts).strip()
            if text and letters + sum(c.isdigit() for c in text) > 0:
                size = sizes.most_common(1)[0][0] if sizes else 0.0
                segments.append(Line(index, _WS.sub(" ", text), box[0], box[1], box[2], box[3], size,
                                     bold_letters / letters if letters else 0.0, height, width,
                                     hyphen=state["hyphen"]))
            parts, sizes, letters, bold_letters = [], Counter(), 0, 0
            box = [math.inf, -math.inf, math.inf, -math.inf]
            state["base"] = state["x1"] = None
            state["hyphen"] = False

        pending = False  # a line break PDFium inserted: kept only if the next character starts a new line
        for i in range(count):
            code = raw.FPDFText_GetUnicode(textpage, i)
            if code in (10, 13):
                if raw.FPDFText_IsGenerated(textpage, i) == 1:
                    pending = True
                elif parts:
                    finish()
                continue
            if code == 2 or (code == 0xAD) or (code == 0x2D and raw.FPDFText_IsHyphen(textpage, i)):
                state["hyphen"] = True  # a soft hyphen at the end of the line
                continue
            if raw.FPDFText_HasUnicodeMapError(textpage, i) or code < 32 or 0xE000 <= code <= 0xF8FF:
                continue
            char = chr(code)
            if char.isspace():
                if parts and parts[-1] != " ":
                    parts.append(" ")
                continue
            size, bold, char_turn = fonts.style(raw, textpage, i)
            if char_turn != turn:
                continue  # axis labels, margin notes
            raw.FPDFText_GetCharBox(textpage, i, left, right, bottom, top)
            raw.FPDFText_GetCharOrigin(textpage, i, ox, oy)
            corners = [frame(x, y) for x in (left.value, right.value) for y in (bottom.value, top.value)]
            x0, x1 = min(c[0] for c in corners), max(c[0] for c in corners)
            y0, y1 = min(c[1] for c in corners), max(c[1] for c in corners)
            base = frame(ox.value, oy.value)[1]
            em = max(size, 1.0)
            if state["base"] is not None:
                jump = abs(base - state["base"]) > 0.6 * max(em, state["size"])
                gap = x0 - state["x1"]
                if jump or gap > 1.5 * max(em, state["size"]) or gap < -2 * em or (pending and gap < -0.5 * em):
                    finish()
                elif pending and gap > 0.15 * em and parts and parts[-1] != " ":
                    parts.append(" ")
            pending = False
            if state["hyphen"] and parts:
                parts.append("-")  # a hyphen inside the line was a real one
                state["hyphen"] = False
            parts.append(char)
            box[0] = min(box[0], x0)
            box[1] = max(box[1], x1)
            box[2] = min(box[2], y0)
            box[3] = max(box[3], y1)
            state["base"], state["x1"], state["size"] = base, x1, em
            if char.isalnum():
                sizes[size] += 1
                letters += 1
                bold_letters += bold
        finish()
        return segments
    finally:
        textpage.close()


# ------------------------------------------------------------------------ reading order


def _gutter(segments: list[Line], width: float) -> float | None:
    """The x of a vertical gutter splitting the page into two columns, or None."""
    text = [s for s in segments if len(s.text) >= 3]
    if len(text) < 12:
        return None
    best = None
    for step in range(0, 41):
        x = width * (0.3 + 0.01 * step)
        crossing = sum(1 for s in text if s.x0 < x - 1 and s.x1 > x + 1)
        left = sum(1 for s in text if s.x1 <= x + 1)
        right = len(text) - left - crossing
        if left < 4 or right < 4:
            continue
        if crossing > 0.15 * len(text):
            continue
        key = (crossing, abs(x - width / 2))
        if best is None or key < best[0]:
            best = (key, x)
    if best is None:
        return None
    x = best[1]
    # Two columns have lines that fill them: text on both sides running most of the way.
    left = [s for s in text if s.x1 <= x + 1]
    right = [s for s in text if s.x0 >= x - 1]
    wide_left = sum(1 for s in left if s.x1 - s.x0 >= 0.25 * width)
    wide_right = sum(1 for s in right if s.x1 - s.x0 >= 0.25 * width)
    return x if wide_left >= 3 and wide_right >= 3 else None


def _rows(segments: list[Line]) -> list[Line]:
    """Segments top to bottom, and left to right within a row (segments whose baselines are
    within a third of their size of each other)."""
    ordered = sorted(segments, key=lambda s: s.bottom)
    rows: list[list[Line]] = []
    for s in ordered:
        if rows and abs(rows[-1][0].bottom - s.bottom) <= 0.35 * max(s.size, rows[-1][0].size, 1.0):
            rows[-1].append(s)
        else:
            rows.append([s])
    return [s for row in rows for s in sorted(row, key=lambda s: s.x0)]


_SECTION_NUMBER = re.compile(r"^(?:\d+|[A-Z])(?:\.\d+){0,5}\.?$")


def _join_numbers(segments: list[Line]) -> list[Line]:
    """A heading's number set apart from its title by a tab ("4.1", then "Register 13 to 16
    – Self Test Registers" on the same baseline) becomes one line."""
    out: list[Line] = []
    for s in segments:
        prev = out[-1] if out else None
        if (prev is not None and _SECTION_NUMBER.match(prev.text) and s.text[:1].isupper()
                and abs(prev.bottom - s.bottom) <= 0.3 * max(s.size, 1.0) and 0 < s.x0 - prev.x1 <= 6 * max(s.size, 1.0)
                and prev.size == s.size and (prev.bold >= 0.5) == (s.bold >= 0.5)):
            prev.text = f"{prev.text} {s.text}"
            prev.x1, prev.top, prev.bottom = s.x1, min(prev.top, s.top), max(prev.bottom, s.bottom)
            prev.hyphen = s.hyphen
            continue
        out.append(s)
    return out


def reading_order(segments: list[Line], width: float) -> list[Line]:
    """The page's segments in reading order, column by column (see the module docstring).
    Sets ``column``, ``peers`` and ``gap`` on each segment."""
    segments = _join_numbers(_rows(segments))
    x = _gutter(segments, width)
    if x is None:
        ordered = segments
    else:
        spanning = [s for s in segments if s.x0 < x - 1 and s.x1 > x + 1]
        cuts = sorted({s.top for s in spanning})
        bands: dict[int, list[Line]] = defaultdict(list)
        for s in segments:
            band = sum(1 for c in cuts if c <= s.top + 0.5)
            bands[band].append(s)
        ordered = []
        for band in sorted(bands):
            items = bands[band]
            span = [s for s in items if s.x0 < x - 1 and s.x1 > x + 1]
            left = [s for s in items if s not in span and s.x1 <= x + 1]
            right = [s for s in items if s not in span and s not in left]
            for s in right:
                s.column = 1
            ordered.extend(_rows(span))
            ordered.extend(_rows(left))
            ordered.extend(_rows(right))
    # Cells on one baseline in one column: a table row (or a label and its value).
    rows: dict[tuple[int, int], list[Line]] = defaultdict(list)
    for s in ordered:
        rows[(s.column, round(s.bottom / 2))].append(s)
    for s in ordered:
        key = (s.column, round(s.bottom / 2))
        near = rows[key] + rows.get((key[0], key[1] - 1), []) + rows.get((key[0], key[1] + 1), [])
        s.peers = sum(1 for o in near if abs(o.bottom - s.bottom) <= 0.5 * max(s.size, 1.0))
    last: dict[int, Line] = {}
    for s in ordered:
        prev = last.get(s.column)
        s.gap = s.top - prev.bottom if prev is not None and s.top >= prev.bottom - 1 else s.size
        last[s.column] = s
    return ordered


def _open_pdf(path: Path):
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        message = str(exc)
        if "password" in message.lower():
            raise DatasheetError(f"{path}: PDF is encrypted with a user password; supply a decrypted copy "
                                 f"({message})") from exc
        raise DatasheetError(f"{path}: not a readable PDF ({message})") from exc
    except (OSError, ValueError) as exc:
        raise DatasheetError(f"{path}: not a readable PDF ({type(exc).__name__}: {exc})") from exc


def read_pages(path: Path) -> tuple[list[list[Line]], list[tuple[int, str, int, float | None, float | None]]]:
    """Every page's lines in reading order, and the outline as (level, title, 0-based page,
    destination top from the page's top or None, destination left or None)."""
    import pypdfium2.raw as raw

    pdf = _open_pdf(path)
    try:
        pages: list[list[Line]] = []
        for index in range(len(pdf)):
            page = pdf[index]
            try:
                segments = _page_segments(raw, page, index, _Fonts())
                pages.append(reading_order(segments, segments[0].width if segments else page.get_size()[0]))
            except Exception as exc:  # noqa: BLE001 - name the page rather than fail obscurely
                raise DatasheetError(f"{path}: page {index + 1} cannot be read ({type(exc).__name__}: {exc})") from exc
            finally:
                page.close()
        outline = _outline(pdf, pages)
        return pages, outline
    finally:
        pdf.close()


def _outline(pdf, pages: list[list[Line]]) -> list[tuple[int, str, int, float | None, float | None]]:
    import pypdfium2.raw as raw

    entries = []
    try:
        for item in pdf.get_toc(max_depth=16):
            title = _WS.sub(" ", item.get_title() or "").strip()
            dest = item.get_dest()
            if dest is None:  # a GoTo action instead of a destination
                action = raw.FPDFBookmark_GetAction(item.raw)
                handle = raw.FPDFAction_GetDest(pdf.raw, action) if action else None
                page = raw.FPDFDest_GetDestPageIndex(pdf.raw, handle) if handle else -1
                mode, pos = 0, []
            else:
                page = dest.get_index()
                mode, pos = dest.get_view()
            if not title or page is None or page < 0 or page >= len(pages):
                continue
            height = pages[page][0].height if pages[page] else None
            top = left = None
            if mode == 1 and len(pos) >= 2:        # XYZ left top zoom
                left, top = pos[0] or None, pos[1] or None
            elif mode in (3, 7) and pos:           # FitH / FitBH top
                top = pos[0] or None
            elif mode == 5 and len(pos) >= 4:      # FitR left bottom right top
                left, top = pos[0], pos[3]
            if top is not None and height:
                top = height - top
            entries.append((item.level + 1, title, page, top, left))
    except Exception:  # noqa: BLE001 - a damaged outline falls back to headings
        return []
    return entries


# ---------------------------------------------------------------------------- furniture


def drop_furniture(pages: list[list[Line]], margin: float = 0.12, min_pages: int = 3,
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
        if not line.height:
            return False
        return line.top <= line.height * margin or line.bottom >= line.height * (1 - margin)

    seen: dict[tuple[int, str], list[tuple[int, float]]] = defaultdict(list)
    for lines in pages:
        for line in lines:
            if in_margin(line):
                seen[(0, exact(line))].append((line.page, line.top))
                seen[(1, loose(line))].append((line.page, line.top))
    loose_pages = max(min_pages, math.ceil(numbered_share * len(pages)))

    def pages_at(key, top: float) -> int:
        return len({p for p, t in seen.get(key, ()) if abs(t - top) <= 3.0})

    def furniture(line: Line) -> bool:
        return in_margin(line) and (pages_at((0, exact(line)), line.top) >= min_pages
                                    or pages_at((1, loose(line)), line.top) >= loose_pages)

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


def _joined(lines: list[Line]) -> str:
    """Lines as text, a line per line, soft hyphens joining the halves of a word."""
    out: list[str] = []
    carry = ""
    for line in lines:
        text = carry + line.text
        if line.hyphen:
            carry = text
            continue
        carry = ""
        out.append(text)
    if carry:
        out.append(carry)
    return "\n".join(out)


def read_pdf(path: Path) -> list[Section]:
    """A PDF's sections: from the outline (bookmarks) when it has one, else from headings."""
    pages, entries = read_pages(path)
    drop_furniture(pages)
    toc = _contents(pages)
    for lines in pages:  # contents entries say where things are, not what they are
        lines[:] = [line for line in lines if not _TOC_ENTRY.search(line.text)]
    if len(entries) >= 2:
        return _by_outline(entries, pages, path)
    return _by_headings(pages, toc, path)


# ------------------------------------------------------------------------------ outline


def _title_pattern(title: str) -> re.Pattern:
    words = re.findall(r"\w+", title)[:6]
    return re.compile(r"^\W*(?:[\dA-Z]+(?:\.\d+)*\.?\s+)?" + r"\W*".join(re.escape(w) for w in words),
                      re.IGNORECASE)


def _cut(lines: list[Line], start: int, title: str, top: float | None, left: float | None) -> int:
    """Where a bookmark's section starts among a page's lines in reading order (at or after
    ``start``): the line that starts with its title nearest its destination, else the first
    line at or below the destination in the destination's column."""
    pattern = _title_pattern(title) if re.search(r"\w", title) else None
    matches = [i for i in range(start, len(lines)) if pattern is not None and pattern.match(lines[i].text)]
    if matches:
        if top is None:
            return matches[0]
        best = min(matches, key=lambda i: abs(lines[i].top - top))
        if abs(lines[best].top - top) <= 3 * max(lines[best].size, 8.0):
            return best
    if top is None:
        return start
    column = None
    if left is not None and any(line.column for line in lines):
        column = 1 if any(line.column == 1 and line.x0 <= left + 5 for line in lines) and left > (
            lines[0].width / 2 if lines else 0) else 0
    for i in range(start, len(lines)):
        line = lines[i]
        if column is not None and line.column != column and line.column in (0, 1):
            if column == 1 and line.column == 0:
                continue
        if line.bottom >= top - 0.3 * max(line.size, 1.0):
            return i
    return len(lines)


def _by_outline(entries, pages: list[list[Line]], path: Path) -> list[Section]:
    ids: set[str] = set()
    stack: list[tuple[int, str]] = []
    sections: list[Section] = []
    for n, (level, title, page, _top, _left) in enumerate(entries):
        number, bare = split_number(title)
        sid = unique_id(ids, number or f"s{n + 1}")
        while stack and stack[-1][0] >= level:
            stack.pop()
        parent = stack[-1][1] if stack else None
        stack.append((level, sid))
        sections.append(Section(sid, bare, level, "", page + 1, page + 1, parent, path.name))

    # Each bookmark's start as (page, index in the page's reading order).
    order = sorted(range(len(entries)), key=lambda i: (entries[i][2], i))
    starts: dict[int, tuple[int, int]] = {}
    position: dict[int, int] = defaultdict(int)
    for i in order:
        _level, title, page, top, left = entries[i]
        cut = _cut(pages[page], position[page], title, top, left)
        starts[i] = (page, cut)
        position[page] = cut
    ordered = sorted(range(len(entries)), key=lambda i: (starts[i], i))
    texts: dict[int | None, list[Line]] = defaultdict(list)
    boundaries = [(starts[i], i) for i in ordered]
    k = 0
    owner: int | None = None
    for page_index, lines in enumerate(pages):
        for n, line in enumerate(lines):
            while k < len(boundaries) and boundaries[k][0] <= (page_index, n):
                owner = boundaries[k][1]
                k += 1
            texts[owner].append(line)
            if owner is not None:
                sections[owner].page_end = page_index + 1
    while k < len(boundaries):  # bookmarks past the last line
        k += 1
    for i, section in enumerate(sections):
        section.text = _joined(texts.get(i, [])).strip()
        section.page_end = max(section.page_end or section.page_start, section.page_start)
    result = [sections[i] for i in ordered]
    front = _joined(texts.get(None, [])).strip()
    if front:
        result.insert(0, Section(unique_id(ids, "front"), "Front matter", 1, front, 1,
                                 entries[ordered[0]][2] + 1 if ordered else 1, None, path.name))
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


def _style(line: Line) -> tuple[float, bool, bool]:
    letters = [c for c in line.text if c.isalpha()]
    caps = bool(letters) and sum(c.isupper() for c in letters) / len(letters) >= 0.8 and len(letters) >= 4
    return (line.size, line.bold >= 0.6, caps)


_BULLET = re.compile(r"^[\u2022\u25cf\u25a0\u25c6\u25aa\u25b6\u25ba\u2023\u2043\u25e6\u25cb\u25a1\u25c7*]+\s*")


def heading_candidate(line: Line, body: float, continued: bool = False) -> bool:
    """A line set as a heading: alone on its baseline, short, in words, bold at body size or
    larger than the body, and not a caption or a sentence. ``continued``: the line may end
    in a comma (a heading broken over two lines; the joined heading may not). A leading
    bullet symbol (``●Electrical Characteristics``, as some vendors mark headings) is not
    part of the heading."""
    text = _BULLET.sub("", line.text.strip())
    if line.peers > 1 or len(text) < 3 or len(text) > 110 or len(text.split()) > 14:
        return False
    letters = sum(c.isalpha() for c in text)
    if letters < 3 or letters < 0.45 * len(text.replace(" ", "")):
        return False
    if not (line.size >= body + 1.4 or (line.bold >= 0.8 and line.size >= body - 0.6)):
        return False
    if _CAPTION.match(text) or text.endswith((";", ":")) or line.hyphen or (text.endswith(",") and not continued):
        return False
    if text.endswith(".") and not numbered_line(text) and len(text.split()) > 3:
        return False  # a bold sentence
    if not (text[0].isupper() or text[0].isdigit() or text[0] in "(§"):
        return False
    return True


def _margins(flat: list[Line]) -> dict[tuple[int, int], tuple[float, float, float]]:
    """The edges of the prose in each column of each page: where most lines of five words or
    more start and end, and the leftmost start two or more of them share (prose and indented
    lists start at different places)."""
    starts: dict[tuple[int, int], Counter] = defaultdict(Counter)
    ends: dict[tuple[int, int], Counter] = defaultdict(Counter)
    for line in flat:
        if len(line.text.split()) >= 5 and line.peers == 1:
            starts[(line.page, line.column)][round(line.x0 / 3)] += 1
            ends[(line.page, line.column)][round(line.x1 / 3)] += 1
    out = {}
    for key, counts in starts.items():
        shared = [x for x, n in counts.items() if n >= 2] or list(counts)
        out[key] = (counts.most_common(1)[0][0] * 3, ends[key].most_common(1)[0][0] * 3, min(shared) * 3)
    return out


def _aligned(line: Line, margins: dict[tuple[int, int], tuple[float, float, float]]) -> bool:
    """Set flush with the column's prose, left or right (older datasheets set headings flush
    right), centred on it, or outdented left of it; table cells and figure labels sit
    elsewhere."""
    edges = margins.get((line.page, line.column))
    if edges is None:
        return True
    left, right, leftmost = edges
    centred = abs((line.x0 + line.x1) / 2 - (left + right) / 2) <= 6.0 and line.x0 > left + 6.0
    hanging = leftmost - 24.0 <= line.x0 <= left  # set left of the prose ("4.28 Register 107", "●Features")
    return (abs(line.x0 - left) <= 6.0 or abs(line.x0 - leftmost) <= 6.0 or abs(line.x1 - right) <= 6.0
            or centred or hanging)


def _by_headings(pages: list[list[Line]], toc: dict[str, str], path: Path) -> list[Section]:
    body = body_size(pages)
    toc_depth = max((n.count(".") + 1 for n in toc), default=0)  # deeper headings are rarely listed
    flat = [line for lines in pages for line in lines]
    margins = _margins(flat)

    # Layout decides only when some line is set apart; a document in one plain font falls
    # back to the text rule (numbers run forward).
    candidates = [i for i, line in enumerate(flat)
                  if heading_candidate(line, body, continued=True) and _aligned(line, margins)]
    if not candidates:
        return _by_numbers(pages, path)

    # A heading set over two lines: the same style, directly below, in the same column.
    chosen: list[tuple[int, int, str]] = []  # first line, last line, text
    skip: set[int] = set()
    is_candidate = set(candidates)
    for i in candidates:
        if i in skip:
            continue
        text = _BULLET.sub("", flat[i].text.strip())
        j = i + 1
        while (j < len(flat) and j in is_candidate and flat[j].page == flat[i].page
               and flat[j].column == flat[i].column and _style(flat[j]) == _style(flat[i])
               and 0 <= flat[j].gap <= 0.6 * flat[i].size and not numbered_line(flat[j].text)
               and len(text) + len(flat[j].text) <= 110):
            text = f"{text} {flat[j].text.strip()}"
            skip.add(j)
            j += 1
        if text.endswith((",", ";", ":")) or len(text.split()) > 16:
            continue
        chosen.append((i, j - 1, text))
    # Three or more lines of one style with nothing between them are a list set in bold (a
    # datasheet's feature bullets), not headings.
    runs: list[list[int]] = []
    for n, (i, _last, _text) in enumerate(chosen):
        before = flat[chosen[runs[-1][-1]][0]] if runs else None
        if (before is not None and chosen[runs[-1][-1]][1] + 1 == i and _style(before) == _style(flat[i])
                and flat[i].page == before.page and flat[i].column == before.column
                and flat[i].gap <= 1.0 * flat[i].size):
            runs[-1].append(n)
        else:
            runs.append([n])
    listed_items = {n for run in runs if len(run) >= 3 for n in run}
    chosen = [c for n, c in enumerate(chosen) if n not in listed_items]
    # Numbered headings must run forward and, with a table of contents, be listed in it.
    accepted: dict[int, tuple[str, str, int]] = {}
    last: tuple[int, ...] = ()
    for i, _last, text in chosen:
        found = numbered_line(text)
        if not found:
            continue
        number, title = found
        key = number_key(number)
        listed = number in toc and _same_title(toc[number], title)
        if not listed and (last and not key > last or (toc and number not in toc and len(key) <= toc_depth)):
            continue
        last = key
        accepted[i] = (number, title, number.count(".") + 1)
    # A numbered document (its numbered headings run forward, or its contents list them):
    # its unnumbered bold lines are labels ("Type: Read/Write"), not headings.
    numbered_document = bool(accepted) and (len(accepted) >= 0.5 * len(chosen) or (toc and len(accepted) >= 5))
    styles = sorted({_style(flat[i]) for i, _, _ in chosen}, key=lambda s: (-s[0], not s[1], not s[2]))
    rank = {s: n + 1 for n, s in enumerate(styles)}
    heads: dict[int, tuple[str, str, int]] = {}
    for i, _last, text in chosen:
        if i in accepted:
            heads[i] = accepted[i]
        elif not numbered_line(text) and not numbered_document:
            heads[i] = ("", text, min(rank[_style(flat[i])], 6))
    # Headings listed in the contents but set like body text (some documents do).
    for i, line in enumerate(flat):
        if i in heads or i in skip or not toc:
            continue
        found = numbered_line(line.text)
        if found and found[0] in toc and _same_title(toc[found[0]], found[1]) and line.size >= body - 1.0 \
                and line.peers == 1:
            heads[i] = (found[0], found[1], found[0].count(".") + 1)
    merged = {j for i, last_line, _ in chosen if i in heads for j in range(i + 1, last_line + 1)}

    if not heads:
        return _by_numbers(pages, path)
    build = HeadingSections(path.name, 1)
    sections: list[Section] = []
    pending: list[Line] = []
    for i, line in enumerate(flat):
        if i in merged:
            continue
        if i not in heads:
            pending.append(line)
            continue
        build.lines.append(_joined(pending))
        pending = []
        number, title, level = heads[i]
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:48] or f"s{i}"
        done = build.start(number or slug, title, level, line.page + 1)
        if done:
            sections.append(done)
        build.current.page_end = line.page + 1
    build.lines.append(_joined(pending))
    if flat:
        build.current.page_end = max(build.current.page_end or 1, flat[-1].page + 1)
    sections.append(build.close())
    for s in sections:
        if s.page_end is None or (s.page_start and s.page_end < s.page_start):
            s.page_end = s.page_start
    return sections


def _by_numbers(pages: list[list[Line]], path: Path) -> list[Section]:
    """Numbered headings by their text alone (one plain font): numbers must run forward."""
    build = HeadingSections(path.name, 1)
    sections: list[Section] = []
    last: tuple[int, ...] = ()
    pending: list[Line] = []
    for lines in pages:
        for line in lines:
            found = plausible_heading(line.text, last)
            if found is None:
                pending.append(line)
                continue
            number, title, last = found
            build.lines.append(_joined(pending))
            pending = []
            done = build.start(number, title, number.count(".") + 1, line.page + 1)
            if done:
                sections.append(done)
        if lines:
            build.current.page_end = lines[-1].page + 1
    build.lines.append(_joined(pending))
    sections.append(build.close())
    return sections
