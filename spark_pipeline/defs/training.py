"""``tokenized_cache`` and ``train_hero``: tokenization, and the LoRA run launched with
torchrun through Dagster Pipes (the training program is ``python -m spark_pipeline.training``)."""

import json
import os
import shutil

import dagster as dg
from pydantic import Field

from spark_pipeline.defs.resources import SparkConfig, SparkStorage
from spark_pipeline.plots import embed_png
from spark_pipeline.tokens.cache import CacheError, PackedDataset, build_cache
from spark_pipeline.training.launch import base_model_folder, prepare_run, tokenizer_name, torchrun_command
from spark_pipeline.training.settings import TrainingSettings


class TokenizeConfig(dg.Config):
    workers: int = Field(default=0, description="tokenizer processes; 0 means every core")
    tokenizer: str = Field(default="", description="dolma2-offline | hf:<path> | base_model; empty: the profile's")


@dg.asset(
    group_name="training",
    deps=["training_mixture"],
    code_version="1",
    description="§4.8: the mixture tokenized by parallel workers (order verified, restored if broken), "
    "samples over max_length split at line ends into several rows (nothing cut away), special-token text in "
    "source encoded as text, as a memory-mapped Arrow file keyed by mixture hash, tokenizer, "
    "max length and sample count; `.done` written last. <storage>/tokens/<key>/",
)
def tokenized_cache(context: dg.AssetExecutionContext, config: TokenizeConfig, storage: SparkStorage,
                    spark_config: SparkConfig):
    settings = TrainingSettings.load(spark_config.name())
    name = tokenizer_name(config.tokenizer or settings.tokenizer, settings, storage.path())
    workers = config.workers or (os.cpu_count() or 1)

    def progress(done, total):
        if done == total or done % max(1, total // 10) == 0:
            context.log.info(f"tokenized {done}/{total} batches")

    try:
        info = build_cache(storage.path("corpus", "mixture"), storage.path("tokens"), name, settings.max_length,
                           workers, progress=progress)
    except CacheError as exc:
        raise dg.Failure(str(exc)) from exc
    packed = PackedDataset(info.path, settings.max_length, settings.shape.get("pad_token_id", 100277))
    if info.order_restored:
        context.log.info("sample order arrived out of sequence from the workers and was restored by sample_idx")
    return dg.MaterializeResult(
        metadata={"samples": info.samples, "tokens": info.tokens, "truncated": info.truncated,
                  "split_samples": info.split_samples, "rows": info.rows,
                  "split_share": dg.MetadataValue.float(round(info.split_samples / info.samples, 4) if info.samples else 0.0),
                  "order_restored": info.order_restored, "cache_key": info.key, "tokenizer": info.tokenizer,
                  "max_length": info.max_length, "packed_rows": len(packed),
                  "packing_efficiency": dg.MetadataValue.float(round(packed.efficiency, 4)),
                  "mixture_hash": info.mixture_hash, "seconds": info.seconds,
                  "path": dg.MetadataValue.path(info.path)},
        data_version=dg.DataVersion(info.key),
    )


class TrainConfig(dg.Config):
    nproc: int = Field(default=0, description="processes (GPUs); 0: the profile's gpus, capped by the GPUs "
                       "present, one process on a CPU-only machine")
    resume: str = Field(default="", description="'' (fresh), 'latest', a checkpoint folder or gs:// URL")
    max_steps: int = Field(default=0, description="stop after this step; 0: the profile's")
    run_name: str = Field(default="hero", description="folder under <storage>/runs/")
    upload: str = Field(default="", description="gs://bucket/prefix to copy checkpoints to in the background; "
                        "empty: $SPARK_CHECKPOINT_URL, or no upload")
    keep_local: bool = Field(default=False, description="keep local checkpoints after a verified upload")


def _loss_plot(messages: list[dict], path):
    from spark_pipeline.plots import _plt, save

    steps = [m["step"] for m in messages if m.get("kind") == "step"]
    losses = [m["train/loss"] for m in messages if m.get("kind") == "step"]
    if not steps:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 2.6), dpi=80)
    ax.plot(steps, losses, marker="o", ms=3)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("train/loss", fontsize=8)
    ax.set_title("training loss", fontsize=9)
    return save(fig, path)


