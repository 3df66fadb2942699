"""Sweep settings: ``configs/sweep.yaml`` (the paper's search space, Tables 6-9, once), then
the training profile's ``sweep:`` section, then a user's YAML, each overlaying the last.
Every value is checked before a trial starts; an error names the key and the files."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from spark_pipeline.config import _merge, active_profile, load_config
from spark_pipeline.settings import CONFIG_DIR

SAMPLERS = ("grid", "tpe", "gp")
OBJECTIVES = ("final_loss", "min_loss")


class SweepError(ValueError):
    """A sweep setting is missing, of the wrong type or out of range; the message names it."""


@dataclass
class SweepSettings:
    study: str
    sampler: str
    trials: int
    seeds: list[int]
    max_steps: int
    objective: str
    objective_window: int
    init_loss_step: int
    space: dict
    """axis -> list of levels (categorical) or {low, high, log} (a range, tpe/gp only)."""
    target_sets: dict
    alpha_per_rank: float
    training: dict
    """Training settings held fixed across trials (Table 6), over the profile's."""
    prune: dict
    sources: list[str]

    @classmethod
    def load(cls, profile: str | None = None, user_yaml: str = "") -> SweepSettings:
        files = [CONFIG_DIR / "sweep.yaml"]
        values = yaml.safe_load(files[0].read_text())
        profile_part = load_config(profile).get("sweep") or {}
        if profile_part:
            files.append(Path(f"the profile {profile or active_profile()}'s sweep section"))
            values = _merge(values, profile_part)
        if user_yaml:
            path = Path(user_yaml).expanduser()
            if not path.exists():
                raise SweepError(f"sweep settings file {path} does not exist")
            files.append(path)
            values = _merge(values, yaml.safe_load(path.read_text()) or {})
        where = " over ".join(str(f) for f in reversed(files))
        known = {f.name for f in fields(cls)} - {"sources"}
        unknown = sorted(set(values) - known)
        missing = sorted(known - set(values))
        if unknown or missing:
            raise SweepError(f"sweep settings in {where}: " + "; ".join(
                ([f"unknown key(s) {unknown}"] if unknown else []) + ([f"missing key(s) {missing}"] if missing else [])))
        settings = cls(**values, sources=[str(f) for f in files])
        settings.validate(where)
        return settings

    def validate(self, where: str) -> None:
        from spark_pipeline.training.settings import TrainingSettings

        problems = []

        def need(ok: bool, key: str, what: str):
            if not ok:
                problems.append(f"  - {key} = {getattr(self, key.split('.')[0], None)!r}: expected {what}")

        need(isinstance(self.study, str) and self.study.replace("-", "").replace("_", "").isalnum(), "study",
             "a name of letters, digits, - and _")
        need(self.sampler in SAMPLERS, "sampler", f"one of {', '.join(SAMPLERS)}")
        need(isinstance(self.trials, int) and self.trials >= 0, "trials", "an integer >= 0")
        need(self.sampler == "grid" or self.trials > 0, "trials", "a number of trials > 0 for tpe and gp")
        need(isinstance(self.seeds, list) and len(self.seeds) >= 1 and all(isinstance(s, int) for s in self.seeds)
             and len(set(self.seeds)) == len(self.seeds), "seeds", "a list of distinct integers")
        need(isinstance(self.max_steps, int) and self.max_steps >= 1, "max_steps", "an integer >= 1")
        need(self.objective in OBJECTIVES, "objective", f"one of {', '.join(OBJECTIVES)}")
        need(isinstance(self.objective_window, int) and self.objective_window >= 1, "objective_window",
             "an integer >= 1")
        need(isinstance(self.init_loss_step, int) and self.init_loss_step >= 1, "init_loss_step", "an integer >= 1")
        need(isinstance(self.alpha_per_rank, int | float) and self.alpha_per_rank > 0, "alpha_per_rank", "a number > 0")
        need(isinstance(self.space, dict) and len(self.space) >= 1, "space", "a mapping of axes")
        training_fields = {f.name for f in fields(TrainingSettings)}
        for axis, levels in (self.space or {}).items():
            if axis not in training_fields | {"targets"}:
                problems.append(f"  - space.{axis}: not a training setting (nor `targets`)")
            if isinstance(levels, list):
                if not levels or len(set(map(repr, levels))) != len(levels):
                    problems.append(f"  - space.{axis} = {levels!r}: expected a non-empty list of distinct levels")
            elif isinstance(levels, dict):
                if self.sampler == "grid":
                    problems.append(f"  - space.{axis} = {levels!r}: a grid needs a list of levels")
                elif not (set(levels) <= {"low", "high", "log"} and {"low", "high"} <= set(levels)
                          and levels["low"] < levels["high"]):
                    problems.append(f"  - space.{axis} = {levels!r}: expected {{low, high, log}} with low < high")
            else:
                problems.append(f"  - space.{axis} = {levels!r}: expected a list of levels or {{low, high, log}}")
        for level in (self.space or {}).get("targets", []) if isinstance(self.space.get("targets"), list) else []:
            if level not in (self.target_sets or {}):
                problems.append(f"  - space.targets: {level!r} is not in target_sets ({sorted(self.target_sets)})")
        unknown = sorted(set(self.training or {}) - training_fields)
        if unknown:
            problems.append(f"  - training: unknown training setting(s) {unknown}")
        if not isinstance(self.prune, dict) or not set(self.prune) <= {"non_finite", "max_grad_norm_spikes"}:
            problems.append(f"  - prune = {self.prune!r}: expected non_finite and max_grad_norm_spikes")
        if problems:
            raise SweepError(f"sweep settings in {where}:\n" + "\n".join(problems))

    @property
    def axes(self) -> list[str]:
        return list(self.space)

    def cells(self) -> list[dict]:
        """Every cell of the grid, in the order of the space's lists."""
        axes = self.axes
        return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*(self.space[a] for a in axes))]

    def training_overrides(self, params: dict, seed: int) -> dict:
        """The training settings one run of a configuration gets, over the profile's."""
        out = dict(self.training)
        for axis, value in params.items():
            if axis == "targets":
                out["lora_target_modules"] = list(self.target_sets[value])
            else:
                out[axis] = value
        if "lora_r" in params and "lora_alpha" not in params:
            out["lora_alpha"] = self.alpha_per_rank * params["lora_r"]
        out["seed"] = seed
        out["max_steps"] = self.max_steps
        out.setdefault("schedule_horizon", self.max_steps)  # Table 6: the cosine over the trial's steps
        out.setdefault("save_every_steps", self.max_steps)  # one checkpoint, at the end
        return out


def cell_name(params: dict) -> str:
    """A configuration's short name, as the paper writes them (``r512-full-lr3.45e-05``)."""
    parts = []
    for axis, value in params.items():
        if axis == "lora_r":
            parts.append(f"r{value}")
        elif axis == "learning_rate":
            parts.append(f"lr{value:.3g}")
        elif axis == "targets":
            parts.append(str(value))
        else:
            parts.append(f"{axis}{value}")
    return "-".join(parts)


def effective_scale(params: dict, alpha_per_rank: float, use_rslora: bool = True) -> float | None:
    """``lr x alpha / sqrt(r)`` (rsLoRA): the size of the adapter's update in the model's output.
    With alpha = 2r it is lr x 2 sqrt(r), so rank and learning rate move together."""
    lr, r = params.get("learning_rate"), params.get("lora_r")
    if lr is None or r is None:
        return None
    alpha = params.get("lora_alpha", alpha_per_rank * r)
    return lr * alpha / (r ** 0.5 if use_rslora else r)
