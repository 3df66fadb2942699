"""The training run as an object with four parts, each usable alone (tests drive them one by one):

``Trainer(settings, ...)``  set-up: device, base model and adapters, process group and DDP,
                            optimizer and schedule, resume by index, reporters, the uploader
``train_step()``            one optimizer step of ``gradient_accumulation`` micro-batches; the
                            next step's rows are already being read (:mod:`.batches`)
``checkpoint(kind)``        a regular or emergency checkpoint of the last finished step
``close(exit_reason)``      ranks' agreement check, upload deadline, UNHEALTHY markers,
                            ``result.json``, reporters' finish; returns the exit code

The order of set-up matters and is kept: the model goes onto the rank's device before the
process group starts (a slow load never eats into the collective's timeout), the seed is set
before the adapters are drawn, and resume restores the RNG after everything that draws from it.
:mod:`.loop` is the program that runs these in sequence.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spark_pipeline.tokens.cache import PackedDataset, wait_for_cache
from spark_pipeline.training.batches import StepBatches
from spark_pipeline.training.checkpoint import (
    code_version,
    load_checkpoint,
    save_checkpoint,
)
from spark_pipeline.training.health import HealthMonitor
from spark_pipeline.training.loss import CausalLMLoss
from spark_pipeline.training.model import LoraSettings, add_adapters, load_base_model, split_parameter_groups
from spark_pipeline.training.reporter import Reporter
from spark_pipeline.training.runs import claim_run_folder, mark_unhealthy
from spark_pipeline.training.schedule import schedule_horizon, warmup_cosine
from spark_pipeline.training.settings import TrainingSettings

SHUTDOWN_GRACE_S = 45.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class StepOutcome:
    """What one call of :meth:`Trainer.train_step` did."""

    interrupted: bool = False  # a stop signal arrived mid-step; the step was dropped
    metrics: dict = field(default_factory=dict)
    events: list = field(default_factory=list)  # health anomalies of this step
    diverged: bool = False  # the health monitor asks for an emergency stop


def latest_checkpoint(run_dir: Path, upload: str = "") -> str | None:
    """The checkpoint with the highest step among the run's healthy local checkpoints
    (regular and emergency) and, when ``upload`` names the run's bucket prefix, its
    completed uploads there (a path or a gs:// URL)."""
    from spark_pipeline.training.runs import run_checkpoints

    candidates = [(step, str(folder)) for step, _, folder in run_checkpoints(run_dir, ("checkpoints",), True)]
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


def _exit_after_grace(rank: int, code: int = 0, grace: float = SHUTDOWN_GRACE_S) -> None:
    print(f"rank {rank}: shutdown did not finish within {grace:.0f} s after the run completed; "
          "exiting (all checkpoints and results are already written)", file=sys.stderr, flush=True)
    os._exit(code)


class Trainer:
    def __init__(self, settings: TrainingSettings, *, run_dir: Path, cache: Path, base_model: str,
                 lineage: dict | None = None, resume: str = "", upload: str = "", keep_local: bool = False,
                 max_steps: int = 0, gpu_peak_tflops: float = 989.0, slow_micro_batch_s: float = 0.0):
        self.started = time.perf_counter()
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.upload = upload
        # A run folder belongs to one run: refuse another run's folder before anything is written.
        resolved = (latest_checkpoint(self.run_dir, upload) or "") if resume == "latest" else resume
        claim_run_folder(self.run_dir, settings.to_dict(), resume, resolved, upload)
        self.gpu_peak_tflops = gpu_peak_tflops
        self.slow_micro_batch_s = slow_micro_batch_s
        self.max_steps = min(max_steps or settings.max_steps, settings.max_steps)
        self.stop_signal: str | None = None
        self.checkpoints: list[tuple[int, str]] = []
        self.last_metrics: dict = {}
        self.first_step_at: float | None = None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._setup_device()
        self._setup_model(base_model)
        self._setup_distributed(Path(cache))
        self._setup_optimizer()
        self.health = HealthMonitor(nan_limit=settings.nan_limit, param_norm_factor=settings.param_norm_factor)
        self.step, self.rows_consumed, run_id = 0, 0, None
        self.resumed_from, self.resume_seconds = self._resume(resolved)
        if self.resumed_from:
            # ``latest`` continues this run, and its W&B run; a run started from a given checkpoint is a new one
            run_id = self._resumed_state.get("wandb_run_id") if resume == "latest" else None
        self.reporter = Reporter(self.rank, self.run_dir, settings, run_id)
        self.reporter.log(
            f"rank {self.rank}/{self.world} on {self.device}: {self.trainable:,} trainable parameters; "
            f"{len(self.data)} packed rows ({self.data.efficiency:.1%} fill); schedule over {self.horizon} steps; "
            f"starting at step {self.step}" + (f" from {self.resumed_from}" if self.resumed_from else ""))
        self.lineage = {**(lineage or {}), "config_hash": settings.fingerprint(), "code_version": code_version(),
                        "data_fingerprint": self.data.fingerprint}
        self.mfu_flops = flops_per_token(settings.shape, settings.max_length, settings.lora_r)
        self.health.baseline(self.adapter_norm())
        self.uploader = None
        if upload and self.rank == 0:
            from spark_pipeline.training.gcs import CheckpointUploader

            self.uploader = CheckpointUploader(upload, delete_local=not keep_local)
        self.batches = StepBatches(self.data, settings.per_device_batch_size, settings.gradient_accumulation,
                                   self.world, self.rank, pin=self.cuda)
        self.ddp_forward.train()

    # -- set-up -------------------------------------------------------------------------------

    def _setup_device(self) -> None:
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{self.local_rank}" if self.cuda else "cpu")
        self.distributed = self.world > 1
        if self.cuda:
            for k, v in self.settings.gpu_env.items():  # a value the user exported wins
                os.environ.setdefault(k, str(v))
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True

    def _setup_model(self, base_model: str) -> None:
        """The base model on this rank's device (before the process group exists), the seeded
        adapters, optional non-reentrant activation checkpointing, and the chunked loss."""
        s = self.settings
        torch.manual_seed(s.seed)
        attn = s.attn_implementation if self.cuda or s.attn_implementation != "flash_attention_2" else "sdpa"
        model = load_base_model(base_model, dtype=getattr(torch, s.dtype), attn_implementation=attn,
                                device=self.device)
        model = add_adapters(model, LoraSettings(s.lora_r, s.lora_alpha, s.lora_dropout, s.use_rslora,
                                                 s.lora_target_modules))
        if s.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        self.model = model
        self.trainable_params = [p for p in model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in self.trainable_params)
        self.forward = CausalLMLoss(model, s.loss_chunk_tokens)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) \
            if s.mixed_precision == "bf16" else contextlib.nullcontext

    def _setup_distributed(self, cache: Path) -> None:
        """The process group (NCCL on GPU, gloo on CPU) with a long timeout, the packed data,
        and the DDP wrapper around the forward and its loss."""
        s = self.settings
        if self.distributed:
            torch.distributed.init_process_group(
                backend="nccl" if self.cuda else "gloo", rank=self.rank, world_size=self.world,
                timeout=datetime.timedelta(seconds=s.process_group_timeout_s))
        self.barrier = torch.distributed.barrier if self.distributed else None
        wait_for_cache(cache)
        self.data = PackedDataset(cache, s.max_length, s.shape.get("pad_token_id", 100277))
        self.ddp_forward = self.forward
        if self.distributed:
            # Gradients as views into the communication buckets (no second copy of them). A static
            # graph lets DDP plan its reductions once, but it breaks under no_sync (PyTorch's reducer
            # asserts on the first accumulated micro-batch), so it is used only without accumulation.
            self.ddp_forward = torch.nn.parallel.DistributedDataParallel(
                self.forward, device_ids=[self.local_rank] if self.cuda else None,
                bucket_cap_mb=s.ddp_bucket_cap_mb, gradient_as_bucket_view=True,
                static_graph=s.gradient_accumulation == 1)

    def _setup_optimizer(self) -> None:
        """AdamW with the embedding and lm_head adapters at ``embedding_lr_ratio`` of the rate;
        the cosine spans the horizon (an epoch by default); ``max_steps`` only stops."""
        s = self.settings
        embed_params, main_params = split_parameter_groups(self.model)
        groups = [{"params": main_params, "lr": s.learning_rate, "name": "main"}]
        if embed_params:
            groups.append({"params": embed_params, "lr": s.learning_rate * s.embedding_lr_ratio,
                           "name": "embeddings"})
        self.optimizer = torch.optim.AdamW(groups, betas=s.betas, weight_decay=s.weight_decay)
        self.rows_per_step = s.per_device_batch_size * s.gradient_accumulation * self.world
        self.horizon = schedule_horizon(s, len(self.data), self.rows_per_step)
        self.scheduler = warmup_cosine(self.optimizer, self.horizon, s.warmup_ratio)

    def _resume(self, resume: str) -> tuple[str, float | None]:
        """Adapters, optimizer, schedule, RNG, health and the rows consumed of a checkpoint (a
        folder or a gs:// URL; ``latest`` was resolved to the run's newest healthy one, local or
        uploaded, by the constructor)."""
        self._resumed_state: dict = {}
        if resume.startswith("gs://"):
            from spark_pipeline.training.gcs import download_checkpoint

            resume = str(download_checkpoint(resume, self.run_dir / "downloaded" / resume.rstrip("/").rsplit("/", 1)[-1]))
        if not resume:
            return "", None
        t0 = time.perf_counter()
        state = load_checkpoint(Path(resume), self.model, self.optimizer, self.scheduler, self.rank)
        if state["data_fingerprint"] != self.data.fingerprint:
            raise SystemExit(f"checkpoint {resume} was made on other data ({state['data_fingerprint']}, "
                             f"this cache packs to {self.data.fingerprint}); refusing to resume")
        self.step, self.rows_consumed = state["step"], state["rows_consumed"]
        self.health.load_state(state["health"])
        self._resumed_state = state
        return resume, time.perf_counter() - t0

    def install_signal_handlers(self) -> None:
        """SIGINT, SIGTERM and SIGHUP only set a flag; the ranks agree on it after every micro-batch."""
        def on_signal(signum, frame):
            self.stop_signal = signal.Signals(signum).name

        for sig in STOP_SIGNALS:
            signal.signal(sig, on_signal)

    # -- the step -----------------------------------------------------------------------------

    def agreed(self, local: bool) -> bool:
        """Every rank's answer to "stop?", the same on all of them."""
        flag = torch.tensor([1.0 if local else 0.0], device=self.device)
        if self.distributed:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def adapter_norm(self) -> float:
        with torch.no_grad():
            return float(torch.sqrt(sum((p.detach().float() ** 2).sum() for p in self.trainable_params)))

    def train_step(self) -> StepOutcome:
        """One optimizer step. A stop signal is heeded after the micro-batch it arrives in: the
        unfinished step is dropped (resume redoes it) and the outcome says ``interrupted``."""
        s = self.settings
        t_step = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        tokens = 0
        preview = ""
        step_batches = self.batches.get(self.rows_consumed)
        for micro in range(s.gradient_accumulation):
            batch = {k: v.to(self.device, non_blocking=self.cuda) for k, v in step_batches[micro].items()}
            tokens += int((batch["labels"] != -100).sum())
            if not preview:
                preview = str(batch["input_ids"][0, :16].tolist())
            last = micro == s.gradient_accumulation - 1
            sync = contextlib.nullcontext() if (not self.distributed or last) else self.ddp_forward.no_sync()
            with sync:
                with self.autocast():
                    loss = self.ddp_forward(batch["input_ids"], batch["labels"], batch["position_ids"])
                (loss / s.gradient_accumulation).backward()
            loss_sum += loss.detach() / s.gradient_accumulation
            if self.slow_micro_batch_s:
                time.sleep(self.slow_micro_batch_s)
            if not last and self.agreed(bool(self.stop_signal)):
                self.optimizer.zero_grad(set_to_none=True)
                return StepOutcome(interrupted=True)
        if self.distributed:
            torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable_params, s.max_grad_norm)
        loss, gnorm = float(loss_sum), float(grad_norm)
        verdict = self.health.check(self.step + 1, loss, gnorm, preview)
        if verdict["skip_step"]:
            self.optimizer.zero_grad(set_to_none=True)  # a non-finite gradient never reaches the weights
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.rows_consumed += self.rows_per_step
        norm = self.adapter_norm()
        params = self.health.check_params(self.step, norm)
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter() - self.started  # model load and resume included
        step_time = time.perf_counter() - t_step
        metrics = {
            "train/loss": loss, "train/learning_rate": self.scheduler.get_last_lr()[0],
            "train/grad_norm": gnorm,  # before clipping: what the health monitor and the sweep's stability table see
            "train/grad_norm_post_clip": min(gnorm, s.max_grad_norm) if math.isfinite(gnorm) else gnorm,
            "train/throughput_tokens_per_sec": tokens / step_time,  # per GPU (this rank's tokens)
            "train/step_time_sec": step_time, "train/anomaly_count": self.health.anomaly_count,
            "train/nan_count": self.health.nan_count, "train/param_norm": norm}
        if self.cuda:
            metrics["train/mfu"] = tokens / step_time * self.mfu_flops / (self.gpu_peak_tflops * 1e12)
        self.last_metrics = metrics
        return StepOutcome(metrics=metrics, events=verdict["events"] + params["events"],
                           diverged=verdict["emergency"] or params["emergency"])

    def report(self, outcome: StepOutcome) -> None:
        """The step's metrics to every reporter, its anomalies and (on the first ten steps and
        every tenth) a progress line to the log."""
        m = outcome.metrics
        self.reporter.step(m, self.step)
        for event in outcome.events:
            self.reporter.log(f"anomaly: {json.dumps(event)}")
        if self.step <= 10 or self.step % 10 == 0 or self.step == self.max_steps:
            left = (self.max_steps - self.step) * m["train/step_time_sec"]
            self.reporter.log(f"step {self.step}/{self.max_steps}: loss {m['train/loss']:.4f}, "
                              f"{m['train/throughput_tokens_per_sec']:,.0f} tokens/s, eta {left / 60:.1f} min")

    def checkpoint_due(self) -> bool:
        return self.step % self.settings.save_every_steps == 0 or self.step == self.max_steps

    # -- checkpoints ----------------------------------------------------------------------------

    def trainer_state(self) -> dict:
        return {"step": self.step, "rows_consumed": self.rows_consumed, "data_fingerprint": self.data.fingerprint,
                "rows_per_step": self.rows_per_step, "health": self.health.state(),
                "wandb_run_id": self.reporter.run_id, "settings_hash": self.settings.fingerprint(),
                "schedule_horizon": self.horizon}

    def checkpoint(self, kind: str = "checkpoint", upload: bool = True) -> Path:
        """Save the last finished step as ``<kind>-<step>`` (``checkpoint`` or ``emergency``) and,
        when ``upload``, hand it to the background uploader."""
        folder = save_checkpoint(self.run_dir / "checkpoints" / f"{kind}-{self.step}", self.model, self.optimizer,
                                 self.scheduler, self.trainer_state(),
                                 {**self.lineage, "wandb_run_id": self.reporter.run_id}, self.rank, self.world,
                                 self.barrier)
        self.checkpoints.append((self.step, str(folder)))
        if self.uploader and upload:
            self.uploader.submit(folder)
        return folder

    # -- the end ------------------------------------------------------------------------------

    def close(self, exit_reason: str) -> int:
        """Finish the run whatever ended it: check that the ranks hold the same adapters, wait
        for the uploads up to their deadline, mark a diverged run's late checkpoints UNHEALTHY,
        write ``result.json`` and finish the reporters. Returns the program's exit code (3 for a
        diverged run). A watchdog ends the process if shutdown itself hangs."""
        self.batches.close()
        in_sync, checksums = self._ranks_in_sync()
        uploads = self._wait_for_uploads()
        unhealthy = self._mark_unhealthy(uploads) if exit_reason == "diverged" and self.rank == 0 else []
        metadata = self._result(exit_reason, in_sync, checksums, uploads, unhealthy)
        if self.rank == 0:
            (self.run_dir / "result.json").write_text(json.dumps(metadata, indent=2))
        # Everything is written. Shutdown (W&B's finish, the last barrier) has been seen to hang a
        # rank now and then on gloo; a watchdog makes sure the run exits, with its own exit code, and
        # a run stopped by a signal within what is left of the grace period.
        code = 3 if exit_reason == "diverged" else 0
        grace = SHUTDOWN_GRACE_S if exit_reason in ("finished", "diverged") else \
            min(SHUTDOWN_GRACE_S, max(5.0, self.settings.termination_grace_s / 2))
        watchdog = threading.Timer(grace, _exit_after_grace, args=(self.rank, code, grace))
        watchdog.daemon = True
        watchdog.start()
        self.reporter.finish(metadata)
        if self.distributed:
            torch.distributed.barrier()  # nobody leaves while another rank still writes
            # No destroy_process_group: the program leaves with os._exit right after this returns
            # (spark_pipeline/training/__main__.py), and gloo's teardown is where one rank of a
            # finished two-rank run was seen to hang past torchrun's grace period.
        watchdog.cancel()  # the program leaves right after this returns
        return code

    def _ranks_in_sync(self) -> tuple[bool, list]:
        """The ranks must hold identical adapters: compare a checksum of every trainable tensor."""
        checksum = float(sum(p.detach().double().sum() + (p.detach().double() ** 2).sum()
                             for p in self.trainable_params))
        checksums = [checksum]
        if self.distributed:
            checksums = [None] * self.world
            torch.distributed.all_gather_object(checksums, checksum)
        in_sync = all(abs(c - checksums[0]) <= 1e-9 * max(1.0, abs(checksums[0])) for c in checksums)
        if not in_sync:
            self.reporter.log(f"ranks out of sync: adapter checksums {checksums}")
        return in_sync, checksums

    def _wait_for_uploads(self) -> list[dict]:
        if not self.uploader:
            return []
        self.reporter.log(f"waiting up to {self.settings.upload_deadline_s} s for checkpoint uploads to finish")
        uploads = [vars(u) for u in self.uploader.close(timeout=self.settings.upload_deadline_s)]
        for u in uploads:
            self.reporter.log(f"upload {u['folder']} -> {u['url']}: {u['state']} after {u['attempts']} attempt(s)"
                              + (f" ({u['error']})" if u["error"] else ""))
        pending = [u for u in uploads if u["state"] in ("pending", "failed")]
        if pending:
            self.reporter.log(f"{len(pending)} checkpoint(s) not uploaded; their local copies are kept. Finish "
                              f"with: python -m spark_pipeline upload {self.run_dir} --to {self.upload}")
        return uploads

    def _mark_unhealthy(self, uploads: list[dict]) -> list[str]:
        """A diverged run's checkpoints after its last healthy step, here and in the bucket."""
        reason = f"the run diverged: {self.health.diverged}; last healthy step {self.health.last_healthy_step}"
        late = {f for s, f in self.checkpoints if s > self.health.last_healthy_step}
        unhealthy = mark_unhealthy(sorted(late), reason)
        remote = [u["url"] for u in uploads if u["folder"] in late and u["state"] == "uploaded"]
        if remote:
            from spark_pipeline.training.runs import mark_unhealthy_in_bucket

            try:
                unhealthy += mark_unhealthy_in_bucket(remote, reason)
            except Exception as exc:  # noqa: BLE001 - reported; the local markers are written
                self.reporter.warn(f"could not mark {remote} UNHEALTHY in the bucket: {type(exc).__name__}: {exc}")
        self.reporter.log(f"{reason}; checkpoints marked UNHEALTHY (not evaluated): {unhealthy}")
        return unhealthy

    def _result(self, exit_reason: str, in_sync: bool, checksums: list, uploads: list[dict],
                unhealthy: list[str]) -> dict:
        paths = [f for _, f in self.checkpoints]
        final = Path(paths[-1]) if paths else None
        m = self.last_metrics
        metadata = {
            "steps": self.step, "exit": exit_reason, "trainable_parameters": self.trainable,
            "world_size": self.world, "final_loss": m.get("train/loss"), "checkpoints": paths,
            "final_checkpoint": str(final) if final else None, "unhealthy_checkpoints": unhealthy,
            "last_healthy_step": self.health.last_healthy_step, "diverged": self.health.diverged,
            "schedule_horizon": self.horizon, "tokens_per_sec_per_gpu": m.get("train/throughput_tokens_per_sec"),
            "mfu": m.get("train/mfu"), "flops_per_token": self.mfu_flops, "anomalies": self.health.anomaly_count,
            "nan_count": self.health.nan_count, "wandb_run_id": self.reporter.run_id,
            "packing_efficiency": self.data.efficiency, "seconds_to_first_step": self.first_step_at,
            "resume_load_seconds": self.resume_seconds, "ranks_in_sync": in_sync, "rank_checksums": checksums,
            "logged_keys": sorted(m), "uploads": uploads}
        if final is not None and self.rank == 0:
            from spark_pipeline.records import sha256_file

            if (final / "adapter_model.safetensors").exists():
                metadata["final_checkpoint_sha"] = sha256_file(final / "adapter_model.safetensors")[:16]
            else:  # uploaded and deleted locally: the lineage names the adapter's hash
                metadata["final_checkpoint_sha"] = None
            uploaded = [u["url"] for u in uploads if u["state"] == "uploaded" and u["folder"] == str(final)]
            if uploaded:
                metadata["final_checkpoint_url"] = uploaded[0]
        return metadata