@dg.asset(
    group_name="training",
    deps=["tokenized_cache"],
    pool="gpu",
    code_version="1",
    description="§4: LoRA continual pretraining, `torchrun --nproc_per_node=<gpus> -m spark_pipeline.training` "
    "through Dagster Pipes; checkpoints with lineage.json under <storage>/runs/<run>/.",
)
def train_hero(context: dg.AssetExecutionContext, config: TrainConfig, storage: SparkStorage,
               spark_config: SparkConfig, pipes_subprocess_client: dg.PipesSubprocessClient):
    import torch

    settings = TrainingSettings.load(spark_config.name())
    caches = [p.parent for p in storage.path("tokens").glob("*/.done")] if storage.path("tokens").exists() else []
    mixture = storage.path("corpus", "mixture", "manifest.json")
    if not mixture.exists():
        raise dg.Failure("no training mixture: materialize repo_datasheet_pairs, the per-pair assets "
                         "(specmap_mappings, section_chunks, quality_samples), eval_sets, training_mixture and "
                         "tokenized_cache first (`spark demo` does all of them)")
    manifest = json.loads(mixture.read_text())
    infos = {c: json.loads((c / "cache.json").read_text()) for c in caches}
    matching = [c for c, info in infos.items()
                if info["mixture_hash"] == manifest["mixture_hash"] and info["max_length"] == settings.max_length]
    if not matching:
        raise dg.Failure(f"no tokenized cache for the current mixture ({manifest['mixture_hash'][:12]}) at "
                         f"max_length {settings.max_length}: materialize tokenized_cache first")
    cache = max(matching, key=lambda c: (c / ".done").stat().st_mtime)
    cache_info = infos[cache]
    registry = json.loads(storage.path("pairs", "registry.json").read_text())
    lineage = {"mixture_hash": manifest["mixture_hash"], "tokenized_cache": cache_info["key"],
               "tokenizer": cache_info["tokenizer"],
               # the pair partitions whose samples are in the mixture, with the versions they had
               "pairs": {p: registry["versions"][p] for p in manifest.get("pairs", {}) if p in registry["versions"]},
               "quality_samples": manifest["lineage"]["quality_samples"],
               "eval_sets": manifest["lineage"].get("eval_sets", {}), "dagster_run_id": context.run_id}
    gpus = torch.cuda.device_count()
    nproc = config.nproc or (min(settings.gpus, gpus) if gpus else 1)
    base = base_model_folder(settings, storage.path())
    run_dir = storage.path("runs", config.run_name)
    if not config.resume and (run_dir / "checkpoints").exists():
        context.log.info(f"fresh run: clearing the earlier checkpoints of {run_dir}")
        shutil.rmtree(run_dir / "checkpoints")
        shutil.rmtree(run_dir / "emergency_checkpoint", ignore_errors=True)
    settings_file, lineage_file = prepare_run(run_dir, settings, lineage)
    upload = config.upload or os.environ.get("SPARK_CHECKPOINT_URL", "")
    extra = (["--upload", f"{upload.rstrip('/')}/{config.run_name}"] if upload else []) + \
        (["--keep-local"] if config.keep_local else [])
    cmd = torchrun_command(nproc, run_dir, cache, base, settings_file, lineage_file, config.resume, config.max_steps,
                           extra)
    context.log.info("launching: " + " ".join(cmd))
    env = {"WANDB_SILENT": "true", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
    if not os.environ.get("WANDB_API_KEY"):
        env["WANDB_MODE"] = os.environ.get("WANDB_MODE", "offline")
    invocation = pipes_subprocess_client.run(command=cmd, context=context, env=env)
    messages = invocation.get_custom_messages()
    result = invocation.get_materialize_result()
    plot = _loss_plot(messages, run_dir / "loss.png")
    extra = {"run_dir": dg.MetadataValue.path(str(run_dir)), "nproc": nproc, "lineage": dg.MetadataValue.json(lineage)}
    if plot:
        extra["loss_curve"] = dg.MetadataValue.md(embed_png(plot, "training loss"))
    return dg.MaterializeResult(metadata={**(result.metadata or {}), **extra}, data_version=result.data_version)
