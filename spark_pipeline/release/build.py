"""Build a release folder from a checkpoint (``{storage}/releases/<checkpoint key>/``):

* ``adapter/``: the PEFT adapter as trained (config and weights, copied byte for byte);
* ``adapter-serving/``: the same without the ``embed_tokens``/``lm_head`` adapters, which
  multi-adapter serving engines may not accept; what leaving them out costs is measured
  (in-domain perplexity, both adapters on the same samples);
* ``merged/``: base + adapter merged into a standard transformers folder (safetensors,
  ``dtype`` bf16 by default, sharded at ``max_shard_size``) that loads with
  ``AutoModelForCausalLM.from_pretrained`` and no PEFT; its logits are compared with
  base + adapter on evaluation samples and the difference recorded;
* ``lineage.json`` (the checkpoint's), ``release.json`` (what was built and measured),
  ``README.md`` (the model card, :mod:`spark_pipeline.release.card`), ``plots/``, and
  ``SHA256SUMS`` over every other file, written last.

The folder is built beside the old one and swapped in: a release is generated, never
edited, and is rebuilt when its checkpoint's evaluation changes.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
from pathlib import Path

import torch

from spark_pipeline.records import atomic_write_json, atomic_write_text, sha256_file
from spark_pipeline.release.settings import ReleaseSettings
from spark_pipeline.training.model import EMBEDDING_MODULES

SUMS = "SHA256SUMS"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "vocab.json", "merges.txt")


class ReleaseError(RuntimeError):
    """A release cannot be built; the message says what is missing."""


def adapter_parameters(adapter_file: Path) -> dict[str, int]:
    """Parameters in the adapter's weights by module type (the trainable count, from the file)."""
    from safetensors import safe_open

    counts: dict[str, int] = {}
    with safe_open(str(adapter_file), "pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
            module = next((m for m in name.split(".") if m.endswith("_proj") or m in EMBEDDING_MODULES), "other")
            shape = f.get_slice(name).get_shape()
            counts[module] = counts.get(module, 0) + math.prod(shape)
    return counts


def serving_adapter(adapter_dir: Path, out: Path) -> list[str]:
    """The adapter without its embedding-layer parts; returns the module types left out."""
    from safetensors.torch import load_file, save_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    targets = config.get("target_modules") or []
    dropped = [m for m in EMBEDDING_MODULES if m in targets]
    out.mkdir(parents=True)
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    kept = {k: v for k, v in weights.items() if not any(f".{m}." in k or k.endswith(f".{m}") for m in EMBEDDING_MODULES)}
    save_file(kept, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config["target_modules"] = [m for m in targets if m not in EMBEDDING_MODULES]
    atomic_write_json(out / "adapter_config.json", config)
    return dropped


def _device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _adapted(base_model: Path, adapter_dir: Path, dtype, device=None):
    from peft import PeftModel

    from spark_pipeline.training.model import load_base_model

    model = load_base_model(str(base_model), dtype=dtype, device=device)
    return PeftModel.from_pretrained(model, str(adapter_dir)).eval()


@torch.no_grad()
def compare_logits(a, b, samples: list[list[int]]) -> dict:
    """Largest and mean absolute logit difference, relative to the largest logit, and how often
    the top-1 token agrees: at every position, and at the positions where ``a``'s top-1 leads
    its runner-up by 1% of the largest logit or more (``top1_agreement_clear``: a near tie can
    flip under bf16 rounding without anything being wrong; a clear lead cannot)."""
    worst = total = count = agree = positions = 0.0
    clear = clear_agree = 0.0
    scale = 0.0
    margins = []
    for ids in samples:
        x = torch.tensor([ids])
        la = a(input_ids=x.to(a.device)).logits.float().cpu()
        lb = b(input_ids=x.to(b.device)).logits.float().cpu()
        diff = (la - lb).abs()
        worst = max(worst, float(diff.max()))
        total += float(diff.sum())
        count += diff.numel()
        scale = max(scale, float(la.abs().max()))
        same = la.argmax(-1) == lb.argmax(-1)
        agree += float(same.sum())
        positions += la.shape[1]
        top2 = la.topk(2, dim=-1).values
        margins.append((top2[..., 0] - top2[..., 1], same))
    for margin, same in margins:
        lead = margin >= 0.01 * scale
        clear += float(lead.sum())
        clear_agree += float((same & lead).sum())
    return {"max_abs_logit_diff": worst, "mean_abs_logit_diff": total / max(1, count),
            "max_abs_logit": scale, "relative_max_diff": worst / scale if scale else float("nan"),
            "top1_agreement": agree / max(1, positions), "top1_agreement_clear": clear_agree / max(1, clear),
            "clear_positions": int(clear), "positions": int(positions), "samples": len(samples)}


def merge(base_model: Path, adapter_dir: Path, out: Path, settings: ReleaseSettings, base_identity: dict) -> dict:
    """base + adapter -> one plain model folder; returns the files written."""
    model = _adapted(base_model, adapter_dir, getattr(torch, settings.merge_dtype)).merge_and_unload()
    model = model.to(getattr(torch, settings.dtype))
    model.config.dtype = settings.dtype
    model.config._name_or_path = settings.model_name
    model.save_pretrained(out, max_shard_size=settings.max_shard_size, safe_serialization=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(base_model) / name).exists() and not (out / name).exists():
            shutil.copy2(Path(base_model) / name, out / name)
            copied.append(name)
    del model
    return {"files": sorted(p.name for p in out.iterdir()), "tokenizer_files": copied,
            "base_model": base_identity}


def serving_cost(adapted, samples: list[list[int]], pad_id: int) -> dict:
    """In-domain perplexity with the full adapter (``default``) and with the serving one
    (``serving``: no embedding adapters) loaded into the same model, on the same samples."""
    from spark_pipeline.evaluation.metrics import perplexity, score_samples

    out = {"samples": len(samples)}
    for label, name in (("full", "default"), ("serving", "serving")):
        adapted.set_adapter(name)
        scores = score_samples(adapted, samples, device=adapted.device, pad_id=pad_id, batch_size=2)
        out[f"perplexity_{label}"] = perplexity(sum(s.nll_sum for s in scores), sum(s.n_tokens for s in scores))
    adapted.set_adapter("default")
    out["perplexity_change"] = (out["perplexity_serving"] - out["perplexity_full"]) / out["perplexity_full"]
    return out


def write_sums(folder: Path) -> Path:
    """``SHA256SUMS``: every file of the release but itself, in ``sha256sum -c`` format."""
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}"
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != SUMS]
    atomic_write_text(folder / SUMS, "\n".join(lines) + "\n")
    return folder / SUMS


