"""Checkpoints: a standard PEFT adapter folder plus everything needed to resume by index.

    checkpoint-<step>/                 (or emergency-<step>/: saved on a signal or divergence)
      adapter_config.json, adapter_model.safetensors   PeftModel.from_pretrained loads these
      optimizer.pt, scheduler.pt       optimizer and LR schedule
      rng_state_<rank>.pt              torch (CPU, CUDA), Python and numpy generators per rank
      trainer_state.json               step, rows consumed, data fingerprint, health, W&B run id
      lineage.json                     mixture hash, pair partitions and versions, cache key,
                                       base model identity, config hash, code version, W&B run id,
                                       adapter sha256 and adapter digest (config + weights)

Written into a temporary folder and renamed when complete; never overwritten afterwards
(:mod:`.runs`). Saving over a complete checkpoint keeps it only when it holds the same state
(step, rows consumed, data, settings, adapter configuration and weights), which is what an
emergency save right after resuming from it writes; anything else is a
:class:`CheckpointExistsError`. PEFT is told not to save the base model's full embedding and
lm_head matrices (1.5 GiB at 7B): only the adapters.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import torch

from spark_pipeline.records import atomic_write_json, sha256_file


def code_version() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                                   timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    from spark_pipeline import __version__

    return f"spark-pipeline-{__version__}"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def adapter_digest(folder: Path) -> str:
    """sha256 over the adapter's config and weights together: what makes the adapter act as it
    does (rank, alpha, rsLoRA, target modules as much as the tensors)."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        digest.update(name.encode() + b"\0" + sha256_file(Path(folder) / name).encode() + b"\n")
    return digest.hexdigest()


class CheckpointExistsError(FileExistsError):
    """A complete checkpoint of the same name holds another state: checkpoints are immutable."""


#: The trainer state that makes two checkpoints of one step the same point of one run.
SAME_STATE_KEYS = ("step", "rows_consumed", "data_fingerprint", "settings_hash")
#: The adapter configuration that makes the same weights act the same.
SAME_ADAPTER_KEYS = ("r", "lora_alpha", "use_rslora", "target_modules")


def checkpoint_differences(folder: Path, model, trainer_state: dict) -> list[str]:
    """What differs between the complete checkpoint in ``folder`` and the state ``model`` and
    ``trainer_state`` would be saved as: trainer-state keys, adapter configuration, and the
    adapter weights tensor by tensor (read one at a time). Empty when they are the same.
    Optimizer, schedule and RNG states are not compared: at the same step, rows and weights
    they follow from the same history."""
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    folder = Path(folder)
    there = load_trainer_state(folder)
    differ = [f"{key} {there[key]!r} there, {trainer_state[key]!r} here" for key in SAME_STATE_KEYS
              if key in there and key in trainer_state and there[key] != trainer_state[key]]
    config = json.loads((folder / "adapter_config.json").read_text())
    ours = model.peft_config[model.active_adapter].to_dict()
    for key in SAME_ADAPTER_KEYS:
        a, b = config.get(key), ours.get(key)
        if key == "target_modules" and a is not None and b is not None and not isinstance(a, str):
            a, b = sorted(a), sorted(b)
        if a != b:
            differ.append(f"adapter {key} {a!r} there, {b!r} here")
    weights = get_peft_model_state_dict(model, save_embedding_layers=False)
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as saved:
        names = set(saved.keys())
        if names != set(weights):
            differ.append(f"other adapter tensors ({len(names ^ set(weights))} names in only one of them)")
        else:
            changed = [k for k in sorted(names) if not torch.equal(saved.get_tensor(k), weights[k].detach().cpu())]
            if changed:
                differ.append(f"other adapter weights ({len(changed)} of {len(names)} tensors differ, e.g. "
                              f"{changed[0]})")
    return differ


def save_checkpoint(folder: Path, model, optimizer, scheduler, trainer_state: dict, lineage: dict, rank: int,
                    world: int, barrier=None) -> Path:
    """Rank 0 writes the shared files; every rank writes its RNG state. A complete checkpoint
    is never written again: if ``folder`` already holds one of the same state (an emergency
    save right after resuming from it), it is kept as it is; of another step or another state
    (other weights, rows consumed or data), it is an error and nothing is written. Every rank
    compares (their adapters are the same), so all of them keep it or all of them raise."""
    folder = Path(folder)
    if (folder / "trainer_state.json").exists():
        existing = load_trainer_state(folder)["step"]
        if existing != trainer_state["step"]:
            raise CheckpointExistsError(f"{folder} already holds the checkpoint of step {existing}; checkpoints are "
                                        f"immutable, refusing to write step {trainer_state['step']} over it")
        differ = checkpoint_differences(folder, model, trainer_state)
        if differ:
            raise CheckpointExistsError(
                f"{folder} already holds a checkpoint of step {existing} with {'; '.join(differ)}: it is not this "
                "run's state. Checkpoints are immutable: refusing to write over it or to count it as this run's")
        return folder
    tmp = folder.parent / f".{folder.name}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if barrier:
        barrier()
    torch.save(rng_state(), tmp / f"rng_state_{rank}.pt")
    if rank == 0:
        model.save_pretrained(tmp, save_embedding_layers=False)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        atomic_write_json(tmp / "trainer_state.json", {**trainer_state, "world_size": world})
        adapter = tmp / "adapter_model.safetensors"
        atomic_write_json(tmp / "lineage.json", {**lineage, "adapter_sha256": sha256_file(adapter),
                                                 "adapter_digest": adapter_digest(tmp), "step": trainer_state["step"]})
    if barrier:
        barrier()
    if rank == 0:
        if folder.exists():  # an incomplete leftover (no trainer_state.json); complete ones returned above
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    if barrier:
        barrier()
    return folder


def load_trainer_state(folder: Path) -> dict:
    return json.loads((Path(folder) / "trainer_state.json").read_text())


def load_checkpoint(folder: Path, model, optimizer, scheduler, rank: int) -> dict:
    """Restore adapters, optimizer, schedule and this rank's RNG; returns the trainer state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    weights = load_file(str(folder / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"{folder}: adapter weights do not fit this model: {unexpected[:5]}")
    schedule = torch.load(folder / "scheduler.pt", weights_only=False)
    legacy = "_schedulers" in scheduler.state_dict() and "_schedulers" not in schedule
    if legacy:
        # Saved by the single LambdaLR of the schedule's same closed form that came before the
        # chain of torch schedulers (training/schedule.py): replay its steps on the chain.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
            for _ in range(schedule["last_epoch"]):
                scheduler.step()
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))
    if not legacy:
        scheduler.load_state_dict(schedule)
    rng_file = folder / f"rng_state_{rank}.pt"
    if not rng_file.exists():
        rng_file = folder / "rng_state_0.pt"
    set_rng_state(torch.load(rng_file, weights_only=False))
    return load_trainer_state(folder)
