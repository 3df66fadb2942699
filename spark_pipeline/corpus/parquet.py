"""Deterministic Parquet: the same rows give the same bytes, so a data version can be the
file's hash. Lineage (the versions a file was built from) travels in its schema metadata."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from spark_pipeline.records import atomic_write_bytes, sha256_bytes

LINEAGE_KEY = b"spark.lineage"


def write_table(path: Path, rows: list[dict], schema: pa.Schema, lineage: dict | None = None) -> str:
    """Write rows atomically; returns the file's sha256."""
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    table = pa.table(columns, schema=schema)
    if lineage is not None:
        table = table.replace_schema_metadata({LINEAGE_KEY: json.dumps(lineage, sort_keys=True).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True)
    data = buf.getvalue()
    atomic_write_bytes(Path(path), data)
    return sha256_bytes(data)


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def read_lineage(path: Path) -> dict:
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[LINEAGE_KEY]) if LINEAGE_KEY in meta else {}


CHUNK_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("category", pa.string()), ("section_id", pa.string()),
    ("chunk_index", pa.int64()), ("text", pa.string()), ("boundary", pa.string()),
    ("source_files", pa.list_(pa.string())),
])

SAMPLE_SCHEMA = pa.schema(list(CHUNK_SCHEMA) + [
    ("category_rule", pa.string()), ("sample_hash", pa.string()),
    ("chars_before", pa.int64()), ("chars_after", pa.int64()), ("separator_lines", pa.int64()),
    ("repeats_collapsed", pa.int64()), ("art_removed", pa.int64()), ("comment_blocks_removed", pa.int64()),
    ("garbage_ratio", pa.float64()), ("control_chars_removed", pa.int64()),
])

REJECTION_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("stage", pa.string()), ("input", pa.string()), ("section_id", pa.string()),
    ("chunk_index", pa.int64()), ("reason", pa.string()), ("message", pa.string()), ("text", pa.string()),
])

MIXTURE_SCHEMA = pa.schema([
    ("seq", pa.int64()), ("text", pa.string()), ("category", pa.string()), ("source", pa.string()),
    ("pair_id", pa.string()), ("section_id", pa.string()), ("chunk_index", pa.int64()),
    ("sample_hash", pa.string()), ("truncated", pa.bool_()),
])

DUPLICATE_SCHEMA = pa.schema([
    ("scope", pa.string()), ("kind", pa.string()), ("jaccard", pa.float64()), ("dropped", pa.string()),
    ("kept", pa.string()), ("dropped_seq", pa.int64()), ("kept_seq", pa.int64()),
])

CONTAMINATION_SCHEMA = pa.schema([
    ("kind", pa.string()), ("jaccard", pa.float64()), ("containment", pa.float64()), ("train", pa.string()),
    ("train_seq", pa.int64()), ("eval", pa.string()), ("eval_split", pa.string()), ("dropped", pa.bool_()),
])

EVAL_SCHEMA = pa.schema([
    ("split", pa.string()), ("pair_id", pa.string()), ("category", pa.string()), ("section_id", pa.string()),
    ("chunk_index", pa.int64()), ("text", pa.string()), ("sample_hash", pa.string()),
])

SPEC_ITEM_SCHEMA = pa.schema(list(EVAL_SCHEMA) + [
    ("section_title", pa.string()), ("section_text", pa.string()), ("code_prefix", pa.string()),
    ("reference", pa.string()), ("source_files", pa.list_(pa.string())),
])
