"""Evaluating a checkpoint: the base model and base + adapter on the evaluation sets.

``evaluate_checkpoint`` returns one row per (model, split, category) — plus ``all`` per
split — with perplexity, teacher-forced suffix loss and top-1/top-5 accuracy, and
generative token accuracy, BLEU-4 and exact match; every row names the checkpoint, the
model and the sha256 of the checkpoint's ``lineage.json``. Before any number is computed,
``adapter_sanity`` checks that the adapter really loaded: the adapter file's hash matches
the lineage, and the adapted logits differ from the base model's.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch

from spark_pipeline.config import load_config
from spark_pipeline.evaluation.metrics import (
    bleu4,
    exact_match,
    greedy_generate,
    perplexity,
    score_samples,
    split_at,
    token_accuracy,
)
from spark_pipeline.records import sha256_file
from spark_pipeline.tokens.tokenizer import load_tokenizer


class EvaluationError(RuntimeError):
    pass


@dataclass(frozen=True)
class EvalSettings:
    split_fraction: float
    max_new_tokens: int
    max_samples_per_category: int
    generation_samples_per_category: int
    batch_size: int
    outlier_factor: float
    external_models: tuple = ()
    code_regression: tuple = ()

    @classmethod
    def load(cls, profile: str | None = None, overrides: dict | None = None) -> EvalSettings:
        values = {**load_config(profile)["evaluation"], **(overrides or {})}
        values["external_models"] = tuple(tuple(sorted(m.items())) for m in values.get("external_models") or [])
        values["code_regression"] = tuple(sorted((values.get("code_regression") or {}).items()))
        return cls(**values)


def load_eval_samples(eval_dir: Path, tokenizer, max_length: int, per_category: int = 0) -> list[dict]:
    rows = []
    for split in ("in_domain", "held_out"):
        path = Path(eval_dir) / f"{split}.parquet"
        if not path.exists():
            raise EvaluationError(f"no evaluation set at {path}: materialize eval_sets first")
        rows.extend(pq.read_table(path).to_pylist())
    counts: dict[tuple[str, str], int] = defaultdict(int)
    samples = []
    for row in rows:
        key = (row["split"], row["category"])
        if per_category and counts[key] >= per_category:
            continue
        ids = tokenizer.encode(row["text"])[:max_length]
        if len(ids) < 4:
            continue
        counts[key] += 1
        samples.append({**row, "ids": ids})
    return samples


def adapter_sanity(checkpoint: Path, base, adapted, probe: list[int]) -> dict:
    lineage = json.loads((Path(checkpoint) / "lineage.json").read_text())
    actual = sha256_file(Path(checkpoint) / "adapter_model.safetensors")
    with torch.no_grad():
        ids = torch.tensor([probe], device=next(adapted.parameters()).device)
        with adapted.disable_adapter():
            base_logits = adapted(input_ids=ids, use_cache=False).logits
        adapted_logits = adapted(input_ids=ids, use_cache=False).logits
    diff = float((adapted_logits - base_logits).abs().max())
    return {"adapter_sha256_expected": lineage.get("adapter_sha256"), "adapter_sha256_actual": actual,
            "hash_matches": lineage.get("adapter_sha256") == actual, "max_logit_difference": diff,
            "logits_differ": diff > 1e-6, "passed": lineage.get("adapter_sha256") == actual and diff > 1e-6}


def _evaluate_model(model, name: str, samples: list[dict], tokenizer, settings: EvalSettings,
                    context: dict | None = None) -> list[dict]:
    """``context``: ``include_dirs`` (pair id -> header folders) for the compile check and
    ``ngrams`` (an NgramIndex of the training mixture) for the memorization report."""
    from spark_pipeline.evaluation.codecheck import compiles

    context = context or {}
    device = next(model.parameters()).device
    scores = score_samples(model, [s["ids"] for s in samples], device=device, fraction=settings.split_fraction,
                           batch_size=settings.batch_size, pad_id=tokenizer.pad_id)
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[(s["split"], s["category"])].append(i)
        groups[(s["split"], "all")].append(i)
    generated: dict[int, list[int]] = {}
    gen_budget: dict[tuple[str, str], int] = defaultdict(int)
    for i, s in enumerate(samples):
        key = (s["split"], s["category"])
        if gen_budget[key] >= settings.generation_samples_per_category:
            continue
        gen_budget[key] += 1
        cut = split_at(len(s["ids"]), settings.split_fraction)
        generated[i] = greedy_generate(model, s["ids"][:cut], settings.max_new_tokens, tokenizer.eos_id, device)
    rows = []
    for (split, category), idx in sorted(groups.items()):
        nll = sum(scores[i].nll_sum for i in idx)
        n = sum(scores[i].n_tokens for i in idx)
        suffix_n = sum(scores[i].suffix_tokens for i in idx)
        gen_idx = [i for i in idx if i in generated]
        refs, hyps, accs, exact, compiled, overlaps = [], [], [], 0, [], []
        for i in gen_idx:
            cut = split_at(len(samples[i]["ids"]), settings.split_fraction)
            reference = samples[i]["ids"][cut:][: settings.max_new_tokens]
            accs.append(token_accuracy(generated[i], reference))
            exact += exact_match(generated[i], reference)
            refs.append(tokenizer.decode(reference))
            hyps.append(tokenizer.decode(generated[i][: len(reference)]))
            if "include_dirs" in context:
                ok = compiles(tokenizer.decode(samples[i]["ids"][:cut]) + tokenizer.decode(generated[i]),
                              context["include_dirs"].get(samples[i].get("pair_id"), []))
                if ok is not None:
                    compiled.append(ok)
            if "ngrams" in context:
                overlaps.append(context["ngrams"].longest_overlap(generated[i]))
        rows.append({
            "model": name, "split": split, "category": category, "samples": len(idx), "tokens": n,
            "nll": nll / n if n else float("nan"), "perplexity": perplexity(nll, n),
            "tf_loss": sum(scores[i].suffix_nll_sum for i in idx) / suffix_n if suffix_n else float("nan"),
            "tf_top1": sum(scores[i].top1 for i in idx) / suffix_n if suffix_n else float("nan"),
            "tf_top5": sum(scores[i].top5 for i in idx) / suffix_n if suffix_n else float("nan"),
            "gen_samples": len(gen_idx),
            "gen_token_accuracy": sum(accs) / len(accs) if accs else float("nan"),
            "bleu4": bleu4(hyps, refs) if hyps else float("nan"),
            "exact_match": exact / len(gen_idx) if gen_idx else float("nan"),
            "compile_rate": sum(compiled) / len(compiled) if compiled else float("nan"),
            "memorized_longest_max": max(overlaps) if overlaps else -1,
            "memorized_longest_mean": sum(overlaps) / len(overlaps) if overlaps else float("nan"),
        })
    return rows


def _base_rows(base, base_model: Path, eval_dir: Path, samples, tokenizer, settings: EvalSettings,
               cache_dir: Path | None, context: dict | None = None) -> list[dict]:
    """The base model's rows, computed once per (base weights, evaluation sets, settings)."""
    import hashlib

    if cache_dir is None:
        return _evaluate_model(base, "base", samples, tokenizer, settings, context)
    digest = hashlib.sha256()
    for path in sorted(Path(base_model).glob("*.safetensors")) + [Path(base_model) / "config.json"]:
        digest.update(sha256_file(path).encode())
    for split in ("in_domain", "held_out"):
        digest.update(sha256_file(Path(eval_dir) / f"{split}.parquet").encode())
    digest.update(json.dumps([settings.__dict__, tokenizer.fingerprint, sorted((context or {}).get("include_dirs", {})),
                              (context or {}).get("ngram_key", "")], sort_keys=True, default=str).encode())
    cached = Path(cache_dir) / f"base-{digest.hexdigest()[:16]}.parquet"
    if cached.exists():
        return pq.read_table(cached).to_pylist()
    rows = _evaluate_model(base, "base", samples, tokenizer, settings, context)
    cached.parent.mkdir(parents=True, exist_ok=True)
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), cached)
    return rows


