"""Training settings, read from the configuration profile's ``training`` section (the
paper's values are in ``configs/hero.yaml``, §4 and Tables 3–4).

Every setting is validated (type and range) before anything starts, in the Dagster asset
and again in the training program, and a bad one is reported with its key and the files
it was read from: YAML reads ``1e-4`` (no dot) as text, which used to crash a worker with a
``TypeError`` after the model had loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields

from spark_pipeline.config import load_config, profile_files
from spark_pipeline.training.model import LORA_TARGETS


class SettingsError(ValueError):
    """A training setting has the wrong type or is out of range; the message names it."""


@dataclass
class TrainingSettings:
    base_model: str
    """A model folder; empty builds the embedded small OLMo-3-shaped model from ``shape``."""
    dtype: str
    attn_implementation: str
    shape: dict
    tokenizer: str
    max_length: int
    """Packed sequence length (paper: 2,048)."""
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    use_rslora: bool
    learning_rate: float
    embedding_lr_ratio: float
    """embed_tokens and lm_head adapters learn at this share of the main rate (paper: 0.5)."""
    weight_decay: float
    betas: tuple[float, float]
    warmup_ratio: float
    """Linear warm-up over this share of the schedule's horizon, then cosine decay to zero (paper: 0.10)."""
    max_grad_norm: float
    seed: int
    per_device_batch_size: int
    gradient_accumulation: int
    gpus: int
    activation_checkpointing: bool
    ddp_bucket_cap_mb: int
    process_group_timeout_s: int
    save_every_steps: int
    max_steps: int
    """A hard stop: the run ends after this step whatever the schedule says."""
    gpu_env: dict = field(default_factory=dict)
    """NCCL transport and CUDA allocator settings (§4.6), applied on GPU machines only."""
    schedule_horizon: str | int = "epoch"
    """The cosine schedule's length: ``epoch`` (the steps one pass over the packed data takes,
    as in the paper) or a number of steps; separate from ``max_steps``."""
    mixed_precision: str = "no"
    """``bf16``: the forward runs under bfloat16 autocast, so the LoRA matmuls (PEFT keeps
    adapters in fp32) run in bf16 while the optimizer updates fp32 master weights; ``no``."""
    loss_chunk_tokens: int = 512
    """The loss is computed over the vocabulary this many tokens at a time, each chunk's
    logits recomputed in backward; 0 uses the model's own loss (full logits)."""
    termination_grace_s: int = 300
    """Seconds between SIGTERM and SIGKILL (torchrun's ``--shutdown-timeout``): the emergency
    checkpoint must be written within it."""
    upload_deadline_s: int = 1800
    """A finished run waits at most this long for its checkpoint uploads, then reports the
    pending ones and ends (``spark upload`` finishes them)."""
    nan_limit: int = 3
    param_norm_factor: float = 2.0
    """An adapter parameter norm more than this many times the previous step's stops the run."""
    lora_target_modules: tuple[str, ...] = LORA_TARGETS
    """The module types that get adapters (paper §4.2: all nine; the sweep of §5 also tries the
    four attention projections alone)."""

    def __post_init__(self):
        # YAML and JSON give lists; the settings hold tuples (hashable, compared as equal)
        self.betas = tuple(self.betas)
        self.lora_target_modules = tuple(self.lora_target_modules)

    @classmethod
    def load(cls, profile: str | None = None, overrides: dict | None = None) -> TrainingSettings:
        t = load_config(profile)["training"]
        m, lora, opt, health = t["model"], t["lora"], t["optimizer"], t.get("health") or {}
        keys = {
            "base_model": "training.base_model", "dtype": "training.model.dtype",
            "attn_implementation": "training.model.attn_implementation", "shape": "training.model.shape",
            "tokenizer": "training.tokenizer", "max_length": "training.max_length", "lora_r": "training.lora.r",
            "lora_alpha": "training.lora.alpha", "lora_dropout": "training.lora.dropout",
            "use_rslora": "training.lora.use_rslora", "learning_rate": "training.optimizer.learning_rate",
            "embedding_lr_ratio": "training.optimizer.embedding_lr_ratio",
            "weight_decay": "training.optimizer.weight_decay", "betas": "training.optimizer.betas",
            "warmup_ratio": "training.optimizer.warmup_ratio", "max_grad_norm": "training.optimizer.max_grad_norm",
            "nan_limit": "training.health.nan_limit", "param_norm_factor": "training.health.param_norm_factor",
            "lora_target_modules": "training.lora.target_modules"}
        values = dict(
            base_model=t["base_model"] or "", dtype=m["dtype"], attn_implementation=m["attn_implementation"],
            shape=m["shape"], tokenizer=t["tokenizer"], max_length=t["max_length"], lora_r=lora["r"],
            lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], use_rslora=lora["use_rslora"],
            learning_rate=opt["learning_rate"], embedding_lr_ratio=opt["embedding_lr_ratio"],
            weight_decay=opt["weight_decay"], betas=opt["betas"], warmup_ratio=opt["warmup_ratio"],
            max_grad_norm=opt["max_grad_norm"], seed=t["seed"], per_device_batch_size=t["per_device_batch_size"],
            gradient_accumulation=t["gradient_accumulation"], gpus=t["gpus"],
            activation_checkpointing=t["activation_checkpointing"], ddp_bucket_cap_mb=t["ddp_bucket_cap_mb"],
            process_group_timeout_s=t["process_group_timeout_s"], save_every_steps=t["save_every_steps"],
            max_steps=t["max_steps"], gpu_env=dict(t.get("gpu_env") or {}),
            schedule_horizon=t.get("schedule_horizon", "epoch"), mixed_precision=t.get("mixed_precision", "no"),
            loss_chunk_tokens=t.get("loss_chunk_tokens", 512), termination_grace_s=t.get("termination_grace_s", 300),
            upload_deadline_s=t.get("upload_deadline_s", 1800), nan_limit=health.get("nan_limit", 3),
            param_norm_factor=health.get("param_norm_factor", 2.0),
            lora_target_modules=lora.get("target_modules", list(LORA_TARGETS)))
        values.update(overrides or {})
        where = " or ".join(str(p) for p in profile_files(profile))
        validate(values, lambda name: keys.get(name, f"training.{name}"), where)
        return cls(**values)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["lora_target_modules"] = list(self.lora_target_modules)
        return d

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict, source: str = "the settings file") -> TrainingSettings:
        d = dict(d)
        # runs written before the setting existed trained all nine module types
        d.setdefault("lora_target_modules", list(LORA_TARGETS))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SettingsError(f"{source}: unknown training setting(s) {unknown}")
        validate(d, lambda name: name, source)
        return cls(**d)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: name -> (what it must be, test)
