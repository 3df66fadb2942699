"""The training program, top to bottom (paper §4). Launched by torchrun:

    torchrun --nproc_per_node=<gpus> --shutdown-timeout=<grace> -m spark_pipeline.training \
        --run-dir RUN --cache CACHE --base-model MODEL --settings settings.json --lineage lineage.json \
        [--resume PATH|latest] [--upload gs://...]

1. Read and validate the settings (a bad one stops the program before the model loads);
   find this process's rank and device.
2. Load the base model onto the rank's device *before* the process group starts; add the
   LoRA adapters (all nine module types); optionally non-reentrant activation checkpointing.
3. Start the process group (NCCL on GPU, gloo on CPU) with a long timeout; wrap the forward
   and its chunked loss (:mod:`.loss`) in DDP (gradients as bucket views; a static graph
   when there is no gradient accumulation, with which it cannot work).
4. AdamW with two parameter groups (embedding and lm_head adapters at ``embedding_lr_ratio``
   of the rate), linear warm-up then cosine decay to zero over the schedule's horizon (one
   epoch of the packed data by default), gradient clipping; ``max_steps`` is a hard stop.
5. Resume, if asked, by index: adapters, optimizer, schedule, RNG and the number of packed
   rows consumed; no batch is replayed. ``latest`` looks locally and in the bucket.
6. Each optimizer step: ``gradient_accumulation`` micro-batches of ``per_device_batch_size``
   rows per rank under bf16 autocast when ``mixed_precision: bf16``; health checks (losses,
   gradient norm, the adapters' parameter norm); metrics (with ``train/mfu`` on a GPU) to W&B
   and (rank 0) to Dagster Pipes; a checkpoint every ``save_every_steps``.
7. SIGINT, SIGTERM, SIGHUP: the ranks agree after every micro-batch, drop the unfinished
   step and save an emergency checkpoint of the last finished one, well inside torchrun's
   grace period (a step at hero scale takes 45-70 s; a micro-batch a few). A run that
   diverges (non-finite losses, or weights that blow up with a finite loss) saves one too,
   marks its checkpoints after the last healthy step ``UNHEALTHY`` and exits with code 3.
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

import torch

from spark_pipeline.tokens.cache import PackedDataset, wait_for_cache
from spark_pipeline.training.batches import StepBatches
from spark_pipeline.training.checkpoint import (
    code_version,
    load_checkpoint,
    load_trainer_state,
    save_checkpoint,
)
from spark_pipeline.training.health import HealthMonitor
from spark_pipeline.training.loss import CausalLMLoss
from spark_pipeline.training.model import LoraSettings, add_adapters, load_base_model, split_parameter_groups
from spark_pipeline.training.runs import mark_unhealthy
from spark_pipeline.training.settings import SettingsError, TrainingSettings

METRICS_FILE = "metrics.jsonl"  # one line of metrics per optimizer step, written by rank 0


def read_metrics(run_dir: Path) -> list[dict]:
    """A run's per-step metrics; a resumed step's later line wins."""
    path = Path(run_dir) / METRICS_FILE
    by_step = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.strip():
            row = json.loads(line)
            by_step[row["step"]] = row
    return [by_step[k] for k in sorted(by_step)]


class Reporter:
    """W&B (offline unless a key is configured) on every rank 0 step, and Dagster Pipes
    messages when launched by Dagster; only rank 0 reports, so a run hears each thing once."""

    def __init__(self, rank: int, run_dir: Path, settings: TrainingSettings, run_id: str | None):
        self.rank = rank
        self.pipes = None
        self.wandb = None
        self.run_id = run_id
        self.metrics_file = run_dir / METRICS_FILE
        if rank != 0:
            return
        if os.environ.get("DAGSTER_PIPES_CONTEXT"):
            from dagster_pipes import open_dagster_pipes

            self._pipes_cm = open_dagster_pipes()
            self.pipes = self._pipes_cm.__enter__()
        if os.environ.get("WANDB_DISABLED", "").lower() not in ("1", "true"):
            # a new run's W&B id is its run id (the folder's name); a resumed run keeps its own
            self.run_id = run_id or run_dir.name.replace(".", "-") or __import__("uuid").uuid4().hex[:8]
            self.wandb = self._start_wandb(run_dir, settings)

    def _start_wandb(self, run_dir: Path, settings: TrainingSettings):
        """W&B as configured; training never dies for its logger: a failed online start (a bad
        key, no network) falls back to an offline run, a failed offline start to none."""
        try:
            import wandb
        except ImportError:
            self.warn("wandb is not installed: metrics go to the log only")
            return None
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        common = {"project": os.environ.get("WANDB_PROJECT", "spark-pipeline"), "id": self.run_id, "resume": "allow",
                  "dir": str(run_dir), "config": settings.to_dict()}
        timeout = float(os.environ.get("SPARK_WANDB_INIT_TIMEOUT", "60"))
        for attempt_mode in ([mode] if mode == "offline" else [mode, "offline"]):
            try:
                return wandb.init(mode=attempt_mode, settings=wandb.Settings(init_timeout=timeout), **common)
            except Exception as exc:  # noqa: BLE001 - any failure of the logger
                self.warn(f"W&B could not start in {attempt_mode} mode ({type(exc).__name__}: {str(exc)[:200]})"
                          + ("; logging offline instead" if attempt_mode != "offline" else "; no W&B logging"))
        return None

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)
        if self.pipes:
            self.pipes.log.warning(message)

    def log(self, message: str) -> None:
        if self.rank == 0:
            print(message, flush=True)
            if self.pipes:
                self.pipes.log.info(message)

    def step(self, metrics: dict, step: int) -> None:
        if self.rank != 0:
            return
        with open(self.metrics_file, "a") as f:  # the run's own record, whatever the loggers do
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.wandb:
            try:
                self.wandb.log(metrics, step=step)
            except Exception as exc:  # noqa: BLE001 - the logger never stops training
                self.warn(f"W&B logging failed ({type(exc).__name__}: {str(exc)[:200]}); it is switched off")
                self.wandb = None
        if self.pipes:
            self.pipes.report_custom_message({"kind": "step", "step": step, **metrics})

    def finish(self, metadata: dict) -> None:
        if self.rank != 0:
            return
        if self.wandb:
            try:
                self.wandb.finish()
            except Exception as exc:  # noqa: BLE001
                self.warn(f"W&B finish failed ({type(exc).__name__}); the run's metrics are in result.json")
        if self.pipes:
            if metadata.get("exit") != "diverged":  # a diverged run is a failure, not a materialization
                self.pipes.report_asset_materialization(metadata=metadata,
                                                        data_version=metadata.get("final_checkpoint_sha"))
            self._pipes_cm.__exit__(None, None, None)


SHUTDOWN_GRACE_S = 45.0


def _exit_after_grace(rank: int, code: int = 0, grace: float = SHUTDOWN_GRACE_S) -> None:
    print(f"rank {rank}: shutdown did not finish within {grace:.0f} s after the run completed; "
          "exiting (all checkpoints and results are already written)", file=sys.stderr, flush=True)
    os._exit(code)


def lr_lambda(total_steps: int, warmup_ratio: float):
    warmup = max(1, int(round(total_steps * warmup_ratio)))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return f


def latest_checkpoint(run_dir: Path, upload: str = "") -> str | None:
    """The checkpoint with the highest step among the run's healthy local checkpoints
    (regular and emergency) and, when ``upload`` names the run's bucket prefix, its
    completed uploads there (a path or a gs:// URL)."""
    from spark_pipeline.training.runs import healthy

    candidates: list[tuple[int, str]] = []
    for folder in (run_dir / "checkpoints").glob("*-*"):
        if (folder / "trainer_state.json").exists() and healthy(folder):
            candidates.append((load_trainer_state(folder)["step"], str(folder)))
    if upload:
        from spark_pipeline.training.gcs import list_checkpoints

        for name, step in list_checkpoints(upload).items():
            candidates.append((step, f"{upload.rstrip('/')}/{name}"))
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c[0], not c[1].startswith("gs://")))[1]


