"""Sweep settings: ``configs/sweep.yaml`` (the paper's search space, Tables 6-9, once), then
the training profile's ``sweep:`` section, then a user's YAML, each overlaying the last.
Every value is checked before a trial starts; an error names the key and the files."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from spark_pipeline.config import _merge, active_profile, load_config
from spark_pipeline.schema import ConfigError, Strict, dotted, problems
from spark_pipeline.settings import CONFIG_DIR
from spark_pipeline.training.model import LORA_TARGETS

SAMPLERS = ("grid", "tpe", "gp")
OBJECTIVES = ("final_loss", "min_loss")


class SweepError(ConfigError):
    """A sweep setting is missing, of the wrong type or out of range; the message names it."""


class Prune(Strict):
    non_finite: bool = True
    """Any non-finite loss or a diverged run prunes the configuration."""
    max_grad_norm_spikes: Annotated[int, Field(ge=0)] | None = None
    """More grad-norm spikes than this in any seed prunes it; none: no limit."""


class Range(Strict):
    low: int | float
    high: int | float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"expected low < high, got {self.low} and {self.high}")
        return self


def _fixed_training() -> type[Strict]:
    """Any subset of the training settings, each of its own type (Table 6's fixed values)."""
    from spark_pipeline.training.settings import TrainingSettings

    return create_model("FixedTraining", __base__=Strict, **{
        name: (field.annotation | None, None) for name, field in TrainingSettings.model_fields.items()})


_FixedTraining = _fixed_training()


def _space_problems(values: dict) -> list[str]:
    """What the types alone cannot say of the search space (read from the raw values, so that
    these come with every other problem in one message)."""
    from spark_pipeline.training.settings import TrainingSettings

    problems = []
    space = values.get("space") if isinstance(values.get("space"), dict) else {}
    target_sets = values.get("target_sets") if isinstance(values.get("target_sets"), dict) else {}
    sampler = values.get("sampler")
    if sampler in ("tpe", "gp") and values.get("trials") == 0:
        problems.append("trials = 0: expected a number of trials > 0 for tpe and gp")
    for axis, levels in space.items():
        if axis not in set(TrainingSettings.model_fields) | {"targets"}:
            problems.append(f"space.{axis}: not a training setting (nor `targets`)")
        if isinstance(levels, dict) and sampler == "grid":
            problems.append(f"space.{axis} = {levels!r}: a grid needs a list of levels")
        elif isinstance(levels, list) and len(set(map(repr, levels))) != len(levels):
            problems.append(f"space.{axis} = {levels!r}: expected distinct levels")
    targets = space.get("targets")
    for level in targets if isinstance(targets, list) else []:
        if level not in target_sets:
            problems.append(f"space.targets: {level!r} is not in target_sets ({sorted(target_sets)})")
    return problems


class SweepSettings(Strict):
    study: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")]
    sampler: Literal[SAMPLERS]  # type: ignore[valid-type]
    trials: Annotated[int, Field(ge=0)]
    seeds: Annotated[list[int], Field(min_length=1)]
    max_steps: Annotated[int, Field(ge=1)]
    objective: Literal[OBJECTIVES]  # type: ignore[valid-type]
    objective_window: Annotated[int, Field(ge=1)]
    init_loss_step: Annotated[int, Field(ge=1)]
    space: Annotated[dict[str, Annotated[list, Field(min_length=1)] | Range], Field(min_length=1)]
    """axis -> list of levels (categorical) or {low, high, log} (a range, tpe/gp only)."""
    target_sets: dict[str, Annotated[list[Literal[LORA_TARGETS]], Field(min_length=1)]]  # type: ignore[valid-type]
    alpha_per_rank: Annotated[int | float, Field(gt=0)]
    training: _FixedTraining
    """Training settings held fixed across trials (Table 6), over the profile's."""
    prune: Prune
    sources: list[str] = []

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("expected distinct seeds")
        return seeds

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
        if not isinstance(values, dict) or "sources" in values:
            raise SweepError(f"sweep settings in {where}: expected a mapping of sweep settings")
        try:
            settings = cls.model_validate({**values, "sources": [str(f) for f in files]})
            lines = []
        except ValidationError as exc:
            settings, lines = None, problems(exc, cls, dotted())
        lines += _space_problems(values)
        if lines:
            raise SweepError(f"sweep settings in {where}:\n  - " + "\n  - ".join(lines))
        return settings

    def space_as_data(self) -> dict:
        """The space as plain lists and {low, high, log} mappings (JSON, the study's attributes)."""
        return self.model_dump()["space"]

    def fixed_training(self) -> dict:
        """The training settings the sweep holds fixed, as given (unset ones left out)."""
        return self.training.model_dump(exclude_unset=True)

    @property
    def axes(self) -> list[str]:
        return list(self.space)

    def cells(self) -> list[dict]:
        """Every cell of the grid, in the order of the space's lists."""
        axes = self.axes
        return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*(self.space[a] for a in axes))]

    def training_overrides(self, params: dict, seed: int) -> dict:
        """The training settings one run of a configuration gets, over the profile's."""
        out = self.fixed_training()
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
