"""``release``: one release folder per evaluated checkpoint (model card, merged weights,
adapters, lineage, checksums), rebuilt when the checkpoint's evaluation changes."""

import json

import dagster as dg
import pyarrow.parquet as pq
from pydantic import Field

from spark_pipeline.defs.evaluation import _checkpoint_path, checkpoint_partitions
from spark_pipeline.defs.resources import AFTER_UPSTREAM, OWNERS, SparkConfig, SparkStorage
from spark_pipeline.release.build import ReleaseError, ReleaseSettings, build_release
from spark_pipeline.training.launch import base_model_folder
from spark_pipeline.training.settings import TrainingSettings


class ReleaseConfig(dg.Config):
    upload: str = Field(default="", description="gs://bucket/prefix to copy the release to; empty: the profile's "
                        "release.upload, else $SPARK_RELEASE_URL, else nothing is uploaded")


def card_inputs(storage: SparkStorage, key: str, lineage: dict, settings: TrainingSettings, min_samples: int) -> dict:
    """What the model card shows beside the release's own numbers: the training settings,
    the mixture and the tokenized cache, the pairs with their records, the evaluation table
    and the report's plots."""
    manifest_file = storage.path("corpus", "mixture", "manifest.json")
    mixture = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
    if mixture.get("mixture_hash") != lineage.get("mixture_hash"):
        mixture = {"mixture_hash": lineage.get("mixture_hash")}  # a later mixture: only the hash is this one's
    # estimated tokens per category, at the mixture's own characters-per-token ratio
    ratio = mixture.get("estimated_tokens", 0) / max(1, mixture.get("characters", 0))
    category_tokens = {c: int(n * ratio) for c, n in (mixture.get("category_characters") or {}).items()}
    cache_file = storage.path("tokens", lineage.get("tokenized_cache", "-"), "cache.json")
    pairs = []
    held_out = []
    for record in sorted(storage.path("pairs").glob("*/pair.json")):
        pair = json.loads(record.read_text())
        if pair["id"] in lineage.get("pairs", {}):
            pairs.append(pair)
        elif pair.get("held_out"):
            held_out.append(pair["id"])
    table = storage.path("evaluation", key, "table.md")
    rows_file = storage.path("evaluation", key, "table.parquet")
    rows = pq.read_table(rows_file).to_pylist() if rows_file.exists() else []
    few = sorted({r["category"] for r in rows if r.get("few_samples") and r["category"] != "all"})
    headline = ""
    for split in ("in_domain", "held_out"):
        base = next((r for r in rows if r["model"] == "base" and r["split"] == split and r["category"] == "all"), None)
        mine = next((r for r in rows if r["model"] != "base" and r["split"] == split and r["category"] == "all"), None)
        if base and mine:
            headline += (f"{split.replace('_', '-')} perplexity {base['perplexity']:.3f} → {mine['perplexity']:.3f} "
                         f"({mine['ppl_reduction_vs_base']:.1%} lower, 95% interval "
                         f"[{mine.get('ppl_reduction_vs_base_lo', float('nan')):.1%}, "
                         f"{mine.get('ppl_reduction_vs_base_hi', float('nan')):.1%}]). ")
    report = storage.path("evaluation", "report")
    return {"training_settings": settings.to_dict(), "mixture": mixture,
            "cache": json.loads(cache_file.read_text()) if cache_file.exists() else {},
            "category_tokens": category_tokens, "pairs": pairs, "held_out_pairs": held_out,
            "eval_rows": rows, "eval_files": [str(f) for f in (table, rows_file) if f.exists()],
            "few_categories": few,
            "min_samples": min_samples, "headline": headline.strip(),
            "plots": sorted(str(p) for p in report.glob("*.png")) if report.exists() else [],
            "demo_model": not settings.base_model}


