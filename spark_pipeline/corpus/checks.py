"""The corpus asset checks as plain functions over rows, so each can be shown to fail."""

from __future__ import annotations

from spark_pipeline.corpus.stages import text_hash


def samples_within_bounds(rows: list[dict], min_chars: int, max_chars: int) -> tuple[bool, list[str]]:
    bad = [f"{r['pair_id']}:{r['section_id']}#{r['chunk_index']} ({len(r['text'].strip())} chars)"
           for r in rows if not min_chars <= len(r["text"].strip()) <= max_chars]
    return not bad, bad


def rows_end_with_eos(rows: list[dict], eos: str) -> tuple[bool, list[int]]:
    bad = [r["seq"] for r in rows if not r["text"].endswith(eos)]
    return not bad, bad


def seq_strictly_increasing(seqs: list[int]) -> tuple[bool, list[int]]:
    bad = [i for i in range(1, len(seqs)) if seqs[i] <= seqs[i - 1]]
    return not bad, bad


def no_eval_in_training(train_rows: list[dict], eval_rows: list[dict], eos: str) -> tuple[bool, list[int]]:
    """No training row is an evaluation sample: by identity (pair, section, chunk; a split
    row keeps its sample's identity), by hash, or by its normalised text."""
    from spark_pipeline.corpus.integrity import exact_key, identity

    eval_ids = {identity(r) for r in eval_rows}
    eval_hashes = {r["sample_hash"] for r in eval_rows}
    eval_keys = {exact_key(r["text"]) for r in eval_rows}

    def base(row):
        return (row["pair_id"], row["section_id"].split("~")[0], int(row["chunk_index"]))

    bad = [r["seq"] for r in train_rows
           if base(r) in eval_ids or r["sample_hash"] in eval_hashes
           or text_hash(r["text"].removesuffix(eos)) in eval_hashes or exact_key(r["text"].removesuffix(eos)) in eval_keys]
    return not bad, bad


def no_duplicates(train_rows: list[dict], eos: str) -> tuple[bool, list[int]]:
    """No two training rows have the same normalised text (recounted from the rows)."""
    from spark_pipeline.corpus.integrity import exact_key

    seen: set[str] = set()
    bad = []
    for r in train_rows:
        key = exact_key(r["text"].removesuffix(eos))
        if key in seen:
            bad.append(r["seq"])
        seen.add(key)
    return not bad, bad


def manifest_matches_rows(manifest: dict, rows: list[dict], duplicates: int, contamination: int) -> tuple[bool, list[str]]:
    """Every count of the manifest equals a recount from what was written."""
    from collections import Counter

    from spark_pipeline.corpus.mixture import category_characters

    wrong = []
    expect = {"samples": len(rows), "characters": sum(len(r["text"]) for r in rows),
              "categories": dict(sorted(Counter(r["category"] for r in rows).items())),
              "category_characters": category_characters(rows),
              "sources": dict(sorted(Counter(r["source"] for r in rows).items()))}
    for key, value in expect.items():
        if manifest.get(key) != value:
            wrong.append(f"{key}: manifest {manifest.get(key)!r}, recount {value!r}")
    if sum(s["rows"] for s in manifest.get("shards", [])) != len(rows):
        wrong.append("shard row counts do not add up to the rows")
    if manifest.get("duplicates", {}).get("dropped") != duplicates:
        wrong.append(f"duplicates: manifest {manifest.get('duplicates', {}).get('dropped')}, listed {duplicates}")
    if manifest.get("contamination", {}).get("found") != contamination:
        wrong.append(f"contamination: manifest {manifest.get('contamination', {}).get('found')}, listed {contamination}")
    return not wrong, wrong