def evaluate_checkpoint(checkpoint: Path, base_model: Path, eval_dir: Path, tokenizer_name: str, max_length: int,
                        settings: EvalSettings, checkpoint_key: str,
                        cache_dir: Path | None = None, context: dict | None = None) -> tuple[list[dict], dict]:
    from peft import PeftModel

    from spark_pipeline.training.model import load_base_model

    checkpoint = Path(checkpoint)
    if not (checkpoint / "lineage.json").exists():
        raise EvaluationError(f"{checkpoint} is not a complete checkpoint (no lineage.json)")
    tokenizer = load_tokenizer(tokenizer_name)
    samples = load_eval_samples(eval_dir, tokenizer, max_length, settings.max_samples_per_category)
    if not samples:
        raise EvaluationError(f"the evaluation sets at {eval_dir} hold no usable sample")
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # batched, on GPU when there is one
    base = load_base_model(str(base_model), device=device).eval()
    adapted = PeftModel.from_pretrained(load_base_model(str(base_model), device=device), str(checkpoint)).eval()
    sanity = adapter_sanity(checkpoint, base, adapted, samples[0]["ids"][:64])
    if not sanity["passed"]:
        return [], sanity
    lineage_sha = sha256_file(checkpoint / "lineage.json")
    rows = _base_rows(base, base_model, eval_dir, samples, tokenizer, settings, cache_dir, context) + \
        _evaluate_model(adapted, f"adapter:{checkpoint_key}", samples, tokenizer, settings, context)
    step = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    base_ppl = {(r["split"], r["category"]): r["perplexity"] for r in rows if r["model"] == "base"}
    for row in rows:
        base_value = base_ppl.get((row["split"], row["category"]))
        row.update({"checkpoint": checkpoint_key, "step": step, "lineage_sha256": lineage_sha,
                    # relative perplexity reduction against the base (§6.4): 0 for the base itself
                    "ppl_reduction_vs_base": (base_value - row["perplexity"]) / base_value if base_value else float("nan")})
    return rows, sanity


def perplexity_outliers(points: list[dict], factor: float) -> list[dict]:
    """Checkpoints (ordered by step) whose perplexity departs from both neighbours' by more
    than ``factor`` (either way), and from exp(training loss) when that is known."""
    def ratio(a: float, b: float) -> float:
        return max(a, b) / min(a, b)

    flagged = []
    for i, p in enumerate(points):
        neighbours = [points[j]["perplexity"] for j in (i - 1, i + 1) if 0 <= j < len(points)]
        if not neighbours:
            continue
        far = all(ratio(p["perplexity"], n) > factor for n in neighbours)
        train = p.get("train_loss")
        off_train = train is None or ratio(p["perplexity"], math.exp(min(train, 50.0))) > factor
        if far and off_train:
            flagged.append({**p, "neighbours": neighbours})
    return flagged
