"""Preparing a training run: the base model, the settings and lineage files, and the
torchrun command that the ``train_hero`` asset (or a user's shell) runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from spark_pipeline.records import atomic_write_json
from spark_pipeline.training.lifeline import LAUNCHER_PID
from spark_pipeline.training.model import ensure_base_model
from spark_pipeline.training.runs import check_lineage, check_settings, claim_run_folder
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


def prepare_run(run_dir: Path, settings: TrainingSettings, lineage: dict, resume: str = "") -> tuple[Path, Path]:
    """``settings.json`` and ``lineage_input.json`` of a launch into ``run_dir``. A folder that
    already holds a run is refused (:class:`RunFolderError`, nothing written) when its settings
    or data differ, or when it holds that run's outputs and this launch does not ``resume``; a
    resume keeps ``settings.json`` as it is and records its own lineage (the Dagster run id
    changes). The program checks the rest (which checkpoint it continues from) itself."""
    check_settings(run_dir, settings.to_dict())
    check_lineage(run_dir, lineage)
    if not resume:
        claim_run_folder(run_dir, settings.to_dict())
    run_dir.mkdir(parents=True, exist_ok=True)
    settings_file = run_dir / "settings.json"
    lineage_file = run_dir / "lineage_input.json"
    if not settings_file.exists():
        atomic_write_json(settings_file, settings.to_dict())
    if not lineage_file.exists() or json.loads(lineage_file.read_text()) != lineage:
        atomic_write_json(lineage_file, lineage)
    return settings_file, lineage_file


def torchrun_command(nproc: int, run_dir: Path, cache: Path, base_model: Path, settings_file: Path,
                     lineage_file: Path, resume: str = "", max_steps: int = 0, extra: list[str] | None = None,
                     grace_s: int = 30) -> list[str]:
    """torchrun gives its workers ``grace_s`` seconds between SIGTERM and SIGKILL (its own
    default is 30 s, shorter than one hero step): ``termination_grace_s`` of the settings.
    It is started through :mod:`.lifeline`, which ties it to the launcher that sets
    ``SPARK_LAUNCHER_PID`` (:func:`launcher_env`) and then runs torchrun in the same process."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    lifeline = [sys.executable, "-m", "spark_pipeline.training.lifeline"]
    cmd = lifeline + launcher + ["--standalone", f"--nproc_per_node={nproc}", f"--shutdown-timeout={int(grace_s)}",
                                 "-m", "spark_pipeline.training",
                                 "--run-dir", str(run_dir), "--cache", str(cache), "--base-model", str(base_model),
                                 "--settings", str(settings_file), "--lineage", str(lineage_file)]
    if resume:
        cmd += ["--resume", resume]
    if max_steps:
        cmd += ["--max-steps", str(max_steps)]
    return cmd + (extra or [])


def launcher_env() -> dict[str, str]:
    """What a process that starts :func:`torchrun_command` and waits for it puts into its
    environment so that torchrun, and with it its workers, die with that process."""
    return {LAUNCHER_PID: str(os.getpid())}


class LaunchError(RuntimeError):
    """What a training launch needs is missing (the mixture, its tokenized cache, the GPU image)."""


def current_inputs(root: Path, settings: TrainingSettings, dagster_run_id: str = "") -> tuple[Path, dict]:
    """(the tokenized cache of the current mixture under storage ``root``, the lineage a run
    records: mixture, cache, tokenizer, the pair partitions with their versions, the sample and
    evaluation-set versions, the base model's identity)."""
    from spark_pipeline.corpus.stages import check_pairs_manifest
    from spark_pipeline.specmap.pairs import PairError
    from spark_pipeline.training.model import base_identity

    root = Path(root)
    tokens = root / "tokens"
    caches = [p.parent for p in tokens.glob("*/.done")] if tokens.exists() else []
    mixture = root / "corpus" / "mixture" / "manifest.json"
    if not mixture.exists():
        raise LaunchError("no training mixture: materialize repo_datasheet_pairs, the per-pair assets "
                          "(specmap_mappings, section_chunks, quality_samples), eval_sets, training_mixture and "
                          "tokenized_cache first (`spark demo` does all of them)")
    manifest = json.loads(mixture.read_text())
    try:
        registry = check_pairs_manifest(root, manifest["lineage"].get("pairs_manifest"), "the training mixture",
                                        "eval_sets, training_mixture and tokenized_cache")
    except PairError as exc:
        raise LaunchError(str(exc)) from exc
    held_out = sorted(set(manifest.get("pairs", {})) & set(registry["held_out"]))
    if held_out:  # cannot happen through the stages; a hand-made mixture is refused all the same
        raise LaunchError(f"the training mixture holds samples of held-out pair(s) {held_out}: refusing to train")
    infos = {c: json.loads((c / "cache.json").read_text()) for c in caches}
    matching = [c for c, info in infos.items()
                if info["mixture_hash"] == manifest["mixture_hash"] and info["max_length"] == settings.max_length]
    if not matching:
        raise LaunchError(f"no tokenized cache for the current mixture ({manifest['mixture_hash'][:12]}) at "
                          f"max_length {settings.max_length}: materialize tokenized_cache first")
    cache = max(matching, key=lambda c: (c / ".done").stat().st_mtime)
    cache_info = infos[cache]
    lineage = {"mixture_hash": manifest["mixture_hash"], "tokenized_cache": cache_info["key"],
               "tokenizer": cache_info["tokenizer"],
               # the pair partitions whose samples are in the mixture, with the versions they had
               "pairs": {p: registry["versions"][p] for p in manifest.get("pairs", {}) if p in registry["versions"]},
               "quality_samples": manifest["lineage"]["quality_samples"],
               "eval_sets": manifest["lineage"].get("eval_sets", {}), "dagster_run_id": dagster_run_id}
    lineage["base_model"] = base_identity(base_model_folder(settings, root))  # evaluation checks it
    return cache, lineage


def k8s_launch(settings: TrainingSettings, cmd: list[str], upload_root: str, env: dict) -> dict:
    """The arguments of ``PipesK8sClient.run`` for the training pod: the GPU image
    (``$SPARK_TRAIN_IMAGE``), torchrun as the pod's command, and the pod spec of
    :func:`spark_pipeline.k8s.training_pod_spec` (GPUs, /dev/shm, grace period, storage)."""
    from spark_pipeline.k8s import training_pod_spec

    image = os.environ.get("SPARK_TRAIN_IMAGE", "")
    if not image:
        raise LaunchError("SPARK_TRAIN_LAUNCHER=k8s needs SPARK_TRAIN_IMAGE, the GPU image (deploy/Dockerfile, "
                          "VARIANT=gpu)")
    pod_cmd = ["torchrun", *cmd[cmd.index("--standalone"):]]
    return {"image": image, "command": pod_cmd, "env": env,
            "base_pod_spec": training_pod_spec(settings, image, pod_cmd, checkpoint_url=upload_root,
                                               profile=os.environ.get("SPARK_PROFILE", "hero"))}
