"""The base model and its LoRA adapters (paper §4.1–4.2).

Production loads OLMo-3-1025-7B; the embedded default builds a small model of the same
architecture (OLMo-3: RMSNorm with QK-norm, untied embeddings, sliding-window attention on
three of every four layers, RoPE) from a config, with random weights and a fixed seed, and
saves it under the storage root so evaluation reloads exactly the same base.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

#: The nine module types the paper trains (§4.2).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                "embed_tokens", "lm_head")
EMBEDDING_MODULES = ("embed_tokens", "lm_head")


@dataclass(frozen=True)
class LoraSettings:
    r: int
    alpha: int
    dropout: float
    use_rslora: bool
    target_modules: tuple[str, ...] = LORA_TARGETS

    @property
    def scale(self) -> float:
        return self.alpha / (self.r ** 0.5) if self.use_rslora else self.alpha / self.r


def olmo3_config(shape: dict):
    """An ``Olmo3Config`` from a shape dict (``configs/*.yaml`` training.model.shape)."""
    from transformers import Olmo3Config

    layers = shape["num_hidden_layers"]
    period = shape.get("full_attention_every", 4)
    layer_types = ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(layers)]
    kwargs = {k: v for k, v in shape.items() if k not in ("full_attention_every", "rope_scaling")}
    config = Olmo3Config(layer_types=layer_types, tie_word_embeddings=False, **kwargs)
    return config


def build_base_model(shape: dict, seed: int, dtype=torch.float32, attn_implementation: str = "sdpa"):
    from transformers import Olmo3ForCausalLM

    config = olmo3_config(shape)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = Olmo3ForCausalLM(config)
    return model.to(dtype)


def ensure_base_model(folder: Path, shape: dict, seed: int) -> Path:
    """Build the embedded base model once and save it; later calls reuse the saved weights."""
    folder = Path(folder)
    if (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
        return folder
    model = build_base_model(shape, seed)
    tmp = folder.parent / f".{folder.name}.tmp"
    model.save_pretrained(tmp)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def load_base_model(path: str, dtype=torch.float32, attn_implementation: str = "sdpa", device=None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    return model.to(device) if device is not None else model


def lora_config(settings: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      use_rslora=settings.use_rslora, target_modules=list(settings.target_modules),
                      bias="none", task_type="CAUSAL_LM")


def add_adapters(model, settings: LoraSettings):
    from peft import get_peft_model

    return get_peft_model(model, lora_config(settings))


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def split_parameter_groups(model) -> tuple[list, list]:
    """(adapter parameters of the embeddings and lm_head, all other trainable parameters)."""
    embed, main = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (embed if any(f".{m}." in name or name.endswith(m) for m in EMBEDDING_MODULES) else main).append(param)
    return embed, main


def base_identity(folder: Path) -> dict:
    """What base model a folder holds: its name (``_name_or_path`` in config.json, else the
    folder's name), its revision (a Hugging Face snapshot folder is named by the commit;
    otherwise unknown) and the sha256 over its weight files. The hash of a 7B model takes tens
    of seconds, so it is remembered beside the weights (keyed by file names, sizes and mtimes)
    when the folder is writable."""
    import hashlib
    import json
    import re

    from spark_pipeline.records import sha256_file

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    key = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    memo = folder / ".spark_weights_sha256.json"
    digest = None
    if memo.exists():
        saved = json.loads(memo.read_text())
        digest = saved["weights_sha256"] if saved.get("files") == key else None
    if digest is None:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0" + sha256_file(f).encode() + b"\n")
        digest = h.hexdigest()
        try:
            memo.write_text(json.dumps({"files": key, "weights_sha256": digest}))
        except OSError:
            pass  # a read-only model folder: hashed again next time
    revision = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else ""
    return {"name": config.get("_name_or_path") or folder.name, "revision": revision, "weights_sha256": digest,
            "path": str(folder)}