def flops_per_token(shape: dict, seq_len: int, lora_r: int) -> float:
    """Training FLOPs per token of OLMo-3 with LoRA on all nine module types, no recompute:
    the frozen base's matmuls forward and, for activation gradients, backward (4 × its
    non-embedding weights incl. lm_head); the adapters' forward, activation and weight
    gradients (6 × their matmul weights); causal attention 3 × 4·(seq/2)·hidden per layer.
    OLMo-3-7B at 2,048 tokens and r=512: 37.2 GFLOP (docs/training.md)."""
    h, f, n_layers, vocab = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"], \
        shape["vocab_size"]
    base = n_layers * (4 * h * h + 3 * h * f) + h * vocab
    lora = n_layers * lora_r * (4 * 2 * h + 3 * (h + f)) + lora_r * (h + vocab) + lora_r * h  # lm_head; embed's B
    attention = n_layers * 4 * (seq_len / 2) * h
    return 4 * base + 6 * lora + 3 * attention


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
    p.add_argument("--slow-micro-batch-s", type=float, default=0.0,
                   help="testing: sleep this long after every micro-batch (a step longer than the grace period)")
    p.add_argument("--gpu-peak-tflops", type=float, default=989.0,
                   help="the GPU's dense bf16 peak for train/mfu (H100 SXM: 989)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    program_start = time.perf_counter()
    args = parse_args(argv)
    try:
        settings = TrainingSettings.from_dict(json.loads(args.settings.read_text()), source=str(args.settings))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
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
    lora = LoraSettings(settings.lora_r, settings.lora_alpha, settings.lora_dropout, settings.use_rslora,
                        settings.lora_target_modules)
    model = add_adapters(model, lora)
    if settings.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    trainable_params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in trainable_params)
    forward = CausalLMLoss(model, settings.loss_chunk_tokens)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if settings.mixed_precision == "bf16" \
        else contextlib.nullcontext

    # 3. process group and DDP
    distributed = world > 1
    if distributed:
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo", rank=rank, world_size=world,
                                             timeout=datetime.timedelta(seconds=settings.process_group_timeout_s))
    barrier = torch.distributed.barrier if distributed else None
    wait_for_cache(args.cache)
    data = PackedDataset(args.cache, settings.max_length, settings.shape.get("pad_token_id", 100277))
    ddp_forward = forward
    if distributed:
        # Gradients as views into the communication buckets (no second copy of them). A static
        # graph lets DDP plan its reductions once, but it breaks under no_sync (PyTorch's reducer
        # asserts on the first accumulated micro-batch), so it is used only without accumulation.
        ddp_forward = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[local_rank] if cuda else None, bucket_cap_mb=settings.ddp_bucket_cap_mb,
            gradient_as_bucket_view=True, static_graph=settings.gradient_accumulation == 1)

    # 4. optimizer and schedule: the cosine spans the horizon (an epoch by default); max_steps only stops
    embed_params, main_params = split_parameter_groups(model)
    groups = [{"params": main_params, "lr": settings.learning_rate, "name": "main"}]
    if embed_params:
        groups.append({"params": embed_params, "lr": settings.learning_rate * settings.embedding_lr_ratio,
                       "name": "embeddings"})
    optimizer = torch.optim.AdamW(groups, betas=settings.betas, weight_decay=settings.weight_decay)
    per_rank = settings.per_device_batch_size
    rows_per_step = per_rank * settings.gradient_accumulation * world
    horizon = schedule_horizon(settings, len(data), rows_per_step)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(horizon, settings.warmup_ratio))
    health = HealthMonitor(nan_limit=settings.nan_limit, param_norm_factor=settings.param_norm_factor)

    # 5. resume by index
    step, rows_consumed, run_id = 0, 0, None
    resume = args.resume
    if resume == "latest":
        resume = latest_checkpoint(run_dir, args.upload) or ""
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
        step, rows_consumed = state["step"], state["rows_consumed"]
        # ``latest`` continues this run, and its W&B run; a run started from a given checkpoint is a new one
        run_id = state.get("wandb_run_id") if args.resume == "latest" else None
        health.load_state(state["health"])
        resume_seconds = time.perf_counter() - t0
    reporter = Reporter(rank, run_dir, settings, run_id)
    reporter.log(f"rank {rank}/{world} on {device}: {trainable:,} trainable parameters; {len(data)} packed rows "
                 f"({data.efficiency:.1%} fill); schedule over {horizon} steps; starting at step {step}"
                 + (f" from {resume}" if resume else ""))

    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signal.Signals(signum).name

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    def agreed(local: bool) -> bool:
        """Every rank's answer to "stop?", the same on all of them."""
        flag = torch.tensor([1.0 if local else 0.0], device=device)
        if distributed:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item() > 0)

    max_steps = min(args.max_steps or settings.max_steps, settings.max_steps)
    full_lineage = {**lineage, "config_hash": settings.fingerprint(), "code_version": code_version(),
                    "data_fingerprint": data.fingerprint}
    mfu_flops = flops_per_token(settings.shape, settings.max_length, settings.lora_r)

    def trainer_state() -> dict:
        return {"step": step, "rows_consumed": rows_consumed, "data_fingerprint": data.fingerprint,
                "rows_per_step": rows_per_step, "health": health.state(), "wandb_run_id": reporter.run_id,
                "settings_hash": settings.fingerprint(), "schedule_horizon": horizon}

    def save(folder: Path) -> Path:
        return save_checkpoint(folder, model, optimizer, scheduler, trainer_state(),
                               {**full_lineage, "wandb_run_id": reporter.run_id}, rank, world, barrier)

    def adapter_norm() -> float:
        with torch.no_grad():
            return float(torch.sqrt(sum((p.detach().float() ** 2).sum() for p in trainable_params)))

    health.baseline(adapter_norm())
    uploader = None
    if args.upload and rank == 0:
        from spark_pipeline.training.gcs import CheckpointUploader

        uploader = CheckpointUploader(args.upload, delete_local=not args.keep_local)
    checkpoints: list[tuple[int, str]] = []
    last_metrics: dict = {}
    first_step_at = None
    ddp_forward.train()
    exit_reason = "finished"
    batches = StepBatches(data, per_rank, settings.gradient_accumulation, world, rank, pin=cuda)
    while step < max_steps:
        t_step = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=device)
        tokens = 0
        preview = ""
        interrupted = False
        step_batches = batches.get(rows_consumed)
        for micro in range(settings.gradient_accumulation):
            batch = {k: v.to(device, non_blocking=cuda) for k, v in step_batches[micro].items()}
            tokens += int((batch["labels"] != -100).sum())
            if not preview:
                preview = str(batch["input_ids"][0, :16].tolist())
            last = micro == settings.gradient_accumulation - 1
            sync = contextlib.nullcontext() if (not distributed or last) else ddp_forward.no_sync()
            with sync:
                with autocast():
                    loss = ddp_forward(batch["input_ids"], batch["labels"], batch["position_ids"])
                (loss / settings.gradient_accumulation).backward()
            loss_sum += loss.detach() / settings.gradient_accumulation
            if args.slow_micro_batch_s:
                time.sleep(args.slow_micro_batch_s)
            # A signal is heeded after the micro-batch it arrives in, not at the end of the step.
            if not last and agreed(bool(stop["signal"])):
                interrupted = True
                break
        if interrupted:
            optimizer.zero_grad(set_to_none=True)  # the unfinished step is dropped; resume redoes it
            exit_reason = stop["signal"] or "SIGTERM"
            t_save = time.perf_counter()
            folder = save(run_dir / "checkpoints" / f"emergency-{step}")
            reporter.log(f"{exit_reason} during step {step + 1}: emergency checkpoint of step {step} in {folder} "
                         f"({time.perf_counter() - t_save:.1f} s)")
            checkpoints.append((step, str(folder)))
            if uploader:
                uploader.submit(folder)
            break
        if distributed:
            torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable_params, settings.max_grad_norm)
        loss, gnorm = float(loss_sum), float(grad_norm)
        verdict = health.check(step + 1, loss, gnorm, preview)
        if verdict["skip_step"]:
            optimizer.zero_grad(set_to_none=True)  # a non-finite gradient never reaches the weights
        else:
            optimizer.step()
        scheduler.step()
        step += 1
        rows_consumed += rows_per_step
        norm = adapter_norm()
        params = health.check_params(step, norm)
        if first_step_at is None:
            first_step_at = time.perf_counter() - program_start  # model load and resume included
        step_time = time.perf_counter() - t_step
        last_metrics = {
            "train/loss": loss, "train/learning_rate": scheduler.get_last_lr()[0],
            "train/grad_norm": gnorm,  # before clipping: what the health monitor and the sweep's stability table see
            "train/grad_norm_post_clip": min(gnorm, settings.max_grad_norm) if math.isfinite(gnorm) else gnorm,
            "train/throughput_tokens_per_sec": tokens / step_time,  # per GPU (this rank's tokens)
            "train/step_time_sec": step_time, "train/anomaly_count": health.anomaly_count,
            "train/nan_count": health.nan_count, "train/param_norm": norm}
        if cuda:
            last_metrics["train/mfu"] = tokens / step_time * mfu_flops / (args.gpu_peak_tflops * 1e12)
        reporter.step(last_metrics, step)
        for event in verdict["events"] + params["events"]:
            reporter.log(f"anomaly: {json.dumps(event)}")
        if step <= 10 or step % 10 == 0 or step == max_steps:
            left = (max_steps - step) * step_time
            reporter.log(f"step {step}/{max_steps}: loss {loss:.4f}, {tokens / step_time:,.0f} tokens/s, "
                         f"eta {left / 60:.1f} min")
        diverged = verdict["emergency"] or params["emergency"]
        if step % settings.save_every_steps == 0 or step == max_steps:
            folder = save(run_dir / "checkpoints" / f"checkpoint-{step}")
            checkpoints.append((step, str(folder)))
            reporter.log(f"checkpoint {folder} (free disk {shutil.disk_usage(run_dir).free / 2**30:.1f} GiB)")
            if uploader and not diverged:
                uploader.submit(folder)
        if args.stop_after and step == args.stop_after and rank == 0:
            os.kill(os.getpid(), getattr(signal, args.stop_signal))
        if agreed(bool(stop["signal"]) or diverged):
            exit_reason = "diverged" if diverged else (stop["signal"] or "SIGTERM")
            folder = save(run_dir / "checkpoints" / f"emergency-{step}")
            reporter.log(f"{exit_reason}: emergency checkpoint at step {step} in {folder}")
            checkpoints.append((step, str(folder)))
            if uploader and not diverged:
                uploader.submit(folder)
            break

    batches.close()
    # The ranks must hold identical adapters: compare a checksum of every trainable tensor.
    checksum = float(sum(p.detach().double().sum() + (p.detach().double() ** 2).sum() for p in trainable_params))
    checksums = [checksum]
    if distributed:
        checksums = [None] * world
        torch.distributed.all_gather_object(checksums, checksum)
    in_sync = all(abs(c - checksums[0]) <= 1e-9 * max(1.0, abs(checksums[0])) for c in checksums)
    if not in_sync:
        reporter.log(f"ranks out of sync: adapter checksums {checksums}")
    uploads = []
    if uploader:
        reporter.log(f"waiting up to {settings.upload_deadline_s} s for checkpoint uploads to finish")
        uploads = [vars(u) for u in uploader.close(timeout=settings.upload_deadline_s)]
        for u in uploads:
            reporter.log(f"upload {u['folder']} -> {u['url']}: {u['state']} after {u['attempts']} attempt(s)"
                         + (f" ({u['error']})" if u["error"] else ""))
        pending = [u for u in uploads if u["state"] in ("pending", "failed")]
        if pending:
            reporter.log(f"{len(pending)} checkpoint(s) not uploaded; their local copies are kept. Finish with: "
                         f"python -m spark_pipeline upload {run_dir} --to {args.upload}")
    unhealthy: list[str] = []
    if exit_reason == "diverged" and rank == 0:
        reason = f"the run diverged: {health.diverged}; last healthy step {health.last_healthy_step}"
        late = {f for s, f in checkpoints if s > health.last_healthy_step}
        unhealthy = mark_unhealthy(sorted(late), reason)
        remote = [u["url"] for u in uploads if u["folder"] in late and u["state"] == "uploaded"]
        if remote:
            from spark_pipeline.training.runs import mark_unhealthy_in_bucket

            try:
                unhealthy += mark_unhealthy_in_bucket(remote, reason)
            except Exception as exc:  # noqa: BLE001 - reported; the local markers are written
                reporter.warn(f"could not mark {remote} UNHEALTHY in the bucket: {type(exc).__name__}: {exc}")
        reporter.log(f"{reason}; checkpoints marked UNHEALTHY (not evaluated): {unhealthy}")
    paths = [f for _, f in checkpoints]
    final = Path(paths[-1]) if paths else None
    metadata = {"steps": step, "exit": exit_reason, "trainable_parameters": trainable, "world_size": world,
                "final_loss": last_metrics.get("train/loss"), "checkpoints": paths,
                "final_checkpoint": str(final) if final else None, "unhealthy_checkpoints": unhealthy,
                "last_healthy_step": health.last_healthy_step, "diverged": health.diverged,
                "schedule_horizon": horizon,
                "tokens_per_sec_per_gpu": last_metrics.get("train/throughput_tokens_per_sec"),
                "mfu": last_metrics.get("train/mfu"), "flops_per_token": mfu_flops,
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
    if rank == 0:
        (run_dir / "result.json").write_text(json.dumps(metadata, indent=2))
    # Everything is written. Shutdown (W&B's finish, the last barrier) has been seen to hang a
    # rank now and then on gloo; a watchdog makes sure the run exits, with its own exit code, and
    # a run stopped by a signal within what is left of the grace period.
    code = 3 if exit_reason == "diverged" else 0
    grace = SHUTDOWN_GRACE_S if exit_reason in ("finished", "diverged") else \
        min(SHUTDOWN_GRACE_S, max(5.0, settings.termination_grace_s / 2))
    watchdog = threading.Timer(grace, _exit_after_grace, args=(rank, code, grace))
    watchdog.daemon = True
    watchdog.start()
    reporter.finish(metadata)
    if distributed:
        torch.distributed.barrier()  # nobody leaves while another rank still writes
        # No destroy_process_group: the program leaves with os._exit right after this returns
        # (spark_pipeline/training/__main__.py), and gloo's teardown is where one rank of a
        # finished two-rank run was seen to hang past torchrun's grace period.
    return code


def schedule_horizon(settings: TrainingSettings, rows: int, rows_per_step: int) -> int:
    """Steps the cosine schedule spans: one epoch of the packed rows, or the number given."""
    if settings.schedule_horizon == "epoch":
        return max(1, rows // max(1, rows_per_step))
    return int(settings.schedule_horizon)


if __name__ == "__main__":
    sys.exit(main())
