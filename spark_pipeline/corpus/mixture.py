"""Stage 4: the ordered training mixture (paper §3.2 stage 4, §3.3, §8.3).

No shuffling: the order is the pairs' order in the manifest, then each pair's chunk order,
and it is written down as a global ``seq`` column. The ``domain_general`` recipe interleaves
general C samples evenly (a running accumulator, so the same inputs give the same order).

On the way (:mod:`.integrity`): the in-domain evaluation samples leave training by
identity, whatever the contamination setting; a sample longer than ``max_tokens ×
chars_per_token`` characters is split at the last newline, period or semicolon before the
limit into several rows instead of being cut (the paper's truncation loses the rest);
exact and near duplicates are dropped, the first occurrence kept; every row that copies or
contains an evaluation text is recorded, and dropped unless ``drop_contaminated`` is off
(then kept on purpose, and recorded as such). Every row ends with the EOS text.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from spark_pipeline.corpus.chunking import chunk_section
from spark_pipeline.corpus.integrity import (
    Contamination,
    Duplicate,
    EvalIndex,
    deduplicate,
    lsh_matches,
    split_out,
)
from spark_pipeline.corpus.parquet import CONTAMINATION_SCHEMA, DUPLICATE_SCHEMA, MIXTURE_SCHEMA, write_table
from spark_pipeline.corpus.settings import CorpusSettings
from spark_pipeline.corpus.stages import sample_rows
from spark_pipeline.records import atomic_write_json

RECIPES = ("domain_only", "domain_general")


def category_characters(rows: list[dict]) -> dict[str, int]:
    """Characters of text per category (what the model card turns into estimated tokens)."""
    out: Counter = Counter()
    for r in rows:
        out[r["category"]] += len(r["text"])
    return dict(sorted(out.items()))

def truncate(text: str, max_chars: int) -> tuple[str, bool]:
    """The first piece of ``text`` (see :func:`split_text`) and whether anything was left over."""
    pieces = split_text(text, max_chars)
    return pieces[0], len(pieces) > 1


def split_text(text: str, max_chars: int) -> list[str]:
    """``text`` in pieces of at most ``max_chars``, each cut after the last newline, period or
    semicolon before the limit (a hard cut only where there is none)."""
    pieces = []
    while len(text) > max_chars:
        window = text[:max_chars]
        cut = max(window.rfind("\n"), window.rfind(". "), window.rfind(";"))
        end = cut + 1 if cut > 0 else max_chars
        pieces.append(text[:end])
        text = text[end:].lstrip("\n")
    if text.strip() or not pieces:
        pieces.append(text)
    return pieces


def general_samples(pool: Path, settings: CorpusSettings) -> list[dict]:
    """The general C pool as samples: each file chunked, cleaned and filtered like domain data."""
    chunks = []
    files = sorted(p for p in Path(pool).rglob("*") if p.suffix in {".c", ".h", ".cc", ".cpp"} and p.is_file())
    for path in files:
        rel = path.relative_to(pool).as_posix()
        text = f"// File: {rel}\n" + path.read_text(encoding="utf-8", errors="replace")
        pieces, _ = chunk_section(rel, text, settings.chunking.max_chars, "general_pool")
        for piece in pieces:
            chunks.append({"pair_id": "general_pool", "category": "general", "section_id": rel,
                           "chunk_index": len(chunks), "text": piece.text, "boundary": piece.boundary,
                           "source_files": [rel]})
    kept, _ = sample_rows(chunks, settings)
    for row in kept:
        row["category"] = "general"  # the pool is general by definition
    return kept


@dataclass
class MixtureResult:
    rows: list[dict]
    contamination: list[Contamination] = field(default_factory=list)
    dropped_contaminated: int = 0
    duplicates: list[Duplicate] = field(default_factory=list)
    eval_removed: int = 0
    split_samples: int = 0
    truncated: int = 0
    general_requested: float = 0.0
    general_achieved: float = 0.0
    lsh_contamination: int | None = None


def assemble(domain: list[dict], general: list[dict], eval_rows: list[dict], settings: CorpusSettings,
             recipe: str | None = None, general_fraction: float | None = None,
             compare_lsh: bool = False) -> MixtureResult:
    """Order, split, deduplicate, decontaminate and interleave. ``domain`` is in pipeline
    order; ``eval_rows`` are both evaluation sets."""
    mix = settings.mixture
    recipe = recipe or mix.recipe
    fraction = mix.general_fraction if general_fraction is None else general_fraction
    if recipe not in RECIPES:
        raise ValueError(f"unknown mixture recipe {recipe!r} (expected one of {', '.join(RECIPES)})")
    if recipe == "domain_general" and not 0 < fraction < 1:
        raise ValueError(f"recipe domain_general needs 0 < general_fraction < 1, got {fraction}")
    result = MixtureResult([], general_requested=fraction if recipe == "domain_general" else 0.0)

    domain, removed = split_out(domain, eval_rows)  # evaluation samples never train, by construction
    result.eval_removed = len(removed)

    stream: list[tuple[dict, str]] = []
    if recipe == "domain_general" and general and domain:
        wanted = round(fraction / (1 - fraction) * len(domain))
        pool = general[: min(wanted, len(general))]
        per_domain = len(pool) / len(domain)
        acc, g = 0.0, 0
        for row in domain:
            stream.append((row, "domain"))
            acc += per_domain
            while acc >= 1.0 - 1e-9 and g < len(pool):
                stream.append((pool[g], "general"))
                g += 1
                acc -= 1.0
        stream.extend((r, "general") for r in pool[g:])
    else:
        stream = [(row, "domain") for row in domain]

    pieces: list[dict] = []
    for row, source in stream:
        parts = split_text(row["text"], mix.max_chars)
        result.split_samples += len(parts) > 1
        for k, text in enumerate(parts):
            pieces.append({"text": text, "category": row["category"], "source": source, "pair_id": row["pair_id"],
                           "section_id": row["section_id"] if len(parts) == 1 else f"{row['section_id']}~{k + 1}",
                           "chunk_index": row["chunk_index"], "sample_hash": row["sample_hash"],
                           "truncated": False})

    ev = settings.eval
    kept, result.duplicates = deduplicate(pieces, ev.minhash_threshold, ev.minhash_permutations)
    index = EvalIndex(eval_rows, ev.minhash_threshold)
    clean = []
    for row in kept:
        hit = index.match(row)
        if hit is not None:
            result.contamination.append(hit)
            if ev.drop_contaminated:
                result.dropped_contaminated += 1
                continue
        clean.append(row)
    if compare_lsh:
        result.lsh_contamination = lsh_matches(kept, eval_rows, ev.minhash_threshold, ev.minhash_permutations)

    for row in pieces:
        row["seq"] = -1  # not in the mixture; the records of drops show -1 for it
    for seq, row in enumerate(clean):
        row["seq"] = seq
        result.rows.append({**row, "text": row["text"] + mix.eos})
    n_general = sum(1 for r in result.rows if r["source"] == "general")
    result.general_achieved = n_general / len(result.rows) if result.rows else 0.0
    return result


def write_mixture(out_dir: Path, result: MixtureResult, settings: CorpusSettings, lineage: dict,
                  recipe: str) -> dict:
    """Write the shards and ``manifest.json`` into ``out_dir``, replacing what was there only
    once everything is written. Returns the manifest."""
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows = result.rows
    shard_rows = max(settings.mixture.shard_rows, 1)
    shards = []
    rows = [{k: r.get(k) for k in MIXTURE_SCHEMA.names} for r in rows]
    for i in range(0, max(len(rows), 1), shard_rows):
        part = rows[i:i + shard_rows]
        if not part and rows:
            break
        name = f"shard-{len(shards):05d}.parquet"
        digest = write_table(tmp / name, part, MIXTURE_SCHEMA, lineage)
        shards.append({"file": name, "rows": len(part), "sha256": digest,
                       "first_seq": part[0]["seq"] if part else None, "last_seq": part[-1]["seq"] if part else None})
    chars = sum(len(r["text"]) for r in rows)
    mixture_hash = hashlib.sha256(json.dumps([s["sha256"] for s in shards]).encode()).hexdigest()
    manifest = {
        "mixture_hash": mixture_hash,
        "recipe": {"name": recipe, "general_fraction_requested": result.general_requested,
                   "general_fraction_achieved": round(result.general_achieved, 4),
                   "max_tokens": settings.mixture.max_tokens, "chars_per_token": settings.mixture.chars_per_token,
                   "eos": settings.mixture.eos, "shard_rows": shard_rows},
        "samples": len(rows),
        "characters": chars,
        "estimated_tokens": int(chars / settings.mixture.estimate_chars_per_token),
        "truncated": result.truncated,
        "split_samples": result.split_samples,
        "categories": dict(sorted(Counter(r["category"] for r in rows).items())),
        "category_characters": category_characters(rows),
        "sources": dict(sorted(Counter(r["source"] for r in rows).items())),
        "pairs": dict(Counter(r["pair_id"] for r in rows)),  # rows per pair, in first-appearance order
        "evaluation_samples_removed": result.eval_removed,
        "duplicates": {"dropped": len(result.duplicates),
                       "exact": sum(d.kind == "exact" for d in result.duplicates),
                       "near": sum(d.kind == "near" for d in result.duplicates),
                       "cases": "duplicates.parquet"},
        "contamination": {"found": len(result.contamination), "dropped": result.dropped_contaminated,
                          "kept_on_purpose": len(result.contamination) - result.dropped_contaminated,
                          "exact": sum(c.kind == "exact" for c in result.contamination),
                          "near": sum(c.kind == "near" for c in result.contamination),
                          "contained": sum(c.kind == "contained" for c in result.contamination),
                          "cases": "contamination.parquet"},
        "shards": shards,
        "lineage": lineage,
    }
    write_table(tmp / "duplicates.parquet", [d.to_row("mixture") for d in result.duplicates], DUPLICATE_SCHEMA, lineage)
    write_table(tmp / "contamination.parquet",
                [{**c.to_row(), "dropped": settings.eval.drop_contaminated} for c in result.contamination],
                CONTAMINATION_SCHEMA, lineage)
    atomic_write_json(tmp / "manifest.json", manifest)
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return manifest