@dg.asset(
    kinds={"huggingface", "safetensors"},
    owners=OWNERS,
    tags={"stage": "release"},
    group_name="release",
    partitions_def=checkpoint_partitions,
    deps=["checkpoint_eval"],
    automation_condition=AFTER_UPSTREAM,
    code_version="1",
    description="From an evaluated checkpoint to what a user publishes and serves: a generated model card "
    "(README.md, Hugging Face format, with lineage, settings, the evaluation with its intervals, limits), merged "
    "weights loadable without PEFT (checked against base + adapter), the adapter, an adapter without embedding "
    "layers for serving engines (its perplexity cost measured), lineage.json and SHA256SUMS. "
    "{storage}/releases/{checkpoint}/; uploaded only when configured.",
)
def release(context: dg.AssetExecutionContext, config: ReleaseConfig, storage: SparkStorage,
            spark_config: SparkConfig):
    import os

    from spark_pipeline.evaluation.evaluate import EvalSettings, load_eval_samples
    from spark_pipeline.tokens.tokenizer import load_tokenizer

    key = context.partition_key
    try:
        rel = ReleaseSettings.load(spark_config.name())
    except ReleaseError as exc:
        raise dg.Failure(str(exc)) from exc
    if not storage.path("evaluation", key, "table.parquet").exists():
        raise dg.Failure(f"checkpoint {key} has no evaluation table: materialize checkpoint_eval for it first")
    folder = _checkpoint_path(storage, key)
    settings = TrainingSettings.from_dict(json.loads((folder.parent.parent / "settings.json").read_text())) \
        if (folder.parent.parent / "settings.json").exists() else TrainingSettings.load(spark_config.name())
    ev = EvalSettings.load(spark_config.name())
    lineage = json.loads((folder / "lineage.json").read_text())
    tokenizer = load_tokenizer(lineage.get("tokenizer", settings.tokenizer))
    samples = load_eval_samples(storage.path("corpus", "eval"), tokenizer, settings.max_length,
                                ev.max_samples_per_category)
    out = storage.path("releases", key)
    try:
        inputs = card_inputs(storage, key, lineage, settings, ev.min_samples_per_category)
        info = build_release(folder, key, out, base_model_folder(settings, storage.path()), rel, samples, inputs,
                             tokenizer.pad_id, log=context.log.info)
    except ReleaseError as exc:
        raise dg.Failure(str(exc)) from exc
    upload = config.upload or rel.upload or os.environ.get("SPARK_RELEASE_URL", "")
    uploaded = None
    if upload:
        from spark_pipeline.training.gcs import CheckpointUploader

        context.log.info(f"uploading {out} to {upload.rstrip('/')}/{out.name}")
        uploader = CheckpointUploader(upload.rstrip("/"))
        uploader.submit(out)
        [status] = uploader.close()
        if status.state != "uploaded":
            raise dg.Failure(f"the release was built at {out} but its upload to {status.url} failed: {status.error}")
        uploaded = status.url
    verification = info["merged"]["verification"]
    cost = info["serving_adapter"]["cost"] or {}
    # the card without its front matter, and without its plots: they are files of the release, which the UI
    # cannot reach (the report's asset page has them)
    body = (out / "README.md").read_text().split("-->", 1)[-1]
    card = "\n".join(line for line in body.splitlines() if not line.startswith("![")) + \
        f"\n\nPlots: {out / 'plots'}"
    headline = (inputs["headline"] or "not evaluated yet") + f" Card: {out / 'README.md'}"
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)), "headline": dg.MetadataValue.md(headline[:900]),
        "model_card": dg.MetadataValue.md(card),
        "trainable_parameters": info["trainable_parameters"],
        "merged_max_abs_logit_diff": verification["max_abs_logit_diff"],
        "merged_top1_agreement": verification["top1_agreement"],
        "serving_adapter_left_out": dg.MetadataValue.json(info["serving_adapter"]["left_out"]),
        **({"serving_perplexity_change": cost["perplexity_change"]} if cost else {}),
        "files": len((out / "SHA256SUMS").read_text().splitlines()),
        "uploaded_to": uploaded or "not uploaded (set release.upload or SPARK_RELEASE_URL)"},
        data_version=dg.DataVersion(info["lineage_sha256"][:16] + "-" + info["adapter_digest"][:16]))