_RULES: dict[str, tuple[str, object]] = {
    "base_model": ("a folder path (text; empty for the embedded model)", lambda v: isinstance(v, str)),
    "dtype": ("one of float32, bfloat16, float16", lambda v: v in ("float32", "bfloat16", "float16")),
    "attn_implementation": ("one of sdpa, eager, flash_attention_2",
                            lambda v: v in ("sdpa", "eager", "flash_attention_2")),
    "shape": ("a mapping of the model's shape", lambda v: isinstance(v, dict)),
    "tokenizer": ("text (dolma2-offline, base_model or hf:<path>)", lambda v: isinstance(v, str) and v),
    "max_length": ("an integer >= 16", lambda v: _integer(v) and v >= 16),
    "lora_r": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "lora_alpha": ("a number > 0", lambda v: _number(v) and v > 0),
    "lora_dropout": ("a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1),
    "use_rslora": ("true or false", lambda v: isinstance(v, bool)),
    "learning_rate": ("a number > 0", lambda v: _number(v) and v > 0),
    "embedding_lr_ratio": ("a number >= 0", lambda v: _number(v) and v >= 0),
    "weight_decay": ("a number >= 0", lambda v: _number(v) and v >= 0),
    "betas": ("two numbers in [0, 1)", lambda v: isinstance(v, list | tuple) and len(v) == 2
              and all(_number(b) and 0 <= b < 1 for b in v)),
    "warmup_ratio": ("a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1),
    "max_grad_norm": ("a number > 0", lambda v: _number(v) and v > 0),
    "seed": ("an integer", _integer),
    "per_device_batch_size": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "gradient_accumulation": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "gpus": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "activation_checkpointing": ("true or false", lambda v: isinstance(v, bool)),
    "ddp_bucket_cap_mb": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "process_group_timeout_s": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "save_every_steps": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "max_steps": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "gpu_env": ("a mapping of environment variables", lambda v: isinstance(v, dict)),
    "schedule_horizon": ("'epoch' or an integer >= 1", lambda v: v == "epoch" or (_integer(v) and v >= 1)),
    "mixed_precision": ("'bf16' or 'no'", lambda v: v in ("bf16", "no")),
    "loss_chunk_tokens": ("an integer >= 0", lambda v: _integer(v) and v >= 0),
    "termination_grace_s": ("an integer >= 5", lambda v: _integer(v) and v >= 5),
    "upload_deadline_s": ("an integer >= 0", lambda v: _integer(v) and v >= 0),
    "nan_limit": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "param_norm_factor": ("a number > 1", lambda v: _number(v) and v > 1),
    "lora_target_modules": (f"a non-empty list of module types among {', '.join(LORA_TARGETS)}",
                            lambda v: isinstance(v, list | tuple) and len(v) > 0 and set(v) <= set(LORA_TARGETS)),
}


def validate(values: dict, key_of, where: str) -> None:
    """Raise :class:`SettingsError` listing every setting of the wrong type or out of range."""
    problems = []
    for name, (expected, ok) in _RULES.items():
        if name not in values:
            problems.append(f"{key_of(name)} is missing")
            continue
        value = values[name]
        if not ok(value):
            hint = ""
            if isinstance(value, str) and value.strip().lower().replace("e", "", 1).replace("-", "", 1) \
                    .replace("+", "", 1).replace(".", "", 1).isdigit():
                hint = " (YAML read it as text: write it with a dot and a signed exponent, e.g. 1.0e-4)"
            problems.append(f"{key_of(name)} = {value!r} ({type(value).__name__}): expected {expected}{hint}")
    if problems:
        raise SettingsError(f"training settings in {where}:\n  - " + "\n  - ".join(problems))
