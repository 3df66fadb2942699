"""Registers and commands by their numbers.

Many drivers never spell a register's name: they call ``write_reg(0x2D, 0x08)``, send
command opcodes (``spi_send(0x06)``), or keep tables of ``{0x1A, 0x03}`` pairs. SpecMap
therefore treats numbers as names: an address or opcode becomes the name ``@2D`` (upper-case
hexadecimal, at least two digits), on both sides.

Datasheet side (:func:`section_numbers`):

* the section's **own** numbers, which say what it is about: those in its title
  ("Register 0x2D—POWER_CTL", "Control Register (0Eh)", "Write Enable (06h)", "Set Display
  ON/OFF (AEh/AFh)", ranges such as "Register 0x32 to Register 0x37"; decimal register
  numbers such as "Register 107" when the title has no hexadecimal one) and those its first
  lines give as an address or opcode ("Address (Hex) = 0xX9", "Opcode = 0x84");
* the numbers its **table rows** give to names (``6B 107 PWR_MGMT_1``, ``0x2D POWER_CTL``,
  ``Power Down 0000_0001``): a register map lists every register, and a section that names a
  register without its number borrows the number from the document's rows.

Code side (:func:`code_numbers`): hexadecimal and binary literals where a program names or
passes a register or command: an argument of a call, an element of an initializer list or
table, the value of a definition (``#define``, ``X = 0x6B``, ``const X: u8 = 0x6B``,
``enum {A = 0x10}``), a ``case`` label. Operands of masks and shifts (``x & 0x40``) are not
addresses and are left out; so are comments.
"""

from __future__ import annotations

import re

from spark_pipeline.specmap.sections import Section

#: Values above this are memory addresses or data, not register numbers or opcodes.
MAX_VALUE = 0xFFFF

_HEX = r"(?:0[xX][0-9A-Fa-fXx]{1,4}(?![0-9A-Za-z])|(?<![0-9A-Za-z])(?=[0-9A-FX]*[0-9A-F])[0-9A-FX]{1,4}h(?![0-9A-Za-z]))"
_NUMBER = re.compile(_HEX)
_BINARY = re.compile(r"(?<![0-9A-Za-z])([01]{4})[_ ]([01]{4})(?![0-9A-Za-z_])")
_RANGE = re.compile(rf"({_HEX})\s*(?:to|through|thru|–|—|-|~|…|\.\.)\s*(?:Registers?\s+)?({_HEX})", re.IGNORECASE)
_DECIMAL_REGISTER = re.compile(r"\bRegisters?\s+(\d{1,3})(?:\s*(?:to|and|–|-|through)\s*(\d{1,3}))?", re.IGNORECASE)
_PHRASE = re.compile(rf"\b(?:address|addr|opcode|op-code|command|instruction|cmd)\b[^.\n]{{0,24}}?({_HEX})",
                     re.IGNORECASE)
#: ``6B 107 PWR_MGMT_1``: a hexadecimal number followed by the same number in decimal.
_HEX_DEC = re.compile(r"(?<![0-9A-Za-z])([0-9A-F]{2})\s+(\d{1,3})(?![0-9A-Za-z])")
_ROW_NAME = re.compile(r"\b[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+\b|\b[A-Z][A-Z0-9]{2,}\b")


def token(value: int) -> str:
    """The name of a number: ``@2D``, ``@2C06``."""
    return f"@{value:02X}"


def parse(text: str) -> int | None:
    """``0x2D``, ``2Dh``, ``0xX9`` (X: don't care) -> the number; None when it is not one."""
    raw = text.strip()
    if raw.lower().startswith("0x"):
        digits = raw[2:]
    elif raw.endswith("h"):
        digits = raw[:-1]
    else:
        return None
    digits = digits.replace("X", "0").replace("x", "0")
    try:
        value = int(digits, 16)
    except ValueError:
        return None
    return value if value <= MAX_VALUE else None


def _groups(text: str) -> list[list[int]]:
    """The numbers a short text gives (a title, a phrase), a range (at most 64) or a pair
    written ``AEh/AFh`` as one group of alternatives."""
    groups: list[list[int]] = []
    spans: list[tuple[int, int]] = []
    for m in _RANGE.finditer(text):
        a, b = parse(m.group(1)), parse(m.group(2))
        if a is not None and b is not None and 0 < b - a <= 64:
            groups.append(list(range(a, b + 1)))
            spans.append(m.span())
    last_end = -10
    for m in _NUMBER.finditer(text):
        if any(s <= m.start() < e for s, e in spans):
            continue
        value = parse(m.group(0))
        if value is None:
            continue
        if groups and text[last_end:m.start()].strip() == "/":
            groups[-1].append(value)
        else:
            groups.append([value])
        last_end = m.end()
    for m in _BINARY.finditer(text):
        groups.append([int(m.group(1) + m.group(2), 2)])
    return groups


