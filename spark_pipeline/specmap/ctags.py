"""Code symbols from Universal Ctags (paper §3.2, M3).

Runs the ``ctags`` binary once over a list of files with JSON output, ``.h`` parsed as C
(Universal Ctags treats it as C++ otherwise), Arduino sketches (``.ino``, ``.pde``) as C++,
and end lines (``--fields=+neKStl``). Kinds are mapped to the paper's classes of symbol per
language: a Python ``member`` is a method (a function), a C ``member`` a struct field.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

#: ctags kinds we keep, by the paper's classes of symbol.
SYMBOL_KINDS = {
    "function": "function", "prototype": "prototype",
    "macro": "macro", "define": "macro",
    "struct": "struct", "union": "struct", "member": "member",
    "enum": "enum", "enumerator": "constant",
    "typedef": "typedef",
    "variable": "variable", "externvar": "variable",
    "label": "label",  # assembly
    "class": "struct",
    "method": "function",
    "config": "constant",  # Kconfig
    "symbol": "variable",  # linker scripts
}
#: Where a kind means something else in a language.
LANGUAGE_KINDS = {
    ("Python", "member"): "function",
    ("Python", "class"): "struct",
    ("Python", "variable"): "variable",
}


class CtagsError(RuntimeError):
    pass


@dataclass(frozen=True)
class Symbol:
    name: str
    kind: str  # one of SYMBOL_KINDS' values
    path: str
    line: int
    end: int
    scope: str | None = None
    signature: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@functools.cache
def ctags_binary() -> str:
    """The Universal Ctags executable, checked for JSON support; a clear error otherwise."""
    exe = shutil.which("ctags") or shutil.which("universal-ctags")
    if not exe:
        raise CtagsError("Universal Ctags was not found on PATH: install it "
                         "(Debian/Ubuntu: apt-get install universal-ctags; `make test` does this)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    if "Universal Ctags" not in version:
        raise CtagsError(f"{exe} is not Universal Ctags ({version.splitlines()[0] if version else 'no version'}); "
                         "SpecMap needs Universal Ctags with JSON output")
    features = subprocess.run([exe, "--list-features"], capture_output=True, text=True).stdout
    if "json" not in features:
        raise CtagsError(f"{exe} was built without JSON output support")
    return exe


def run_ctags(root: Path, paths: list[str], timeout: float = 600) -> dict[str, list[Symbol]]:
    """Symbols per repo-relative path for ``paths`` under ``root``."""
    out: dict[str, list[Symbol]] = {p: [] for p in paths}
    if not paths:
        return out
    cmd = [ctags_binary(), "--output-format=json", "--langmap=C:+.h", "--langmap=C:+.inc",
           "--langmap=C++:+.ino", "--langmap=C++:+.pde", "--langmap=DTS:+.overlay", "--fields=+neKStl",
           "--kinds-C=+px", "-f", "-", "-L", "-"]
    proc = subprocess.run(cmd, cwd=root, input="\n".join(paths) + "\n", capture_output=True,
                          timeout=timeout, text=True, errors="replace")
    if proc.returncode != 0:
        raise CtagsError(f"ctags failed in {root} (exit {proc.returncode}): {proc.stderr.strip()[:500]}")
    for line in proc.stdout.splitlines():
        try:
            tag = json.loads(line)
        except json.JSONDecodeError:
            continue
        if tag.get("_type") != "tag":
            continue
        raw_kind = tag.get("kind", "")
        kind = LANGUAGE_KINDS.get((tag.get("language", ""), raw_kind)) or SYMBOL_KINDS.get(raw_kind)
        path = tag.get("path")
        if kind is None or path not in out:
            continue
        line_no = int(tag.get("line", 0))
        out[path].append(Symbol(tag["name"], kind, path, line_no, int(tag.get("end", line_no)),
                                tag.get("scope"), tag.get("signature")))
    for symbols in out.values():
        symbols.sort(key=lambda s: (s.line, s.name))
    return out
