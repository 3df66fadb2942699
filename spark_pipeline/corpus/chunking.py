"""Stage 2: section-aware chunking of mapping files (paper §3.2).

A mapping file is split at its 82-``=`` section separators. A section that fits in
``max_chars`` is one chunk (boundary ``section``). A larger one is split, in order of
preference, at ``// File:`` markers (``file``), then at the end of top-level C blocks — a
closing brace that returns to depth zero, with strings, character literals and comments
skipped (``function``) — then at line ends after a semicolon or at blank lines
(``statement``). Splits fall only between lines, so never inside a string or a line; a
single line longer than ``max_chars`` cannot be split and is rejected with its length.
Consecutive pieces are packed back together up to ``max_chars``.
"""

from __future__ import annotations

import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from spark_pipeline.corpus.settings import ChunkingSettings
from spark_pipeline.records import Rejection

FILE_MARKER_RE = re.compile(r"^// File: (.+)$", re.M)
_HEADER_RE = re.compile(r"^Section (\S+?):", re.M)
_TOKENS_RE = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|//[^\n]*|/\*.*?(?:\*/|\Z)|[{}]', re.S)


@dataclass
class Chunk:
    section_id: str
    text: str
    boundary: str  # section | file | function | statement
    source_files: list[str] = field(default_factory=list)
    chunk_index: int = -1  # order within the pair, set after all sections are chunked


@dataclass
class _Piece:
    text: str
    files: list[str]


_SEP = b"=" * 82


def split_blocks(data: bytes) -> list[bytes] | None:
    """The raw blocks between separator lines (a line of exactly 82 ``=``), found with byte
    searches; None when the data holds no separator line."""
    cuts: list[tuple[int, int]] = []
    pos = data.find(_SEP)
    while pos >= 0:
        end = pos + len(_SEP)
        at_line_start = pos == 0 or data[pos - 1:pos] == b"\n"
        tail = end
        while data[tail:tail + 1] in (b" ", b"\t"):
            tail += 1
        if data[tail:tail + 2] == b"\r\n":
            tail += 1
        at_line_end = tail >= len(data) or data[tail:tail + 1] == b"\n"
        if at_line_start and at_line_end:
            cuts.append((pos, min(tail + 1, len(data))))
            pos = data.find(_SEP, tail)
        else:
            pos = data.find(_SEP, end)
    if not cuts:
        return None
    blocks, last = [], 0
    for start, stop in cuts:
        blocks.append(data[last:start])
        last = stop
    blocks.append(data[last:])
    return blocks


def _section(args) -> tuple[str | None, str, Rejection | None]:
    """Decode and normalise one raw block: (section id, text, rejection)."""
    number, raw, source = args
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = raw.decode("utf-8", errors="backslashreplace")
        sid = _section_id(text, number)
        return None, text, Rejection("chunking", f"{source}#{sid}", "invalid_utf8",
                                     f"{source}: section {sid} is not valid UTF-8 (byte {exc.start}); "
                                     "kept here with the bad bytes escaped", text)
    sid = _section_id(text, number)
    if not text.strip():
        return None, text, Rejection("chunking", f"{source}#{sid}", "empty_section",
                                     f"{source}: section {sid} holds only whitespace", text)
    # Line endings and tabs are normalised here, not only in cleaning, so that a chunk's
    # size is its final size (a tab-indented chunk would otherwise grow past the limit).
    return sid, normalise(text).strip("\n"), None


def split_mapping(data: bytes, source: str) -> tuple[list[tuple[str, str]], list[Rejection]]:
    """(section id, text) for every section of a mapping file, and rejections for sections
    that are empty or not valid UTF-8 (their text is kept in the rejection)."""
    blocks = split_blocks(data)
    if blocks is None:
        return [], [Rejection("chunking", source, "no_sections",
                              f"{source}: no line of 82 '=' found; the file holds no mapping sections")]
    sections, rejections = [], []
    for number, raw in enumerate(blocks):
        if number == 0 and not raw.strip():
            continue  # the file starts with a separator
        sid, text, rejection = _section((number, raw, source))
        if rejection:
            rejections.append(rejection)
        else:
            sections.append((sid, text))
    return sections, rejections


def normalise(text: str, tab_width: int = 4) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.expandtabs(tab_width) if "\t" in text else text


def _section_id(text: str, number: int) -> str:
    m = _HEADER_RE.search(text[:500])
    return m.group(1) if m else f"block{number}"


def _file_pieces(text: str) -> list[_Piece]:
    marks = list(FILE_MARKER_RE.finditer(text))
    if not marks:
        return [_Piece(text, [])]
    pieces = []
    if marks[0].start() > 0:
        pieces.append(_Piece(text[: marks[0].start()], []))
    for m, nxt in zip(marks, marks[1:] + [None], strict=False):
        end = nxt.start() if nxt else len(text)
        pieces.append(_Piece(text[m.start():end], [m.group(1).strip()]))
    return pieces


