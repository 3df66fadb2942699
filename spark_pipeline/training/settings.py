"""Training settings, read from the configuration profile's ``training`` section (the
paper's values are in ``configs/hero.yaml``, §4 and Tables 3–4).

:class:`TrainingSettings` is the flat, typed form the training program receives (as
``settings.json``); :data:`TREE` says where each setting sits in the profile's nested
``training`` section, and :class:`TrainingSection` (built from the same fields, so each type
and range is written once) checks that section, unknown keys included. Every setting is
checked before anything starts, in the Dagster asset and again in the training program, and
a bad one is reported with its key and the files it was read from: YAML reads ``1e-4`` (no
dot) as text, which used to crash a worker with a ``TypeError`` after the model had loaded.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, create_model, field_validator

from spark_pipeline.config import load_config, where
from spark_pipeline.schema import ConfigError, Count, NonNegative, Positive, Size, Strict, check, dotted
from spark_pipeline.training.model import LORA_TARGETS


class SettingsError(ConfigError):
    """A training setting has the wrong type, is out of range or unknown; the message names it."""


def _as_tuple(value):
    return tuple(value) if isinstance(value, list) else value


Beta = Annotated[int | float, Field(ge=0, lt=1)]
Target = Literal[LORA_TARGETS]  # type: ignore[valid-type]


class ModelShape(Strict):
    """The OLMo-3 architecture the embedded model is built with (and the FLOPs are counted on)."""

    hidden_size: Count
    intermediate_size: Count
    num_hidden_layers: Count
    num_attention_heads: Count
    num_key_value_heads: Count
    vocab_size: Count
    max_position_embeddings: Count
    sliding_window: Count
    full_attention_every: Count
    rope_theta: Positive
    pad_token_id: Size
    eos_token_id: Size


class TrainingSettings(Strict):
    model_config = {**Strict.model_config, "frozen": False}

    base_model: str
    """A model folder; empty builds the embedded small OLMo-3-shaped model from ``shape``."""
    dtype: Literal["float32", "bfloat16", "float16"]
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"]
    shape: dict
    """The model's shape (:class:`ModelShape`), kept as a mapping."""
    tokenizer: Annotated[str, Field(min_length=1)]
    """``dolma2-offline``, ``base_model`` or ``hf:<path>``."""
    max_length: Annotated[int, Field(ge=16)]
    """Packed sequence length (paper: 2,048)."""
    lora_r: Count
    lora_alpha: Positive
    lora_dropout: Annotated[int | float, Field(ge=0, lt=1)]
    use_rslora: bool
    learning_rate: Positive
    embedding_lr_ratio: NonNegative
    """embed_tokens and lm_head adapters learn at this share of the main rate (paper: 0.5)."""
    weight_decay: NonNegative
    betas: Annotated[tuple[Beta, Beta], BeforeValidator(_as_tuple)]
    warmup_ratio: Annotated[int | float, Field(ge=0, lt=1)]
    """Linear warm-up over this share of the schedule's horizon, then cosine decay to zero (paper: 0.10)."""
    max_grad_norm: Positive
    seed: int
    per_device_batch_size: Count
    gradient_accumulation: Count
    gpus: Count
    activation_checkpointing: bool
    ddp_bucket_cap_mb: Count
    process_group_timeout_s: Count
    save_every_steps: Count
    max_steps: Count
    """A hard stop: the run ends after this step whatever the schedule says."""
    gpu_env: dict[str, str | int] = {}
    """NCCL transport and CUDA allocator settings (§4.6), applied on GPU machines only."""
    schedule_horizon: Literal["epoch"] | Count = "epoch"
    """The cosine schedule's length: ``epoch`` (the steps one pass over the packed data takes,
    as in the paper) or a number of steps; separate from ``max_steps``."""
    mixed_precision: Literal["bf16", "no"] = "no"
    """``bf16``: the forward runs under bfloat16 autocast, so the LoRA matmuls (PEFT keeps
    adapters in fp32) run in bf16 while the optimizer updates fp32 master weights; ``no``."""
    loss_chunk_tokens: Size = 512
    """The loss is computed over the vocabulary this many tokens at a time, each chunk's
    logits recomputed in backward; 0 uses the model's own loss (full logits)."""
    termination_grace_s: Annotated[int, Field(ge=5)] = 300
    """Seconds between SIGTERM and SIGKILL (torchrun's ``--shutdown-timeout``): the emergency
    checkpoint must be written within it."""
    upload_deadline_s: Size = 1800
    """A finished run waits at most this long for its checkpoint uploads, then reports the
    pending ones and ends (``spark upload`` finishes them)."""
    nan_limit: Count = 3
    param_norm_factor: Annotated[int | float, Field(gt=1)] = 2.0
    """An adapter parameter norm more than this many times the previous step's stops the run."""
    lora_target_modules: Annotated[tuple[Target, ...], Field(min_length=1), BeforeValidator(_as_tuple)] = LORA_TARGETS
    """The module types that get adapters (paper §4.2: all nine; the sweep of §5 also tries the
    four attention projections alone)."""

    @field_validator("shape")
    @classmethod
    def _shape(cls, value: dict) -> dict:
        ModelShape.model_validate(value)
        return value

    @classmethod
    def load(cls, profile: str | None = None, overrides: dict | None = None) -> TrainingSettings:
        """The profile's ``training`` section (checked whole: an unknown key anywhere in it is
        an error naming the nearest valid one), flattened, with ``overrides`` on top."""
        section = check(TrainingSection, load_config(profile)["training"], "training settings", where(profile),
                        dotted("training"), SettingsError)
        values = {name: _get(section, path) for name, path in TREE.items()}
        values["base_model"] = values["base_model"] or ""
        values.update(overrides or {})
        return check(cls, values, "training settings", where(profile), lambda loc: _tree_key(loc), SettingsError)

    def to_dict(self) -> dict:
        d = self.model_dump()
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
        return check(cls, d, "training settings", source, dotted(), SettingsError)


