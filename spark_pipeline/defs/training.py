"""``tokenized_cache`` and ``train_hero``: tokenization, and the LoRA run launched with
torchrun through Dagster Pipes (the training program is ``python -m spark_pipeline.training``)."""

import os

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError
from pydantic import Field

from spark_pipeline.config import write_resolved
from spark_pipeline.defs.resources import SparkConfig, SparkStorage, stage_asset
from spark_pipeline.plots import embed_png, loss_plot, sparkline_markdown
from spark_pipeline.records import read_json
from spark_pipeline.tokens.cache import CacheError, PackedDataset, build_cache
from spark_pipeline.training.launch import (
    LaunchError,
    base_model_folder,
    current_inputs,
    k8s_launch,
    launcher_env,
    prepare_run,
    tokenizer_name,
    torchrun_command,
)
from spark_pipeline.training.runs import RunFolderError, latest_run_with_checkpoints, new_run_id
from spark_pipeline.training.settings import TrainingSettings


class TokenizeConfig(dg.Config):
    workers: int | None = Field(default=None, ge=1, description="tokenizer processes; unset: every core")
    tokenizer: str | None = Field(default=None, min_length=1, description="dolma2-offline | hf:{path} | base_model; "
                                  "unset: the profile's")


@stage_asset(
    "training",
    kinds={'arrow'},
    deps=["training_mixture"],
    code_version="1",
    description="§4.8: the mixture tokenized by parallel workers (order verified, restored if broken), "
    "samples over max_length split at line ends into several rows (nothing cut away), special-token text in "
    "source encoded as text, as a memory-mapped Arrow file keyed by mixture hash, tokenizer, "
    "max length and sample count; `.done` written last. {storage}/tokens/{key}/",
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
    nproc: int | None = Field(default=None, ge=1, description="processes (GPUs); unset: the profile's gpus, capped "
                              "by the GPUs present, one process on a CPU-only machine")
    resume: str | None = Field(default=None, min_length=1, description="unset: a new run; 'latest': continue the "
                               "newest run that has a checkpoint, here or in the bucket; or a checkpoint folder or "
                               "gs:// URL to start a new run from")
    max_steps: int | None = Field(default=None, ge=1, description="stop after this step; unset: the profile's")
    run_name: str = Field(default="hero", description="name under {storage}/runs/; each run gets its own id "
                          "folder below it")
    upload: str | None = Field(default=None, pattern=r"^gs://.+", description="gs://bucket/prefix to copy "
                               "checkpoints to in the background; unset: $SPARK_CHECKPOINT_URL, or no upload")
    keep_local: bool = Field(default=False, description="keep local checkpoints after a verified upload")


@stage_asset(
    "training",
    kinds={'pytorch', 'wandb'},
    deps=["tokenized_cache"],
    pool="gpu",
    code_version="1",
    description="§4: LoRA continual pretraining, `torchrun --nproc_per_node={gpus} -m spark_pipeline.training` "
    "through Dagster Pipes; each run in its own folder {storage}/runs/{name}/{run id}/ with immutable "
    "checkpoints (lineage.json in each). A run that diverges fails, its late checkpoints marked UNHEALTHY.",
)
def train_hero(context: dg.AssetExecutionContext, config: TrainConfig, storage: SparkStorage,
               spark_config: SparkConfig, pipes_subprocess_client: dg.PipesSubprocessClient):
    import torch

    settings = TrainingSettings.load(spark_config.name())
    cache, lineage = training_inputs(context, storage, settings)
    gpus = torch.cuda.device_count()
    nproc = config.nproc or (min(settings.gpus, gpus) if gpus else 1)
    upload_root = (config.upload or os.environ.get("SPARK_CHECKPOINT_URL", "")).rstrip("/")
    run_id, resume = _run_for(context, config, storage, upload_root)
    run_dir = storage.path("runs", config.run_name, run_id)
    upload = f"{upload_root}/{config.run_name}/{run_id}" if upload_root else ""
    context.log.info(f"run {config.run_name}.{run_id} in {run_dir}" + (f", uploading to {upload}" if upload else ""))
    invocation = launch_training(context, pipes_subprocess_client, settings, run_dir, cache,
                                 base_model_folder(settings, storage.path()), lineage, nproc, resume=resume,
                                 max_steps=config.max_steps or 0, upload_root=upload_root, upload=upload,
                                 keep_local=config.keep_local, profile=spark_config.name())
    messages = invocation.get_custom_messages()
    result = invocation.get_materialize_result()
    plot = loss_plot(messages, run_dir / "loss.png")
    extra = {"run_dir": dg.MetadataValue.path(str(run_dir)), "run_id": run_id, "nproc": nproc,
             "lineage": dg.MetadataValue.json(lineage)}
    if plot:
        extra["loss_curve"] = dg.MetadataValue.md(embed_png(plot, "training loss"))
        extra["loss_inline"] = dg.MetadataValue.md(sparkline_markdown(
            [m["train/loss"] for m in messages if m.get("kind") == "step"], "train/loss per step"))
    return dg.MaterializeResult(metadata={**(result.metadata or {}), **extra}, data_version=result.data_version)


def training_inputs(context, storage: SparkStorage, settings: TrainingSettings) -> tuple:
    """(the tokenized cache of the current mixture, the lineage a run records): what every
    training launch (train_hero, each sweep trial) starts from; a missing one is said plainly."""
    try:
        return current_inputs(storage.path(), settings, context.run_id)
    except LaunchError as exc:
        raise dg.Failure(str(exc)) from exc


def launch_training(context, pipes_subprocess_client, settings: TrainingSettings, run_dir, cache, base, lineage: dict,
                    nproc: int, resume: str = "", max_steps: int = 0, upload_root: str = "", upload: str = "",
                    keep_local: bool = False, wandb_group: str = "", profile: str | None = None):
    """One run of ``torchrun -m spark_pipeline.training`` through Dagster Pipes: the local
    subprocess by default, the GPU pod when ``SPARK_TRAIN_LAUNCHER=k8s``. Returns the Pipes
    invocation (its custom messages are the per-step metrics); a failed run raises a
    ``dg.Failure`` that names divergence or the crash."""
    try:
        settings_file, lineage_file = prepare_run(run_dir, settings, lineage, resume)
    except RunFolderError as exc:
        raise dg.Failure(str(exc)) from exc
    write_resolved(run_dir, profile)  # the whole profile beside settings.json (the training section, flat)
    extra = (["--upload", upload] if upload else []) + (["--keep-local"] if keep_local else [])
    cmd = torchrun_command(nproc, run_dir, cache, base, settings_file, lineage_file, resume, max_steps,
                           extra, grace_s=settings.termination_grace_s)
    context.log.info("launching: " + " ".join(cmd))
    env = {"WANDB_SILENT": "true", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
    if not os.environ.get("WANDB_API_KEY"):
        env["WANDB_MODE"] = os.environ.get("WANDB_MODE", "offline")
    if wandb_group:  # a sweep's trials are one W&B group
        env["WANDB_RUN_GROUP"] = wandb_group
    try:
        if os.environ.get("SPARK_TRAIN_LAUNCHER", "local") == "k8s":  # a GPU pod on the cluster (deploy/)
            from dagster_k8s import PipesK8sClient

            try:
                launch = k8s_launch(settings, cmd, upload_root, env)
            except LaunchError as exc:
                raise dg.Failure(str(exc)) from exc
            context.log.info(f"launching the training pod ({launch['image']}, {settings.gpus} GPUs, grace "
                             f"{launch['base_pod_spec']['terminationGracePeriodSeconds']} s)")
            return PipesK8sClient().run(context=context, **launch)
        # torchrun and its workers die with this process (training/lifeline.py); Pipes' client
        # starts it from this thread and waits for it here
        return pipes_subprocess_client.run(command=cmd, context=context, env={**env, **launcher_env()})
    except DagsterPipesExecutionError as exc:
        raise _training_failure(run_dir, exc) from exc


def _run_for(context, config: TrainConfig, storage: SparkStorage, upload_root: str) -> tuple[str, str]:
    """(run id, --resume argument). A fresh run, or one resumed from a given checkpoint, gets a
    new id and folder; ``latest`` continues the newest run that has a checkpoint, locally or in
    the bucket, in its own folder (a fresh run if none has one). Nothing of an earlier run is
    deleted or overwritten."""
    if config.resume == "latest":
        run_id = latest_run_with_checkpoints(storage.path(), config.run_name, upload_root)
        if run_id:
            context.log.info(f"resume latest: continuing run {config.run_name}.{run_id}")
            return run_id, "latest"
        context.log.info(f"resume latest: no run of {config.run_name!r} has a checkpoint yet; starting a new run")
        return new_run_id(), ""
    return new_run_id(), config.resume or ""


def _training_failure(run_dir, exc: Exception) -> dg.Failure:
    """A failed training program, said plainly: divergence (with the checkpoints marked
    unhealthy), a bad setting, or a crash (the tail of the log is in the run's stderr)."""
    result_file = run_dir / "result.json"
    result = read_json(result_file)
    if result.get("exit") == "diverged":
        return dg.Failure(
            f"training diverged ({result.get('diverged')}); last healthy step {result.get('last_healthy_step')}. "
            f"Checkpoints after it are marked UNHEALTHY and will not be evaluated: {result.get('unhealthy_checkpoints')}",
            metadata={"run_dir": dg.MetadataValue.path(str(run_dir)), "result": dg.MetadataValue.json(result)})
    return dg.Failure(f"the training program failed ({exc}); see the step's logs (stderr) and {run_dir}",
                      metadata={"run_dir": dg.MetadataValue.path(str(run_dir))})
