"""Stage 3: garbage cleaning and quality filtering (paper §3.2).

Cleaning, in order: control characters other than tab and line ends removed (unreadable
PDF text, NUL bytes), wherever they are and however few; CRLF and lone CR to LF, tabs to spaces; separator lines (runs of
``- = * _``, also inside comment markers — a comment's opener or closer on such a line is
kept, so comments stay balanced); box-drawing and block characters; ASCII-art lines;
empty comment blocks and Doxygen decoration (``@{``/``@}`` group markers, runs of empty
``*`` lines); any non-space character repeated ``repeat_min_run``+ times cut to
``repeat_keep``.

Two choices the paper leaves open, made here and documented in docs/corpus.md:
* Runs of whitespace are not collapsed (deep indentation is code), and runs of hex digits
  that belong to a number (``0xFFFFFFFFFFFF``, ``1000000000``) are kept (collapsing them
  would change constants).
* "Garbage" is every non-space character that is not a letter, digit or ASCII punctuation,
  plus every character of a line of three or more characters with no letter or digit.

Filters follow datatrove's shape: ``filter(sample) -> bool | tuple[bool, str]``; the first
that says no gives the rejection's reason.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from spark_pipeline.corpus.settings import CleaningSettings

# Line-level patterns run on "\n" + text + "\n" and start with a literal newline, which the
# regular-expression engine finds at memory speed; a removed line takes its leading "\n" along.
_BOX = re.compile(r"[\u2500-\u259f\u25a0-\u25ff]+")  # box drawing, block elements, geometric shapes
_EMPTY_BLOCK = re.compile(r"/\*[\s*!]*\*/")
_EMPTY_LINE_COMMENT = re.compile(r"\n[ \t]*(?://[/!]*|#)[ \t]*(?=\n)")
_DOXY_GROUP = re.compile(r"\n[ \t]*(?:/\*\*?!?|\*|//[/!]?)?[ \t]*[@\\][{}][ \t]*(?:\*/)?[ \t]*(?=\n)")
_STAR_RUN = re.compile(r"\n[ \t]*\*[ \t]*(?:\n[ \t]*\*[ \t]*)+(?=\n)")
_ART_LINE = re.compile(r"\n *[^A-Za-z0-9\s][^A-Za-z0-9\n]{2,}(?=\n)")  # no letter or digit, 3+ characters
_BLANK_RUN = re.compile(r"\n{3,}")
_HEX_BEFORE = frozenset("0123456789abcdefABCDEFxX")
_PUNCT_SPACE = string.punctuation + " \t"
_ART_CHARS = frozenset("|+-/\\_=*#<>^.:~'`!")
_CODE_INDICATORS = re.compile(
    r"#\s*include\b|#\s*define\b|\b(?:void|int|struct|typedef|if|else|for|while|switch|case|return|do|goto|"
    r"break|continue)\b")
_WORD = re.compile(r"\b[A-Za-z]{2,}\b")
_NOT_ASCII_TEXT = re.compile(r"[^\x20-\x7e\s]")


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]+")  # not tab, newline or carriage return


@dataclass
class CleanStats:
    chars_before: int = 0
    chars_after: int = 0
    control_chars_removed: int = 0
    separator_lines: int = 0
    repeats_collapsed: int = 0
    art_removed: int = 0
    comment_blocks_removed: int = 0
    garbage_ratio: float = 0.0


def _is_art(line: str) -> bool:
    """A line with no letter or digit, three or more visible characters, half of them drawing
    characters, and a drawing's structure: two kinds of stroke (``+--+``) or strokes spaced
    apart (``|   |``). A run of one character is the separator rule's business."""
    core = "".join(line.split())
    if len(core) < 3 or sum(c in _ART_CHARS for c in core) < 0.5 * len(core):
        return False
    return len(set(core)) >= 2 or "  " in line.strip()


