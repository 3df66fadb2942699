"""``release``: one release folder per evaluated checkpoint (model card, merged weights,
adapters, lineage, checksums), rebuilt when the checkpoint's evaluation changes."""

import json

import dagster as dg
from pydantic import Field

from spark_pipeline.defs.evaluation import _checkpoint_path, checkpoint_partitions
from spark_pipeline.defs.resources import AFTER_UPSTREAM, SparkConfig, SparkStorage, stage_asset
from spark_pipeline.records import atomic_write_text
from spark_pipeline.release.build import UPLOADED, ReleaseError, ReleaseSettings, build_release
from spark_pipeline.release.card import card_inputs
from spark_pipeline.training.launch import base_model_folder
from spark_pipeline.training.settings import TrainingSettings


class ReleaseConfig(dg.Config):
    upload: str | None = Field(default=None, pattern=r"^gs://.+", description="gs://bucket/prefix to copy the "
                               "release to; unset: the profile's release.upload, else $SPARK_RELEASE_URL, else "
                               "nothing is uploaded")


@stage_asset(
    "release",
    kinds={"huggingface", "safetensors"},
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
    blocked = storage.path("evaluation", key, "BLOCKED")
    if blocked.exists():
        raise dg.Failure(f"checkpoint {key}'s evaluation is blocked ({blocked}): it gets no release")
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
        inputs = card_inputs(storage.path(), key, lineage, settings, ev.min_samples_per_category)
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
        atomic_write_text(out / UPLOADED, uploaded + "\n")  # where a withdrawal must mark it too
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