def verify_sums(folder: Path) -> list[str]:
    """The files whose content no longer matches ``SHA256SUMS`` (or that are missing)."""
    bad = []
    for line in (Path(folder) / SUMS).read_text().splitlines():
        digest, rel = line.split("  ", 1)
        path = Path(folder) / rel
        if not path.exists() or sha256_file(path) != digest:
            bad.append(rel)
    return bad


WITHDRAWN = "WITHDRAWN"
UPLOADED = "UPLOADED"


def withdraw_release(out: Path, reason: str, client=None) -> dict | None:
    """Mark a release withdrawn when its checkpoint's evaluation was blocked or withdrawn: a
    banner at the top of the model card, ``withdrawn`` in ``release.json`` and
    ``lineage.json``, a ``WITHDRAWN`` file, ``SHA256SUMS`` written again, and the ``WITHDRAWN``
    marker in the bucket when the release was uploaded (``UPLOADED`` names where). Nothing is
    deleted: the files stay for the post-mortem. None when there is no release; a release
    already withdrawn is left as it is."""
    import datetime

    out = Path(out)
    if not (out / "release.json").exists():
        return None
    if (out / WITHDRAWN).exists():
        return json.loads((out / WITHDRAWN).read_text())
    record = {"reason": reason, "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    # after the front matter and the "generated" comment, before everything a reader sees
    front, sep, body = (out / "README.md").read_text().partition("-->")
    banner = (f"\n\n> **WITHDRAWN** ({record['at']}): {reason}\n> Do not use this model; its numbers below no "
              "longer stand.\n")
    atomic_write_text(out / "README.md", f"{front}{sep}{banner}{body}" if sep else f"{banner.lstrip()}\n{front}")
    for name in ("release.json", "lineage.json"):
        if (out / name).exists():
            data = json.loads((out / name).read_text())
            atomic_write_json(out / name, {**data, "withdrawn": record})
    uploaded = (out / UPLOADED).read_text().strip() if (out / UPLOADED).exists() else ""
    if uploaded:
        try:
            from spark_pipeline.training.gcs import make_client, parse_url

            bucket, prefix = parse_url(uploaded)
            (client or make_client()).bucket(bucket).blob(f"{prefix}/{WITHDRAWN}").upload_from_string(
                json.dumps(record) + "\n", retry=None, timeout=20)
            record["bucket"] = f"marked {uploaded}/{WITHDRAWN}"
        except Exception as exc:  # noqa: BLE001 - said in the record and by the caller
            record["bucket"] = (f"the uploaded copy at {uploaded} could not be marked ({type(exc).__name__}: "
                                f"{str(exc)[:200]}): withdraw it by hand")
    atomic_write_json(out / WITHDRAWN, record)
    write_sums(out)
    return record


def build_release(checkpoint: Path, key: str, out: Path, base_model: Path, settings: ReleaseSettings,
                  eval_samples: list[dict], card_inputs: dict, pad_id: int, log=print) -> dict:
    """Builds the release of ``checkpoint`` at ``out`` (replacing an older one) and returns
    ``release.json``'s content. ``eval_samples`` are tokenized evaluation samples (``ids``,
    ``split``); ``card_inputs`` what the model card shows (:func:`card.model_card`)."""
    from spark_pipeline.release.card import model_card
    from spark_pipeline.training.model import base_identity

    checkpoint, out = Path(checkpoint), Path(out)
    for name in ("adapter_config.json", "adapter_model.safetensors", "lineage.json"):
        if not (checkpoint / name).exists():
            raise ReleaseError(f"{checkpoint} has no {name}: not a complete checkpoint")
    identity = base_identity(Path(base_model))
    lineage = json.loads((checkpoint / "lineage.json").read_text())
    expected = (lineage.get("base_model") or {}).get("weights_sha256")
    if expected and expected != identity["weights_sha256"]:
        raise ReleaseError(f"{base_model} is not the base {key} was trained on (weights {identity['weights_sha256'][:12]}"
                           f", trained on {expected[:12]}): a merge would be wrong")
    tmp = out.parent / f".{out.name}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    adapter = tmp / "adapter"
    adapter.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(checkpoint / name, adapter / name)
    shutil.copy2(checkpoint / "lineage.json", tmp / "lineage.json")
    log("adapter-serving: the adapter without its embedding-layer parts")
    dropped = serving_adapter(adapter, tmp / "adapter-serving")
    log(f"merged: base + adapter in {settings.merge_dtype}, saved as {settings.dtype} in shards of "
        f"{settings.max_shard_size}")
    merged = merge(Path(base_model), adapter, tmp / "merged", settings, identity)
    probe = [s["ids"][:256] for s in eval_samples[: settings.verify_samples]]
    log(f"verifying the merged weights against base + adapter on {len(probe)} evaluation samples")
    from transformers import AutoModelForCausalLM

    # on the GPU when there is one (at 7B: 28 GB fp32 reference + 14 GB bf16 merged); the CPU otherwise
    merged_model = AutoModelForCausalLM.from_pretrained(str(tmp / "merged"), dtype=getattr(torch, settings.dtype)
                                                        ).to(_device()).eval()
    reference = _adapted(Path(base_model), adapter, torch.float32, _device())  # both adapters switch on this copy
    verification = compare_logits(reference, merged_model, probe)
    del merged_model
    in_domain = [s["ids"][: settings.serving_max_tokens] for s in eval_samples
                 if s.get("split") == "in_domain"][: settings.serving_ppl_samples]
    cost = None
    if dropped and in_domain:
        log(f"the cost of leaving out {dropped}: in-domain perplexity on {len(in_domain)} samples, both adapters")
        reference.load_adapter(str(tmp / "adapter-serving"), adapter_name="serving")
        cost = serving_cost(reference, in_domain, pad_id)
    del reference
    params = adapter_parameters(adapter / "adapter_model.safetensors")
    trainer_state = json.loads((checkpoint / "trainer_state.json").read_text()) \
        if (checkpoint / "trainer_state.json").exists() else {}
    info = {"checkpoint": key, "checkpoint_folder": str(checkpoint), "step": lineage.get("step"),
            "built": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "adapter_digest": lineage.get("adapter_digest"), "lineage_sha256": sha256_file(checkpoint / "lineage.json"),
            "base_model": identity, "trainable_parameters": sum(params.values()), "parameters_by_module": params,
            "merged": {**merged, "dtype": settings.dtype, "merge_dtype": settings.merge_dtype,
                       "max_shard_size": settings.max_shard_size, "verification": verification},
            "serving_adapter": {"left_out": dropped, "cost": cost},
            "tokens_seen": trainer_state.get("tokens_seen"), "settings": settings.model_dump()}
    evaluation = tmp / "evaluation"
    evaluation.mkdir()
    for f in card_inputs.get("eval_files", []):  # the checkpoint's whole evaluation table, every metric
        shutil.copy2(f, evaluation / Path(f).name)
    plots = tmp / "plots"
    plots.mkdir()
    for png in card_inputs.get("plots", []):
        shutil.copy2(png, plots / Path(png).name)
    atomic_write_json(tmp / "release.json", info)
    atomic_write_text(tmp / "README.md", model_card(info, lineage, settings, {
        **card_inputs, "plots": sorted(p.name for p in plots.iterdir())}))
    write_sums(tmp)
    if out.exists():
        old = out.parent / f".{out.name}.replaced"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
    return info
