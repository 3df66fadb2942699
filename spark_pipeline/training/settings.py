"""Training settings, read from the configuration profile's ``training`` section (the
paper's values are in ``configs/hero.yaml``, §4 and Tables 3–4)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from spark_pipeline.config import load_config


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
    """Linear warm-up over this share of the steps, then cosine decay to zero (paper: 0.10)."""
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
    gpu_env: dict = field(default_factory=dict)
    """NCCL transport and CUDA allocator settings (§4.6), applied on GPU machines only."""

    @classmethod
    def load(cls, profile: str | None = None, overrides: dict | None = None) -> TrainingSettings:
        t = load_config(profile)["training"]
        m, lora, opt = t["model"], t["lora"], t["optimizer"]
        values = dict(
            base_model=t["base_model"] or "", dtype=m["dtype"], attn_implementation=m["attn_implementation"],
            shape=m["shape"], tokenizer=t["tokenizer"], max_length=t["max_length"], lora_r=lora["r"],
            lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], use_rslora=lora["use_rslora"],
            learning_rate=opt["learning_rate"], embedding_lr_ratio=opt["embedding_lr_ratio"],
            weight_decay=opt["weight_decay"], betas=tuple(opt["betas"]), warmup_ratio=opt["warmup_ratio"],
            max_grad_norm=opt["max_grad_norm"], seed=t["seed"], per_device_batch_size=t["per_device_batch_size"],
            gradient_accumulation=t["gradient_accumulation"], gpus=t["gpus"],
            activation_checkpointing=t["activation_checkpointing"], ddp_bucket_cap_mb=t["ddp_bucket_cap_mb"],
            process_group_timeout_s=t["process_group_timeout_s"], save_every_steps=t["save_every_steps"],
            max_steps=t["max_steps"], gpu_env=dict(t.get("gpu_env") or {}))
        values.update(overrides or {})
        return cls(**values)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict) -> TrainingSettings:
        d = dict(d)
        d["betas"] = tuple(d["betas"])
        return cls(**d)