#: where each flat setting sits in the profile's ``training`` section
TREE: dict[str, str] = {
    "base_model": "base_model", "dtype": "model.dtype", "attn_implementation": "model.attn_implementation",
    "shape": "model.shape", "tokenizer": "tokenizer", "max_length": "max_length", "lora_r": "lora.r",
    "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout", "use_rslora": "lora.use_rslora",
    "lora_target_modules": "lora.target_modules", "learning_rate": "optimizer.learning_rate",
    "embedding_lr_ratio": "optimizer.embedding_lr_ratio", "weight_decay": "optimizer.weight_decay",
    "betas": "optimizer.betas", "warmup_ratio": "optimizer.warmup_ratio",
    "max_grad_norm": "optimizer.max_grad_norm", "seed": "seed", "per_device_batch_size": "per_device_batch_size",
    "gradient_accumulation": "gradient_accumulation", "gpus": "gpus",
    "activation_checkpointing": "activation_checkpointing", "ddp_bucket_cap_mb": "ddp_bucket_cap_mb",
    "process_group_timeout_s": "process_group_timeout_s", "save_every_steps": "save_every_steps",
    "max_steps": "max_steps", "gpu_env": "gpu_env", "schedule_horizon": "schedule_horizon",
    "mixed_precision": "mixed_precision", "loss_chunk_tokens": "loss_chunk_tokens",
    "termination_grace_s": "termination_grace_s", "upload_deadline_s": "upload_deadline_s",
    "nan_limit": "health.nan_limit", "param_norm_factor": "health.param_norm_factor",
}


def _tree_key(loc: tuple) -> str:
    """A flat setting's error location as its key in the profile (``training.lora.r``)."""
    name = str(loc[0]) if loc else ""
    return dotted("training")((*TREE.get(name, name).split("."), *loc[1:]))


def _section_model() -> type[Strict]:
    """The nested ``training`` section, built from :class:`TrainingSettings`' own fields."""
    groups: dict[str, dict] = {}
    for name, path in TREE.items():
        *parents, leaf = path.split(".")
        field = TrainingSettings.model_fields[name]
        annotation = ModelShape if name == "shape" else field.annotation
        groups.setdefault(".".join(parents), {})[leaf] = (annotation, field)
    nested = {group: create_model(f"Training_{group}", __base__=Strict, **fields)
              for group, fields in groups.items() if group}
    return create_model("TrainingSection", __base__=Strict, **groups[""],
                        **{group: (model, ...) for group, model in nested.items()})


def _get(section: Strict, path: str):
    value = section
    for part in path.split("."):
        value = getattr(value, part)
    return value.model_dump() if isinstance(value, Strict) else value


TrainingSection = _section_model()