def _function_pieces(piece: _Piece) -> list[_Piece]:
    """Cut after each line on which a top-level ``{ ... }`` block closes.

    Most C code closes a top-level block with ``}`` (or ``};``) in column 0, which a string
    search finds at memory speed; a raw newline cannot occur inside a string literal, so such
    a line is never inside one. Code written otherwise (a whole file indented, say) falls back
    to counting braces, skipping strings, character literals and comments."""
    text = piece.text
    cuts = []
    pos = text.find("\n}")
    while pos >= 0:
        end = text.find("\n", pos + 2)
        line = text[pos + 1:end if end >= 0 else len(text)].rstrip()
        if line in ("}", "};") and end >= 0:
            cuts.append(end + 1)
        pos = text.find("\n}", pos + 2)
    if text.startswith("}"):
        first = text.find("\n")
        if first >= 0 and text[:first].rstrip() in ("}", "};"):
            cuts.insert(0, first + 1)
    if not cuts:
        cuts = _brace_cuts(text)
    return _cut(piece, cuts)


def _brace_cuts(text: str) -> list[int]:
    if "}" not in text:
        return []
    cuts = []
    depth = 0
    skip_to = 0
    for m in _TOKENS_RE.finditer(text):
        if m.start() < skip_to:
            continue
        tok = m.group(0)
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth = max(depth - 1, 0)
            if depth == 0:
                end = text.find("\n", m.end())
                if end < 0:
                    break
                cuts.append(end + 1)
                skip_to = end + 1
    return cuts


def _statement_pieces(piece: _Piece) -> list[_Piece]:
    """Cut after lines ending in ``;`` and at blank lines."""
    cuts = []
    pos = 0
    for line in piece.text.splitlines(keepends=True):
        pos += len(line)
        stripped = line.strip()
        if not stripped or stripped.endswith(";"):
            cuts.append(pos)
    return _cut(piece, cuts)


def _line_pieces(piece: _Piece) -> list[_Piece]:
    return [_Piece(line, piece.files) for line in piece.text.splitlines(keepends=True)]


def _cut(piece: _Piece, cuts: list[int]) -> list[_Piece]:
    out, start = [], 0
    for cut in cuts + [len(piece.text)]:
        if cut > start:
            out.append(_Piece(piece.text[start:cut], piece.files))
            start = cut
    return out or [piece]


_LEVELS = (("file", None), ("function", _function_pieces), ("statement", _statement_pieces),
           ("statement", _line_pieces))


def _pack(pieces: list[_Piece], level: int, max_chars: int, section_id: str, out: list[Chunk],
          rejections: list[Rejection], source: str) -> None:
    boundary = _LEVELS[level][0]
    buf: list[_Piece] = []
    size = 0

    def flush():
        nonlocal buf, size
        if buf:
            files = list(dict.fromkeys(f for p in buf for f in p.files))
            out.append(Chunk(section_id, "".join(p.text for p in buf), boundary, files))
        buf, size = [], 0

    for piece in pieces:
        if len(piece.text) > max_chars:
            if level + 1 < len(_LEVELS):
                # the small pieces before it (a section header, say) stay with its first part
                finer = buf + _LEVELS[level + 1][1](piece)
                buf, size = [], 0
                _pack(finer, level + 1, max_chars, section_id, out, rejections, source)
            else:
                flush()
                rejections.append(Rejection(
                    "chunking", f"{source}#{section_id}", "line_too_long",
                    f"{source}: section {section_id} has a {len(piece.text.rstrip(chr(10))):,}-character line, over the "
                    f"{max_chars:,}-character sample limit; a line is never split", piece.text))
            continue
        if size + len(piece.text) > max_chars:
            flush()
        buf.append(piece)
        size += len(piece.text)
    flush()


def chunk_section(section_id: str, text: str, max_chars: int, source: str = "") -> tuple[list[Chunk], list[Rejection]]:
    chunks: list[Chunk] = []
    rejections: list[Rejection] = []
    if len(text) <= max_chars:
        files = [m.group(1).strip() for m in FILE_MARKER_RE.finditer(text)]
        return [Chunk(section_id, text, "section", files)], rejections
    _pack(_file_pieces(text), 0, max_chars, section_id, chunks, rejections, source)
    return chunks, rejections


def _chunk_block(args) -> tuple[list[Chunk], list[Rejection]]:
    number, raw, max_chars, source = args
    sid, text, rejection = _section((number, raw, source))
    if rejection:
        return [], [rejection]
    return chunk_section(sid, text, max_chars, source)


def chunk_mapping(data: bytes, source: str, settings: ChunkingSettings,
                  workers: int | None = None) -> tuple[list[Chunk], list[Rejection]]:
    """Chunk a whole mapping file. The parent only finds the separators; decoding,
    normalising and chunking of each section run in a process pool, results in order."""
    blocks = split_blocks(data)
    if blocks is None:
        return [], split_mapping(data, source)[1]
    jobs = [(number, raw, settings.max_chars, source) for number, raw in enumerate(blocks)
            if number or raw.strip()]
    n = workers if workers is not None else settings.effective_workers()
    if n > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=n) as pool:
            results = list(pool.map(_chunk_block, jobs, chunksize=max(1, len(jobs) // (n * 4))))
    else:
        results = [_chunk_block(job) for job in jobs]
    chunks: list[Chunk] = []
    rejections: list[Rejection] = []
    for section_chunks, section_rejections in results:
        rejections.extend(section_rejections)
        for chunk in section_chunks:
            if len(chunk.text.strip()) < settings.min_chars:
                rejections.append(Rejection("chunking", f"{source}#{chunk.section_id}", "too_short",
                                            f"{source}: a chunk of section {chunk.section_id} has "
                                            f"{len(chunk.text.strip())} characters, under {settings.min_chars}",
                                            chunk.text))
                continue
            chunks.append(chunk)
    for index, chunk in enumerate(chunks):
        chunk.chunk_index = index
    return chunks, rejections
