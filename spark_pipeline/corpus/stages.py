"""The per-pair corpus stages as functions from files to rows: what the Dagster assets call."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from spark_pipeline.corpus.categories import categorize
from spark_pipeline.corpus.chunking import chunk_mapping
from spark_pipeline.corpus.cleaning import Cleaner, default_filters, run_filters
from spark_pipeline.corpus.settings import CorpusSettings
from spark_pipeline.records import Rejection, preview, read_json


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


class CorpusInputError(RuntimeError):
    """No pair has samples built from its current mapping."""


def stale_reason(root: Path, pair_id: str, registry: dict) -> str | None:
    """Why a pair's samples under storage ``root`` are not from its current mapping and
    manifest entry, or None.

    Samples carry in their lineage the mapping file's hash, the repository revision and the
    pair record's version they were built from; a failed SpecMap re-run removes the mapping
    (``specmap_mappings``), so samples of a pair that failed never pass for current."""
    from spark_pipeline.corpus.parquet import read_lineage

    path = Path(root) / "corpus" / "samples" / f"{pair_id}.parquet"
    if not path.exists():
        return "no quality_samples"
    sidecar = read_json(Path(root) / "specmap" / pair_id / "mapping.json")
    if not sidecar:
        return "no current mapping (SpecMap never ran for it, or its last run failed)"
    lineage = read_lineage(path)
    if lineage.get("specmap_mappings") != sidecar.get("mapping_sha256", "")[:16]:
        return "its samples were built from an earlier mapping: materialize section_chunks and quality_samples"
    version = registry.get("versions", {}).get(pair_id)
    if lineage.get("pair_version") not in (None, version):
        return "its manifest entry changed since its samples were built"
    return None


def current_samples(root: Path) -> tuple[dict, list[dict], list[dict], dict, dict]:
    """(registry, in-domain samples in pipeline order, held-out samples, sample-file versions,
    skipped pairs with the reason) under storage ``root``. Only samples built from each pair's
    current mapping count (:func:`stale_reason`); none at all raises :class:`CorpusInputError`."""
    from spark_pipeline.corpus.parquet import read_rows
    from spark_pipeline.records import sha256_file
    from spark_pipeline.specmap.pairs import current_registry

    registry = current_registry(root)
    domain, held_out, versions, skipped = [], [], {}, {}
    for pair_id in registry["order"]:
        reason = stale_reason(root, pair_id, registry)
        if reason:
            skipped[pair_id] = reason
            continue
        path = Path(root) / "corpus" / "samples" / f"{pair_id}.parquet"
        versions[pair_id] = sha256_file(path)[:16]
        rows = read_rows(path)
        (held_out if pair_id in registry["held_out"] else domain).extend(rows)
    if not versions:
        raise CorpusInputError("no pair has current quality_samples: "
                               + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return registry, domain, held_out, versions, skipped


def check_pairs_manifest(root: Path, recorded: str | None, built: str, again: str) -> dict:
    """The current registry, when ``built`` (an asset's output, which recorded the registry's
    ``entries_digest`` it was built from as ``recorded``) still matches the manifest in use;
    otherwise :class:`~spark_pipeline.specmap.pairs.ManifestChanged` saying what to
    materialize ``again``. A held-out pair never reaches training through a stale output."""
    from spark_pipeline.specmap.pairs import ManifestChanged, current_registry

    registry = current_registry(root)
    if recorded != registry.get("entries_digest"):
        raise ManifestChanged(f"{built} was built from " + ("an earlier pairs manifest" if recorded else
                              "a pairs manifest it did not record") + f" than {registry.get('manifest')}: "
                              f"materialize {again}")
    return registry
