"""Scanning a repository safely.

Only source files are read (C/C++, assembly, device tree, linker scripts, Kconfig, YAML
bindings). Each file that cannot be used becomes a :class:`~spark_pipeline.records.Rejection`
naming it: a symlink that leaves the repository, a file over the size limit (checked before
reading, so a 100 MB one-line file costs one ``stat``), a binary file, a minified or
generated file with an absurdly long line. A file that is not UTF-8 is kept, decoded as
Latin-1 (every byte maps), and noted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from spark_pipeline.records import Rejection

SOURCE_SUFFIXES = frozenset({
    ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx", ".inc",
    ".s", ".S", ".asm", ".dts", ".dtsi", ".overlay", ".ld", ".lds", ".yaml", ".yml",
})
SOURCE_NAMES = frozenset({"Kconfig", "Makefile", "CMakeLists.txt"})


@dataclass
class ScanLimits:
    max_file_bytes: int = 2 * 1024 * 1024
    """Files above this size are skipped unread (generated register dumps, blobs)."""
    max_line_chars: int = 5000
    """A line longer than this marks a minified or generated file."""


@dataclass
class RepoFile:
    path: str  # repo-relative, POSIX
    text: str
    encoding: str = "utf-8"

    @property
    def folder(self) -> str:
        return os.path.dirname(self.path) or "."


@dataclass
class RepoScan:
    root: Path
    files: dict[str, RepoFile] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)
    notes: list[Rejection] = field(default_factory=list)
    other_files: int = 0  # files that are not source (documentation, images, IDE state)

    @property
    def folders(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for path, f in self.files.items():
            out.setdefault(f.folder, []).append(path)
        return out


def is_source(path: str) -> bool:
    name = os.path.basename(path)
    return name in SOURCE_NAMES or os.path.splitext(name)[1] in SOURCE_SUFFIXES


def _candidates(root: Path, listed: set[str] | None) -> list[str]:
    if listed is not None:
        return sorted(listed)
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in filenames:
            found.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(found)


def scan_repository(root: Path, listed: set[str] | None = None, limits: ScanLimits | None = None,
                    label: str = "") -> RepoScan:
    """Read every usable source file under ``root`` (or only the ``listed`` paths)."""
    limits = limits or ScanLimits()
    root = Path(root).resolve()
    scan = RepoScan(root)
    who = label or str(root)

    def reject(path: str, reason: str, message: str) -> None:
        scan.rejections.append(Rejection("scan", f"{who}:{path}", reason, message))

    for rel in _candidates(root, listed):
        if not is_source(rel):
            scan.other_files += 1
            continue
        full = root / rel
        if full.is_symlink():
            target = full.resolve()
            if not target.is_relative_to(root):
                reject(rel, "symlink_outside_repo", f"{who}: {rel} is a symlink to {os.readlink(full)}, "
                       "outside the repository; skipped")
            else:
                reject(rel, "symlink", f"{who}: {rel} is a symlink inside the repository; its target is read instead")
            continue
        try:
            size = full.stat().st_size
        except OSError as exc:
            reject(rel, "unreadable", f"{who}: {rel} cannot be read ({exc})")
            continue
        if size > limits.max_file_bytes:
            reject(rel, "too_large", f"{who}: {rel} is {size:,} bytes, over the {limits.max_file_bytes:,}-byte "
                   "limit for source files; skipped unread")
            continue
        try:
            data = full.read_bytes()
        except OSError as exc:
            reject(rel, "unreadable", f"{who}: {rel} cannot be read ({exc})")
            continue
        if b"\0" in data[:8192]:
            reject(rel, "binary", f"{who}: {rel} holds NUL bytes: a binary file, skipped")
            continue
        longest = max((len(line) for line in data.split(b"\n")), default=0)
        if longest > limits.max_line_chars:
            reject(rel, "long_line", f"{who}: {rel} has a {longest:,}-character line (minified or generated); skipped")
            continue
        try:
            text = data.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError as exc:
            text = data.decode("latin-1")
            encoding = "latin-1"
            scan.notes.append(Rejection("scan", f"{who}:{rel}", "non_utf8",
                                        f"{who}: {rel} is not UTF-8 (byte {exc.start}); read as Latin-1"))
        scan.files[rel] = RepoFile(rel, text.replace("\r\n", "\n"), encoding)
    return scan
