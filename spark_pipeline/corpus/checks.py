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
    """No training row carries an evaluation sample's hash, before or after EOS and cutting."""
    eval_hashes = {r["sample_hash"] for r in eval_rows}
    bad = [r["seq"] for r in train_rows
           if r["sample_hash"] in eval_hashes or text_hash(r["text"].removesuffix(eos)) in eval_hashes]
    return not bad, bad