def title_numbers(title: str) -> list[list[int]]:
    """The register numbers or opcodes a heading gives, as groups of alternatives."""
    groups = _groups(title)
    if not groups:
        for m in _DECIMAL_REGISTER.finditer(title):
            a = int(m.group(1))
            b = int(m.group(2)) if m.group(2) else a
            if a <= b <= a + 64 and b <= 255:
                groups.append(list(range(a, b + 1)))
    return groups


def table_rows(text: str) -> list[tuple[str, int]]:
    """(name, number) for the rows of register and command tables in a text: a line with one
    number (hexadecimal, ``6B 107`` hexadecimal-and-decimal, or an 8-bit binary opcode) and a
    name."""
    rows = []
    for line in text.splitlines():
        if len(line) > 160:
            continue
        numbers = [parse(m.group(0)) for m in _NUMBER.finditer(line)]
        numbers = [n for n in numbers if n is not None]
        pair = _HEX_DEC.search(line)
        if pair and int(pair.group(1), 16) == int(pair.group(2)):
            numbers = [int(pair.group(2))]
        binary = list(_BINARY.finditer(line))
        if binary and not numbers:
            numbers = [int(binary[0].group(1) + binary[0].group(2), 2)]
        if len(numbers) != 1:
            continue
        names = [n for n in _ROW_NAME.findall(line) if not re.fullmatch(r"[0-9A-FX]+H?", n, re.IGNORECASE)]
        if names:
            rows.append((names[0].upper(), numbers[0]))
        elif binary:  # "Power Down 0000_0000 No active state": the words before the opcode
            label = re.sub(r"[^A-Za-z ]+", " ", line[: binary[0].start()]).split()
            if 1 <= len(label) <= 5 and all(w[0].isupper() for w in label):
                rows.append(("_".join(w.upper() for w in label), numbers[0]))
    return rows


def section_numbers(section: Section, head_lines: int = 12, map_rows: int = 4) -> tuple[list[list[str]], list[str]]:
    """(own, listed): the ``@`` names of the numbers a section is about, as groups of
    alternatives (its title, the address or opcode its first lines give), and those its table
    rows list when it holds a register or command table of ``map_rows`` rows or more."""
    own = [[token(v) for v in group] for group in title_numbers(section.title)]
    head = "\n".join(line for line in section.text.splitlines()[:head_lines])
    for m in _PHRASE.finditer(head):
        value = parse(m.group(1))
        if value is not None and [token(value)] not in own:
            own.append([token(value)])
    rows = table_rows(section.text)
    listed = [token(v) for _, v in rows] if len(rows) >= map_rows else []
    return own, list(dict.fromkeys(listed))


def document_rows(sections: list[Section]) -> dict[str, int]:
    """Name -> number over every table row of a document (the first row naming it wins)."""
    out: dict[str, int] = {}
    for section in sections:
        for name, value in table_rows(section.text):
            out.setdefault(name, value)
    return out


_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*|^\s*#(?!\s*(?:define|include|if|ifdef|ifndef|elif|else|endif|"
                       r"pragma|undef|error|warning)\b)[^\n]*|(?<=\s)#\s[^\n]*", re.S | re.M)
_LITERAL = re.compile(r"(?<![\w.])(0[xX][0-9A-Fa-f_]+|0[bB][01_]+)(?:[uUlL]{0,3}|_?[ui](?:8|16|32|64|size))(?![\w.])")
_BEFORE = re.compile(r"(?:[({\[,=]|\bcase|\breturn|#\s*define\s+\w+(?:\([^)]*\))?|\bconst\()\s*\(?\s*$")
_AFTER = re.compile(r"^\s*\)?\s*(?:[,)}\]:;]|$)")


def code_numbers(text: str) -> set[str]:
    """The ``@`` names of the hexadecimal and binary literals of a source text that sit where
    a register or command number does (see the module docstring)."""
    found: set[str] = set()
    if "0x" not in text and "0X" not in text and "0b" not in text and "0B" not in text:
        return found
    code = _COMMENTS.sub(" ", text)
    for line in code.splitlines():
        for m in _LITERAL.finditer(line):
            if not _BEFORE.search(line[: m.start()]) or not _AFTER.match(line[m.end():]):
                continue
            raw = m.group(1).replace("_", "")
            try:
                value = int(raw[2:], 16 if raw[1] in "xX" else 2)
            except ValueError:
                continue
            if value <= MAX_VALUE:
                found.add(token(value))
    return found
