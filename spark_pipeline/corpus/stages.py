"""The per-pair corpus stages as functions from files to rows: what the Dagster assets call."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from spark_pipeline.corpus.categories import categorize
from spark_pipeline.corpus.chunking import chunk_mapping
from spark_pipeline.corpus.cleaning import Cleaner, default_filters, run_filters
from spark_pipeline.corpus.settings import CorpusSettings
from spark_pipeline.records import Rejection, preview


def text_hash(text: str) -> str:
    """The identity of a sample's text: sha256 of the cleaned text (cleaning has already
    normalised line endings and tabs; near-duplicates are MinHash's business)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def rejection_row(pair_id: str, r: Rejection, section_id: str = "", chunk_index: int = -1) -> dict:
    return {"pair_id": pair_id, "stage": r.stage, "input": r.input, "section_id": section_id,
            "chunk_index": chunk_index, "reason": r.reason, "message": r.message, "text": preview(r.text)}


def chunk_rows(mapping: Path, pair_id: str, category: str, settings: CorpusSettings,
               workers: int | None = None) -> tuple[list[dict], list[dict]]:
    """Stage 2 for one pair: chunk rows and rejection rows."""
    data = Path(mapping).read_bytes()
    if workers is None:
        workers = settings.chunking.workers_for(len(data))
    chunks, rejections = chunk_mapping(data, f"{pair_id}/mapping.txt", settings.chunking, workers)
    rows = [{"pair_id": pair_id, "category": category, "section_id": c.section_id, "chunk_index": c.chunk_index,
             "text": c.text, "boundary": c.boundary, "source_files": c.source_files} for c in chunks]
    rejected = [rejection_row(pair_id, r, r.input.rsplit("#", 1)[-1] if "#" in r.input else "") for r in rejections]
    return rows, rejected


def sample_rows(chunks: list[dict], settings: CorpusSettings,
                workers: int | None = None) -> tuple[list[dict], list[dict]]:
    """Stage 3 for one pair's chunks: cleaned, filtered, categorised samples and rejections,
    in chunk order. Batches of chunks are spread over ``workers`` processes."""
    n = workers if workers is not None else settings.chunking.workers_for(sum(len(c["text"]) for c in chunks))
    if n > 1 and len(chunks) > 64:
        from concurrent.futures import ProcessPoolExecutor

        size = max(16, len(chunks) // (n * 8))
        batches = [chunks[i:i + size] for i in range(0, len(chunks), size)]
        kept: list[dict] = []
        rejected: list[dict] = []
        with ProcessPoolExecutor(max_workers=n) as pool:
            for k, r in pool.map(_sample_batch, [(b, settings) for b in batches]):
                kept.extend(k)
                rejected.extend(r)
        return kept, rejected
    return _sample_batch((chunks, settings))


def _sample_batch(args) -> tuple[list[dict], list[dict]]:
    chunks, settings = args
    cleaner = Cleaner(settings.cleaning)
    filters = default_filters(settings.cleaning, settings.chunking.min_chars, settings.chunking.max_chars)
    kept: list[dict] = []
    rejected: list[dict] = []
    for chunk in chunks:
        text, stats = cleaner.clean(chunk["text"])
        ok, reason = run_filters(filters, text, stats)
        if not ok:
            message = (f"{chunk['pair_id']}: section {chunk['section_id']} chunk {chunk['chunk_index']}: {reason}"
                       + (f" (garbage {stats.garbage_ratio:.0%})" if reason == "garbage" else ""))
            rejected.append({"pair_id": chunk["pair_id"], "stage": "quality", "input": f"{chunk['pair_id']}/chunks",
                             "section_id": chunk["section_id"], "chunk_index": chunk["chunk_index"],
                             "reason": reason, "message": message, "text": preview(text)})
            continue
        category, rule = categorize(text, list(chunk["source_files"] or []), chunk["category"])
        kept.append({**chunk, "text": text, "category": category, "category_rule": rule,
                     "sample_hash": text_hash(text), **vars(stats)})
    return kept, rejected


def reason_counts(rows: list[dict]) -> dict[str, int]:
    return dict(sorted(Counter(r["reason"] for r in rows).items()))
