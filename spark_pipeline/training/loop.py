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
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from spark_pipeline.training.checkpoint import CheckpointExistsError
from spark_pipeline.training.runs import RunFolderError
from spark_pipeline.training.settings import SettingsError, TrainingSettings
from spark_pipeline.training.trainer import Trainer


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
    args = parse_args(argv)
    # 1. settings: a bad one stops the program before the model loads
    try:
        settings = TrainingSettings.from_dict(json.loads(args.settings.read_text()), source=str(args.settings))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    lineage = json.loads(args.lineage.read_text()) if args.lineage else {}
    try:
        return run(args, settings, lineage)
    except (RunFolderError, CheckpointExistsError) as exc:
        # another run's folder or checkpoint: said once (every rank finds the same), nothing written
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


def run(args, settings: TrainingSettings, lineage: dict) -> int:
    # 2-5. a run folder that is new or this run's, device, model and adapters, process group and DDP,
    # optimizer and schedule, resume
    trainer = Trainer(settings, run_dir=args.run_dir, cache=args.cache, base_model=args.base_model, lineage=lineage,
                      resume=args.resume, upload=args.upload, keep_local=args.keep_local, max_steps=args.max_steps,
                      gpu_peak_tflops=args.gpu_peak_tflops, slow_micro_batch_s=args.slow_micro_batch_s)
    trainer.install_signal_handlers()
    log = trainer.reporter.log
    exit_reason = "finished"
    # 6. the steps, 7. stopping on a signal or on divergence
    while trainer.step < trainer.max_steps:
        outcome = trainer.train_step()
        if outcome.interrupted:
            exit_reason = trainer.stop_signal or "SIGTERM"
            t_save = time.perf_counter()
            folder = trainer.checkpoint("emergency")
            log(f"{exit_reason} during step {trainer.step + 1}: emergency checkpoint of step {trainer.step} "
                f"in {folder} ({time.perf_counter() - t_save:.1f} s)")
            break
        trainer.report(outcome)
        if trainer.checkpoint_due():
            folder = trainer.checkpoint("checkpoint", upload=not outcome.diverged)
            log(f"checkpoint {folder} (free disk {shutil.disk_usage(args.run_dir).free / 2**30:.1f} GiB)")
        if args.stop_after and trainer.step == args.stop_after and trainer.rank == 0:
            os.kill(os.getpid(), getattr(signal, args.stop_signal))
        if trainer.agreed(bool(trainer.stop_signal) or outcome.diverged):
            exit_reason = "diverged" if outcome.diverged else (trainer.stop_signal or "SIGTERM")
            folder = trainer.checkpoint("emergency", upload=not outcome.diverged)
            log(f"{exit_reason}: emergency checkpoint at step {trainer.step} in {folder}")
            break
    return trainer.close(exit_reason)


if __name__ == "__main__":
    sys.exit(main())
