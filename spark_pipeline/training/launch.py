"""Preparing a training run: the base model, the settings and lineage files, and the
torchrun command that the ``train_hero`` asset (or a user's shell) runs."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from spark_pipeline.records import atomic_write_json
from spark_pipeline.training.model import ensure_base_model
from spark_pipeline.training.settings import TrainingSettings


def base_model_folder(settings: TrainingSettings, storage: Path) -> Path:
    """The configured base model, or the embedded one (built once under the storage root)."""
    if settings.base_model:
        path = Path(settings.base_model)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"base model {settings.base_model} is not a local model folder with config.json "
                                    "(models are never downloaded at run time: fetch it first)")
        return path
    digest = hashlib.sha256(json.dumps([settings.shape, settings.seed], sort_keys=True).encode()).hexdigest()[:12]
    return ensure_base_model(Path(storage) / "models" / f"olmo3-small-{digest}", settings.shape, settings.seed)


def tokenizer_name(name: str, settings: TrainingSettings, storage: Path) -> str:
    """``base_model`` means the base model's own tokenizer (``hf:<its folder>``)."""
    return f"hf:{base_model_folder(settings, storage)}" if name == "base_model" else name


def prepare_run(run_dir: Path, settings: TrainingSettings, lineage: dict) -> tuple[Path, Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    settings_file = run_dir / "settings.json"
    lineage_file = run_dir / "lineage_input.json"
    atomic_write_json(settings_file, settings.to_dict())
    atomic_write_json(lineage_file, lineage)
    return settings_file, lineage_file


def torchrun_command(nproc: int, run_dir: Path, cache: Path, base_model: Path, settings_file: Path,
                     lineage_file: Path, resume: str = "", max_steps: int = 0, extra: list[str] | None = None,
                     grace_s: int = 30) -> list[str]:
    """torchrun gives its workers ``grace_s`` seconds between SIGTERM and SIGKILL (its own
    default is 30 s, shorter than one hero step): ``termination_grace_s`` of the settings."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    cmd = launcher + ["--standalone", f"--nproc_per_node={nproc}", f"--shutdown-timeout={int(grace_s)}",
                      "-m", "spark_pipeline.training",
                      "--run-dir", str(run_dir), "--cache", str(cache), "--base-model", str(base_model),
                      "--settings", str(settings_file), "--lineage", str(lineage_file)]
    if resume:
        cmd += ["--resume", resume]
    if max_steps:
        cmd += ["--max-steps", str(max_steps)]
    return cmd + (extra or [])
