"""The training program, top to bottom (paper §4). Launched by torchrun:

    torchrun --nproc_per_node=<gpus> -m spark_pipeline.training --run-dir RUN --cache CACHE \
        --base-model MODEL --settings settings.json --lineage lineage.json [--resume PATH]

1. Read settings; find this process's rank and device.
2. Load the base model onto the rank's device *before* the process group starts; add the
   LoRA adapters (all nine module types); optionally non-reentrant activation checkpointing.
3. Start the process group (NCCL on GPU, gloo on CPU) with a long timeout; wrap in DDP.
4. AdamW with two parameter groups (embedding and lm_head adapters at ``embedding_lr_ratio``
   of the rate), linear warm-up then cosine decay to zero, gradient clipping.
5. Resume, if asked, by index: adapters, optimizer, schedule, RNG and the number of packed
   rows consumed; no batch is replayed.
6. Each optimizer step: ``gradient_accumulation`` micro-batches of ``per_device_batch_size``
   rows per rank, rows chosen by index from the global position; health check; metrics to
   W&B and (rank 0) to Dagster Pipes; a checkpoint every ``save_every_steps``.
7. SIGINT, SIGTERM, SIGHUP: the ranks agree at the next step boundary, save
   ``emergency_checkpoint/`` and exit cleanly. Three non-finite losses in a row do the same.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from spark_pipeline.tokens.cache import PackedDataset, wait_for_cache
from spark_pipeline.training.checkpoint import (
    code_version,
    load_checkpoint,
    load_trainer_state,
    save_checkpoint,
)
from spark_pipeline.training.health import HealthMonitor
from spark_pipeline.training.model import LoraSettings, add_adapters, load_base_model, split_parameter_groups
from spark_pipeline.training.settings import TrainingSettings


class Reporter:
    """W&B (offline unless a key is configured) on every rank 0 step, and Dagster Pipes
    messages when launched by Dagster; only rank 0 reports, so a run hears each thing once."""

    def __init__(self, rank: int, run_dir: Path, settings: TrainingSettings, run_id: str | None):
        self.rank = rank
        self.pipes = None
        self.wandb = None
        self.run_id = run_id
        if rank != 0:
            return
        if os.environ.get("DAGSTER_PIPES_CONTEXT"):
            from dagster_pipes import open_dagster_pipes

            self._pipes_cm = open_dagster_pipes()
            self.pipes = self._pipes_cm.__enter__()
        if os.environ.get("WANDB_DISABLED", "").lower() not in ("1", "true"):
            import wandb

            mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
            self.run_id = run_id or __import__("uuid").uuid4().hex[:8]
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "spark-pipeline"), id=self.run_id,
                                    resume="allow", mode=mode, dir=str(run_dir), config=settings.to_dict())

    def log(self, message: str) -> None:
        if self.rank == 0:
            print(message, flush=True)
            if self.pipes:
                self.pipes.log.info(message)

    def step(self, metrics: dict, step: int) -> None:
        if self.rank != 0:
            return
        if self.wandb:
            self.wandb.log(metrics, step=step)
        if self.pipes:
            self.pipes.report_custom_message({"kind": "step", "step": step, **metrics})

    def finish(self, metadata: dict) -> None:
        if self.rank != 0:
            return
        if self.wandb:
            self.wandb.finish()
        if self.pipes:
            self.pipes.report_asset_materialization(metadata=metadata, data_version=metadata.get("final_checkpoint_sha"))
            self._pipes_cm.__exit__(None, None, None)


SHUTDOWN_GRACE_S = 45.0


def _exit_after_grace(rank: int) -> None:
    print(f"rank {rank}: shutdown did not finish within {SHUTDOWN_GRACE_S:.0f} s after the run completed; "
          "exiting (all checkpoints and results are already written)", file=sys.stderr, flush=True)
    os._exit(0)


def lr_lambda(total_steps: int, warmup_ratio: float):
    warmup = max(1, int(round(total_steps * warmup_ratio)))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return f


def latest_checkpoint(run_dir: Path) -> Path | None:
    emergency = run_dir / "emergency_checkpoint"
    ckpts = sorted(run_dir.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    candidates = [p for p in ckpts if (p / "trainer_state.json").exists()]
    if (emergency / "trainer_state.json").exists():
        candidates.append(emergency)
    if not candidates:
        return None
    return max(candidates, key=lambda p: load_trainer_state(p)["step"])


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m spark_pipeline.training", description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--cache", type=Path, required=True, help="tokenized cache folder (with .done)")
    p.add_argument("--base-model", required=True, help="base model folder")
    p.add_argument("--settings", type=Path, required=True, help="TrainingSettings as JSON")
    p.add_argument("--lineage", type=Path, help="JSON of the data this run trains on")
    p.add_argument("--resume", default="", help="checkpoint folder, gs:// URL, or 'latest'")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this global step (default: settings)")
    p.add_argument("--upload", default="", help="gs://bucket/prefix: copy every checkpoint there in the background")
    p.add_argument("--keep-local", action="store_true", help="keep local checkpoints after a verified upload")
    p.add_argument("--stop-after", type=int, default=0, help="testing: signal this process after step N")
    p.add_argument("--stop-signal", default="SIGTERM", choices=["SIGTERM", "SIGINT", "SIGHUP"])
    return p.parse_args(argv)


def main(argv=None) -> int:
    program_start = time.perf_counter()
    args = parse_args(argv)
    settings = TrainingSettings.from_dict(json.loads(args.settings.read_text()))
    lineage = json.loads(args.lineage.read_text()) if args.lineage else {}
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    run_dir = args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if cuda:
        for k, v in settings.gpu_env.items():  # a value the user exported wins
            os.environ.setdefault(k, str(v))
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    # 2. model on this rank's device before the process group exists
    torch.manual_seed(settings.seed)
    dtype = getattr(torch, settings.dtype)
    attn = settings.attn_implementation if cuda or settings.attn_implementation != "flash_attention_2" else "sdpa"
    model = load_base_model(args.base_model, dtype=dtype, attn_implementation=attn, device=device)
    lora = LoraSettings(settings.lora_r, settings.lora_alpha, settings.lora_dropout, settings.use_rslora)
    model = add_adapters(model, lora)
    if settings.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # 3. process group and DDP
    distributed = world > 1
    if distributed:
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo", rank=rank, world_size=world,
                                             timeout=datetime.timedelta(seconds=settings.process_group_timeout_s))
    barrier = torch.distributed.barrier if distributed else None
    wait_for_cache(args.cache)
    data = PackedDataset(args.cache, settings.max_length, settings.shape.get("pad_token_id", 100277))
    ddp_model = model
    if distributed:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if cuda else None, bucket_cap_mb=settings.ddp_bucket_cap_mb)

    # 4. optimizer and schedule
    embed_params, main_params = split_parameter_groups(model)
    groups = [{"params": main_params, "lr": settings.learning_rate, "name": "main"}]
    if embed_params:
        groups.append({"params": embed_params, "lr": settings.learning_rate * settings.embedding_lr_ratio,
                       "name": "embeddings"})
    optimizer = torch.optim.AdamW(groups, betas=settings.betas, weight_decay=settings.weight_decay)
    total_steps = settings.max_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, settings.warmup_ratio))
    health = HealthMonitor()

    # 5. resume by index
    step, rows_consumed, run_id = 0, 0, None
    resume = args.resume
    if resume == "latest":
        found = latest_checkpoint(run_dir)
        resume = str(found) if found else ""
    if resume.startswith("gs://"):
        from spark_pipeline.training.gcs import download_checkpoint

        resume = str(download_checkpoint(resume, run_dir / "downloaded" / resume.rstrip("/").rsplit("/", 1)[-1]))
    resume_seconds = None
    if resume:
        t0 = time.perf_counter()
        state = load_checkpoint(Path(resume), model, optimizer, scheduler, rank)
        if state["data_fingerprint"] != data.fingerprint:
            raise SystemExit(f"checkpoint {resume} was made on other data ({state['data_fingerprint']}, "
                             f"this cache packs to {data.fingerprint}); refusing to resume")
        step, rows_consumed, run_id = state["step"], state["rows_consumed"], state.get("wandb_run_id")
        health.load_state(state["health"])
        resume_seconds = time.perf_counter() - t0
    reporter = Reporter(rank, run_dir, settings, run_id)
    reporter.log(f"rank {rank}/{world} on {device}: {trainable:,} trainable parameters; {len(data)} packed rows "
                 f"({data.efficiency:.1%} fill); starting at step {step}" + (f" from {resume}" if resume else ""))

    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signal.Signals(signum).name

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    per_rank = settings.per_device_batch_size
    rows_per_step = per_rank * settings.gradient_accumulation * world
    max_steps = min(args.max_steps or total_steps, total_steps)
    full_lineage = {**lineage, "config_hash": settings.fingerprint(), "code_version": code_version(),
                    "data_fingerprint": data.fingerprint}

    def trainer_state() -> dict:
        return {"step": step, "rows_consumed": rows_consumed, "data_fingerprint": data.fingerprint,
                "rows_per_step": rows_per_step, "health": health.state(), "wandb_run_id": reporter.run_id,
                "settings_hash": settings.fingerprint()}

    def save(folder: Path) -> Path:
        return save_checkpoint(folder, model, optimizer, scheduler, trainer_state(),
                               {**full_lineage, "wandb_run_id": reporter.run_id}, rank, world, barrier)

    uploader = None
    if args.upload and rank == 0:
        from spark_pipeline.training.gcs import CheckpointUploader

        uploader = CheckpointUploader(args.upload, delete_local=not args.keep_local)
    checkpoints: list[str] = []
    last_metrics: dict = {}
    first_step_at = None
    ddp_model.train()
    exit_reason = "finished"
    while step < max_steps:
        t_step = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=device)
        tokens = 0
        preview = ""
        for micro in range(settings.gradient_accumulation):
            base = rows_consumed + micro * per_rank * world + rank * per_rank
            rows = [data[(base + j) % len(data)] for j in range(per_rank)]
            batch = {k: torch.as_tensor(np.stack([r[k] for r in rows])).to(device) for k in rows[0]}
            tokens += int((batch["labels"] != -100).sum())
            if not preview:
                preview = str(batch["input_ids"][0, :16].tolist())
            sync = contextlib.nullcontext() if (not distributed or micro == settings.gradient_accumulation - 1) \
                else ddp_model.no_sync()
            with sync:
                out = ddp_model(input_ids=batch["input_ids"], labels=batch["labels"],
                                position_ids=batch["position_ids"], use_cache=False)
                (out.loss / settings.gradient_accumulation).backward()
            loss_sum += out.loss.detach() / settings.gradient_accumulation
        if distributed:
            torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        loss, gnorm = float(loss_sum), float(grad_norm)
        verdict = health.check(step + 1, loss, gnorm, preview)
        if verdict["skip_step"]:
            optimizer.zero_grad(set_to_none=True)  # a non-finite gradient never reaches the weights
        else:
            optimizer.step()
        scheduler.step()
        step += 1
        rows_consumed += rows_per_step
        if first_step_at is None:
            first_step_at = time.perf_counter() - program_start  # model load and resume included
        step_time = time.perf_counter() - t_step
        last_metrics = {
            "train/loss": loss, "train/learning_rate": scheduler.get_last_lr()[0],
            "train/grad_norm_post_clip": min(gnorm, settings.max_grad_norm) if math.isfinite(gnorm) else gnorm,
            "train/throughput_tokens_per_sec": tokens / step_time,  # per GPU (this rank's tokens)
            "train/step_time_sec": step_time, "train/anomaly_count": health.anomaly_count,
            "train/nan_count": health.nan_count}
        reporter.step(last_metrics, step)
        for event in verdict["events"]:
            reporter.log(f"anomaly: {json.dumps(event)}")
        if step % settings.save_every_steps == 0 or step == max_steps:
            folder = save(run_dir / "checkpoints" / f"checkpoint-{step}")
            checkpoints.append(str(folder))
            reporter.log(f"checkpoint {folder} (free disk {shutil.disk_usage(run_dir).free / 2**30:.1f} GiB)")
            if uploader:
                uploader.submit(folder)
        if args.stop_after and step == args.stop_after and rank == 0:
            os.kill(os.getpid(), getattr(signal, args.stop_signal))
        flag = torch.tensor([1.0 if (stop["signal"] or verdict["emergency"]) else 0.0], device=device)
        if distributed:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)  # every rank agrees
        if flag.item() > 0:
            exit_reason = stop["signal"] or "non_finite_losses"
            folder = save(run_dir / "emergency_checkpoint")
            reporter.log(f"{exit_reason}: emergency checkpoint at step {step} in {folder}")
            checkpoints.append(str(folder))
            if uploader:
                uploader.submit(folder)
            break

    # The ranks must hold identical adapters: compare a checksum of every trainable tensor.
    checksum = float(sum(p.detach().double().sum() + (p.detach().double() ** 2).sum()
                         for p in model.parameters() if p.requires_grad))
    checksums = [checksum]
    if distributed:
        checksums = [None] * world
        torch.distributed.all_gather_object(checksums, checksum)
    in_sync = all(abs(c - checksums[0]) <= 1e-9 * max(1.0, abs(checksums[0])) for c in checksums)
    if not in_sync:
        reporter.log(f"ranks out of sync: adapter checksums {checksums}")
    uploads = []
    if uploader:
        reporter.log("waiting for checkpoint uploads to finish")
        uploads = [vars(u) for u in uploader.close()]
        for u in uploads:
            reporter.log(f"upload {u['folder']} -> {u['url']}: {u['state']} after {u['attempts']} attempt(s)"
                         + (f" ({u['error']})" if u["error"] else ""))
    final = Path(checkpoints[-1]) if checkpoints else None
    metadata = {"steps": step, "exit": exit_reason, "trainable_parameters": trainable, "world_size": world,
                "final_loss": last_metrics.get("train/loss"), "checkpoints": checkpoints,
                "final_checkpoint": str(final) if final else None,
                "tokens_per_sec_per_gpu": last_metrics.get("train/throughput_tokens_per_sec"),
                "anomalies": health.anomaly_count, "nan_count": health.nan_count, "wandb_run_id": reporter.run_id,
                "packing_efficiency": data.efficiency, "seconds_to_first_step": first_step_at,
                "resume_load_seconds": resume_seconds, "ranks_in_sync": in_sync, "rank_checksums": checksums,
                "logged_keys": sorted(last_metrics), "uploads": uploads}
    if final is not None and rank == 0:
        from spark_pipeline.records import sha256_file

        if (final / "adapter_model.safetensors").exists():
            metadata["final_checkpoint_sha"] = sha256_file(final / "adapter_model.safetensors")[:16]
        else:  # uploaded and deleted locally: the lineage names the adapter's hash
            metadata["final_checkpoint_sha"] = None
        uploaded = [u["url"] for u in uploads if u["state"] == "uploaded" and u["folder"] == str(final)]
        if uploaded:
            metadata["final_checkpoint_url"] = uploaded[0]
        (run_dir / "result.json").write_text(json.dumps(metadata, indent=2))
    # Everything is written. Shutdown (W&B's finish, the last barrier, tearing down the
    # process group) has been seen to hang a rank now and then on gloo; a watchdog makes sure
    # a finished run always exits.
    watchdog = threading.Timer(SHUTDOWN_GRACE_S, _exit_after_grace, args=(rank,))
    watchdog.daemon = True
    watchdog.start()
    reporter.finish(metadata)
    if distributed:
        torch.distributed.barrier()  # nobody leaves while another rank still writes
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