class Cleaner:
    def __init__(self, settings: CleaningSettings):
        self.s = settings
        run = settings.separator_min_run
        # a whole line that is a separator run, optionally wrapped in comment markers
        self._separator = re.compile(
            rf"[ \t]*(?P<open>/\*+|//+|#|;)?[ \t]*(?:-{{{run},}}|={{{run},}}|\*{{{run},}}|_{{{run},}})[ \t]*"
            rf"(?P<close>\*+/)?[ \t]*")
        self._keep = settings.repeat_keep
        self._runs = tuple(c * run for c in "-=*_")

    def _remove_separators(self, t: str) -> tuple[str, int]:
        """Find each run with a string search, then test only the line around it."""
        spans: dict[int, tuple[int, str]] = {}
        for run in self._runs:
            pos = t.find(run)
            while pos >= 0:
                start = t.rfind("\n", 0, pos)
                end = t.find("\n", pos)
                if start not in spans:
                    m = self._separator.fullmatch(t, start + 1, end)
                    if m:
                        opened, closed = m.group("open"), m.group("close")
                        keep = ""
                        if opened and opened.startswith("/*") and not closed:
                            keep = "\n/*"  # the line opened a comment: keep the opener
                        elif closed and not opened:
                            keep = "\n*/"  # the line closed a comment: keep the closer
                        spans[start] = (end, keep)
                pos = t.find(run, end)
        if not spans:
            return t, 0
        out, last = [], 0
        for start in sorted(spans):
            end, keep = spans[start]
            out.append(t[last:start])
            out.append(keep)
            last = end
        out.append(t[last:])
        return "".join(out), len(spans)

    def clean(self, text: str) -> tuple[str, CleanStats]:
        """Each pass is guarded by a substring test that runs at memory speed, so a pattern
        only runs on the samples that can match it."""
        st = CleanStats(chars_before=len(text))
        if _CONTROL.search(text):
            st.control_chars_removed = sum(len(m) for m in _CONTROL.findall(text))
            text = _CONTROL.sub("", text)
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if "\t" in text:
            text = text.expandtabs(self.s.tab_width)
        t = "\n" + text + "\n"
        t, st.separator_lines = self._remove_separators(t)
        boxes = 0
        ascii_only = t.isascii()
        if not ascii_only:
            t, boxes = _BOX.subn("", t)
        removed = 0
        if "/*" in t and "*/" in t:
            t, n = _EMPTY_BLOCK.subn("", t)
            removed += n
        if "//\n" in t or "#\n" in t or "// \n" in t or "//!" in t:
            t, n = _EMPTY_LINE_COMMENT.subn("", t)
            removed += n
        if "@{" in t or "@}" in t:
            t, n = _DOXY_GROUP.subn("", t)
            removed += n
        if "*\n *\n" in t or "*\n*\n" in t:
            t, n = _STAR_RUN.subn(lambda m: m.group(0)[: m.group(0).find("\n", 1)], t)  # keep the first
            removed += n
        st.comment_blocks_removed = removed
        t, st.repeats_collapsed = self._collapse_repeats(t)
        # ASCII art and the garbage share come from one scan of the lines with no letter or
        # digit and three or more characters: drawings are removed, the rest counts as garbage.
        art, junk = [], 0
        for m in _ART_LINE.finditer(t):
            if _is_art(m.group(0)):
                art.append(m)
            else:
                line = m.group(0)
                junk += len(line) - line.count(" ") - 1
        if art:
            pieces, last = [], 0
            for m in art:
                pieces.append(t[last:m.start()])
                last = m.end()
            pieces.append(t[last:])
            t = "".join(pieces)
        st.art_removed = boxes + len(art)
        if "\n\n\n" in t:
            t = _BLANK_RUN.sub("\n\n", t)
        text = t.strip("\n") + "\n"
        st.chars_after = len(text)
        visible = len(text) - text.count(" ") - text.count("\n")
        odd = 0 if ascii_only else len(_NOT_ASCII_TEXT.findall(text))
        st.garbage_ratio = min(1.0, (odd + junk) / visible) if visible > 0 else 1.0
        return text, st

    def _collapse_repeats(self, text: str) -> tuple[str, int]:
        """Runs of ``repeat_min_run``+ equal characters, found with numpy at memory speed, then
        cut to ``repeat_keep`` unless whitespace or part of a number."""
        n = len(text)
        need = self.s.repeat_min_run
        if n < need:
            return text, 0
        if text.isascii():
            codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        else:
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        same = np.zeros(n + 1, dtype=np.int8)
        eq = codes[1:] == codes[:-1]
        eq &= codes[1:] != 32  # runs of spaces are indentation: never collapsed
        if np.count_nonzero(eq) < need - 1:
            return text, 0
        same[1:-1] = eq  # same[i] = 1 when text[i] == text[i - 1]
        edges = np.flatnonzero(np.diff(same))
        if not len(edges):
            return text, 0
        starts, ends = edges[0::2] + 1, edges[1::2] + 1  # runs of same == 1 over [start, end)
        long = (ends - starts) >= need - 1
        if not long.any():
            return text, 0
        out, last, count = [], 0, 0
        for a, b in zip((starts[long] - 1).tolist(), ends[long].tolist(), strict=True):
            ch = text[a]
            if ch.isspace() or ch.isdigit() or (a > 0 and text[a - 1] in _HEX_BEFORE):
                continue
            out.append(text[last:a])
            out.append(ch * self._keep)
            last = b
            count += 1
        if not count:
            return text, 0
        out.append(text[last:])
        return "".join(out), count


def garbage_ratio(text: str) -> float:
    """Share of non-space characters that are garbage: not a letter, digit or ASCII
    punctuation, or on a line of three or more characters with no letter or digit (what is
    left of drawings, banners and dumps; a closing ``}`` is code, not garbage)."""
    visible = len(text) - text.count(" ") - text.count("\n")
    if visible <= 0:
        return 1.0
    odd = 0 if text.isascii() else len(_NOT_ASCII_TEXT.findall(text))
    lines = "".join(_ART_LINE.findall("\n" + text + "\n"))
    return min(1.0, (odd + len(lines) - lines.count(" ") - lines.count("\n")) / visible)


# ------------------------------------------------------------------------- filters

Filter = Callable[[str, CleanStats], "bool | tuple[bool, str]"]


def length_filter(min_chars: int, max_chars: int) -> Filter:
    def f(text: str, st: CleanStats):
        n = len(text.strip())
        if n < min_chars:
            return False, "too_short_after_cleaning"
        if n > max_chars:
            return False, "too_long"
        return True

    return f


def garbage_filter(max_ratio: float) -> Filter:
    def f(text: str, st: CleanStats):
        return (True if st.garbage_ratio <= max_ratio else (False, "garbage"))

    return f


def content_filter(min_words: int) -> Filter:
    def f(text: str, st: CleanStats):
        if _CODE_INDICATORS.search(text):
            return True
        if len(_WORD.findall(text)) >= min_words:
            return True
        return False, "no_code_or_prose"

    return f


def default_filters(cleaning: CleaningSettings, min_chars: int, max_chars: int) -> list[Filter]:
    return [length_filter(min_chars, max_chars), garbage_filter(cleaning.max_garbage_ratio),
            content_filter(cleaning.min_prose_words)]


def run_filters(filters: list[Filter], text: str, st: CleanStats) -> tuple[bool, str]:
    for f in filters:
        verdict = f(text, st)
        if verdict is True:
            continue
        if verdict is False:
            return False, getattr(f, "__name__", "filtered")
        return verdict
    return True, ""
