"""Stage 3: garbage cleaning and quality filtering (paper §3.2).

Cleaning, in order: CRLF and lone CR to LF, tabs to spaces; separator lines (runs of
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
  plus every character of a line with no letter or digit at all.

Filters follow datatrove's shape: ``filter(sample) -> bool | tuple[bool, str]``; the first
that says no gives the rejection's reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from spark_pipeline.corpus.settings import CleaningSettings

_BOX = re.compile(r"[\u2500-\u259f\u25a0-\u25ff]+")  # box drawing, block elements, geometric shapes
_EMPTY_COMMENTS = re.compile(r"/\*[\s*!]*\*/|^[ \t]*//[/!]*[ \t]*$\n?|^[ \t]*#[ \t]*$\n?", re.M)
_DOXY_GROUP = re.compile(r"^[ \t]*(?:/\*\*?!?|\*|//[/!]?)?[ \t]*[@\\][{}][ \t]*(?:\*/)?[ \t]*$\n?", re.M)
_STAR_RUN = re.compile(r"(?:^[ \t]*\*[ \t]*\n){2,}", re.M)
_ART_CHARS = r"|+\-/\\_=*#<>^.:~'`!o"
_ART_CANDIDATE = re.compile(r"^.*(?:[|+][-=_]{2,}|[-=_]{2,}[|+]|\|[ \t]{2,}\||[/\\][_-]{2,}|[_-]{2,}[/\\]).*$", re.M)
_CODE_INDICATORS = re.compile(
    r"#\s*include\b|#\s*define\b|\b(?:void|int|struct|typedef|if|else|for|while|switch|case|return|do|goto|"
    r"break|continue)\b")
_WORD = re.compile(r"\b[A-Za-z]{2,}\b")
_ALNUM_LINE = re.compile(r"^[^\n]*[A-Za-z0-9][^\n]*$", re.M)
_NOT_ASCII_TEXT = re.compile(r"[^\x20-\x7e\s]")


@dataclass
class CleanStats:
    chars_before: int = 0
    chars_after: int = 0
    separator_lines: int = 0
    repeats_collapsed: int = 0
    art_removed: int = 0
    comment_blocks_removed: int = 0
    garbage_ratio: float = 0.0


class Cleaner:
    def __init__(self, settings: CleaningSettings):
        self.s = settings
        run = settings.separator_min_run
        # a whole line that is a separator run, optionally wrapped in comment markers
        self._separator = re.compile(
            rf"^[ \t]*(?P<open>/\*+|//+|#|;)?[ \t]*(?:-{{{run},}}|={{{run},}}|\*{{{run},}}|_{{{run},}})[ \t]*"
            rf"(?P<close>\*+/)?[ \t]*$\n?", re.M)
        n = settings.repeat_min_run - 1
        self._repeat = re.compile(rf"(?<![0-9A-Fa-fxX])([^\s0-9])\1{{{n},}}")
        self._keep = settings.repeat_keep

    def _separator_line(self, m: re.Match) -> str:
        opened, closed = m.group("open"), m.group("close")
        if opened and opened.startswith("/*") and not closed:
            return "/*\n"  # the line opened a comment: keep the opener
        if closed and not opened:
            return "*/\n"  # the line closed a comment: keep the closer
        return ""

    def clean(self, text: str) -> tuple[str, CleanStats]:
        st = CleanStats(chars_before=len(text))
        text = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(self.s.tab_width)
        text, st.separator_lines = self._separator.subn(self._separator_line, text)
        text, boxes = _BOX.subn("", text)
        art = 0

        def art_line(m: re.Match) -> str:
            nonlocal art
            line = m.group(0)
            core = "".join(line.split())
            if len(core) >= 3 and sum(c.isalnum() for c in core) <= 0.25 * len(core) and \
                    sum(c in _ART_CHARS for c in core) >= 0.5 * len(core):
                art += 1
                return ""
            return line

        text = _ART_CANDIDATE.sub(art_line, text)
        st.art_removed = boxes + art
        text, empty = _EMPTY_COMMENTS.subn("", text)
        text, groups = _DOXY_GROUP.subn("", text)
        text, stars = _STAR_RUN.subn(lambda m: m.group(0).split("\n", 1)[0] + "\n", text)
        st.comment_blocks_removed = empty + groups + stars
        text, st.repeats_collapsed = self._repeat.subn(lambda m: m.group(1) * self._keep, text)
        text = re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"
        st.chars_after = len(text)
        st.garbage_ratio = garbage_ratio(text)
        return text, st


def garbage_ratio(text: str) -> float:
    """Share of non-space characters that are garbage: not a letter, digit or ASCII
    punctuation, or on a line with no letter or digit at all."""
    visible = len(text) - sum(text.count(c) for c in " \n\t")
    if visible <= 0:
        return 1.0
    odd = len(_NOT_ASCII_TEXT.findall(text))
    alnum_lines = sum(len(m.group(0)) - m.group(0).count(" ") for m in _ALNUM_LINE.finditer(text))
    no_alnum = visible - alnum_lines  # characters on lines without a letter or digit
    return min(1.0, (odd + max(no_alnum, 0)) / visible)


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
