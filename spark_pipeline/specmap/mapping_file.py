"""The mapping file and its JSON sidecar (docs/architecture.md, data contracts), and reading them back.

Mapping file: sections separated by a line of exactly 82 ``=``; each holds the datasheet
section (id, title, text) and the code mapped to it, each source file introduced by a
``// File: <repo-relative path>`` line. Sidecar: the same mapping, structured.
"""

from __future__ import annotations

import re
from pathlib import Path

from spark_pipeline.records import atomic_write_json, atomic_write_text, sha256_bytes
from spark_pipeline.specmap.judge import WITH_CODE
from spark_pipeline.specmap.pipeline import MappedFile, SpecMapResult

SEPARATOR = "=" * 82
FILE_MARKER = "// File: "
_FILE_RE = re.compile(r"^// File: (.+)$", re.M)


def _excerpt(mapped: MappedFile, lines: list[str], max_lines: int, context: int) -> str:
    if not mapped.symbols:
        return "\n".join(lines[:max_lines])
    ranges = sorted((max(s.symbol.line - context, 1), min(s.symbol.end + context, len(lines)))
                    for s in mapped.symbols)
    merged: list[list[int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out: list[str] = []
    for start, end in merged:
        if out:
            out.append("// ...")
        out.extend(lines[start - 1:end])
        if len(out) >= max_lines:
            break
    return "\n".join(out[:max_lines])


def render_mapping(result: SpecMapResult, max_lines: int = 150, context: int = 1) -> str:
    parts: list[str] = []
    for m in result.sections:
        s = m.section
        pages = f", pages {s.page_start}-{s.page_end}" if s.page_start else ""
        head = [SEPARATOR, f"Section {s.id}: {s.title}", f"Source: {s.source}{pages}",
                f"Status: {m.verdict.status}" + (f" ({m.kind})" if m.kind else "")]
        if m.folders:
            head.append("Folders: " + ", ".join(f.path for f in m.folders))
        block = "\n".join(head) + "\n\n" + (s.text.strip() or "(no text)") + "\n"
        # Gap analysis: a section found not implemented keeps its candidates in the sidecar,
        # but no code in the mapping file, so unrelated code never reaches the corpus; a
        # section no program implements (electrical, package, ...) has no candidates at all.
        for f in (m.files if m.verdict.status in WITH_CODE else []):
            lines = result.scan.files[f.path].text.splitlines()
            block += f"\n{FILE_MARKER}{f.path}\n{_excerpt(f, lines, max_lines, context)}\n"
        parts.append(block)
    return "\n".join(parts)


def sidecar(result: SpecMapResult, mapping_sha256: str) -> dict:
    sections = []
    for m in result.sections:
        sections.append({
            **m.section.to_dict(),
            "names": m.names[:50],
            "status": m.verdict.status,
            "kind": m.kind,
            "weights": {n: round(w, 3) for n, w in list(m.weights.items())[:30]},
            "evidence": m.verdict.evidence,
            "judged_by": m.verdict.judged_by,
            "via_context": m.via_context,
            "section_probability": (round(m.section_probability, 4) if m.section_probability is not None
                                    else None),
            "candidates": [{"path": path, "probability": p} for path, p in
                           sorted(m.probabilities.items(), key=lambda kv: (-kv[1], kv[0]))[:10]],
            "folders": [{
                "path": folder.path, "score": folder.score, "reason": folder.reason,
                "files": [{
                    "path": f.path, "score": f.score, "reason": f.reason,
                    "symbols": [{**s.symbol.to_dict(), "score": s.score, "reason": s.reason} for s in f.symbols],
                } for f in folder.files],
            } for folder in m.folders],
        })
    return {
        "pair_id": result.pair_id,
        "revision": result.revision,
        "judge": result.judge,
        "judge_usage": result.usage,
        "mapping_sha256": mapping_sha256,
        "stats": result.stats(),
        "warnings": result.warnings,
        "sections": sections,
        "rejections": [r.to_dict() for r in result.rejections],
        "notes": [r.to_dict() for r in result.scan.notes],
    }


def write_mapping(result: SpecMapResult, out_dir: Path, max_lines: int = 150, context: int = 1) -> dict:
    """Write ``mapping.txt`` then ``mapping.json`` (each atomically; the sidecar last, so a
    sidecar always describes the mapping file beside it). Returns the sidecar."""
    text = render_mapping(result, max_lines, context)
    digest = sha256_bytes(text.encode("utf-8"))
    atomic_write_text(Path(out_dir) / "mapping.txt", text)
    meta = sidecar(result, digest)
    atomic_write_json(Path(out_dir) / "mapping.json", meta)
    return meta


def split_sections(text: str) -> list[str]:
    """The section blocks of a mapping file (the separator lines removed)."""
    blocks = re.split(rf"^{SEPARATOR}$\n?", text, flags=re.M)
    return [b for b in blocks if b.strip()]


def file_paths(text: str) -> list[str]:
    """Every ``// File:`` path in a mapping file, in order."""
    return [p.strip() for p in _FILE_RE.findall(text)]


def section_statuses(text: str) -> list[str | None]:
    out = []
    for block in split_sections(text):
        m = re.search(r"^Status: (\S+)(?: \(\w+\))?$", block, re.M)
        out.append(m.group(1) if m else None)
    return out


def check_mapping(text: str, sidecar_sections: list[dict], present: set[str]) -> dict:
    """The two asset checks on a mapping file: every section has a known status (in the text
    and the sidecar alike), and every ``// File:`` path exists at the pinned revision."""
    from spark_pipeline.specmap.judge import STATUSES

    statuses = section_statuses(text)
    without = [i for i, s in enumerate(statuses) if s not in STATUSES]
    sidecar_bad = [s.get("id") for s in sidecar_sections if s.get("status") not in STATUSES]
    paths = file_paths(text)
    missing = sorted({p for p in paths if p not in present})
    return {
        "status_ok": not without and not sidecar_bad and len(statuses) == len(sidecar_sections),
        "sections": len(statuses),
        "without_status": without,
        "sidecar_without_status": sidecar_bad,
        "file_markers": len(paths),
        "missing_paths": missing,
        "paths_ok": not missing,
    }
