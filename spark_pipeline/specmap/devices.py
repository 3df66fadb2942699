"""Which part a datasheet is for, and which repository files belong to other parts.

Vendor trees carry a header per part of a family (``stm32f401xc.h``, ``stm32f411xe.h``,
``stm32f446xx.h``, ...) and one per core (``core_cm0.h`` ... ``core_cm7.h``); they all define
the same register names. The part numbers of the datasheet (from its file name and its
first page: ``STM32F411xC``, ``MPU-6000``/``MPU-6050``, ``Cortex-M4``) are the hints; a file
whose name carries a part number of the same family that matches none of the hints is a
*sibling*, and ranks below the files for the datasheet's own part. ``x`` in a part number
is a wildcard (``stm32f4xx`` is the whole family, ``mpu60x0`` both parts).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_PART = re.compile(r"[a-z]+[0-9][a-z0-9]+")
_CORE = re.compile(r"cortex[^a-z0-9]{0,3}m(\d+)\+?|\bcm(\d+)\b", re.IGNORECASE)
_FILE_CORE = re.compile(r"(?:^|[^a-z0-9])(?:core_)?cm(\d+)(?:[^a-z0-9]|$)")


def part_tokens(text: str) -> set[str]:
    """Part-number-like words (letters then digits, at least five characters, two digits:
    ``ds3231``, ``w25q64``, ``sht35``), lowercased, with hyphens inside part numbers removed
    (``MPU-6000`` -> ``mpu6000``)."""
    low = re.sub(r"(?<=[a-z])-(?=\d)", "", text.lower())
    return {t for t in _PART.findall(low) if len(t) >= 5 and sum(c.isdigit() for c in t) >= 2}


def _matches(token: str, hint: str) -> bool:
    """Equal over their common length, ``x`` matching anything on either side."""
    n = min(len(token), len(hint))
    return all(a == b or a == "x" or b == "x" for a, b in zip(token[:n], hint[:n], strict=True))


def _own(token: str, hint: str) -> bool:
    """``token`` names the part ``hint`` is: the same, longer (``bh1750fvi`` for
    ``bh1750``), ``x`` standing for a digit (``mpu60x0``), or the hint without an ordering
    suffix of letters (``llcc68`` for ``llcc68imltrt``)."""
    if hint in token or (_matches(token, hint) and len(token) >= len(hint) and "x" not in token):
        return True
    if hint.startswith(token) and not any(c.isdigit() for c in hint[len(token):]):
        return True
    return len(token) == len(hint) and _matches(token, hint)


def _family(token: str) -> str:
    """The letters and the first digit: ``stm32f411`` -> ``stm3``, ``mpu6050`` -> ``mpu6``."""
    m = re.match(r"[a-z]+\d", token)
    return m.group(0) if m else token


@dataclass(frozen=True)
class DeviceHints:
    parts: frozenset[str]
    cores: frozenset[str]  # "4" for a Cortex-M4

    def is_device_file(self, path: str) -> bool:
        """The file's name carries one of the datasheet's own part numbers (or the part
        number without its ordering suffix: ``LLCC68.cpp`` for ``LLCC68IMLTRT``)."""
        tokens = part_tokens(re.sub(r"[_\-.]", " ", Path(path).name))
        return any(_own(t, h) for t in tokens for h in self.parts)

    def is_sibling(self, path: str) -> bool:
        """The file's name carries a part number of the same family (or a core) that is not
        one the datasheet is for."""
        name = Path(path).name.lower()
        for token in part_tokens(name):
            family = [h for h in self.parts if _family(h) == _family(token)]
            if family and not any(_matches(token, h) for h in family):
                return True
        if self.cores:
            for core in _FILE_CORE.findall(name):
                if core not in self.cores:
                    return True
        return False

    def names(self) -> set[str]:
        """The hints as datasheet names are written (uppercase, no placeholders)."""
        return {p.upper() for p in self.parts}


def device_hints(datasheet_paths: Iterable[Path], first_pages: Iterable[str] = ()) -> DeviceHints:
    """Part numbers from the datasheets' file names and the first page of their text."""
    parts: set[str] = set()
    cores: set[str] = set()
    for path in datasheet_paths:
        parts |= part_tokens(Path(path).stem.replace("_", " "))
    for text in first_pages:
        head = text[:3000]
        parts |= {t for t in part_tokens(head) if not t.startswith(("rev", "docid", "doc", "rm"))}
        for a, b in _CORE.findall(head):
            cores.add(a or b)
    return DeviceHints(frozenset(parts), frozenset(cores))
