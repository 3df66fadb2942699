"""Evaluating a checkpoint: the base model and base + adapter on the evaluation sets.

The base model is loaded once, in the training dtype (bf16 for the hero run), with the
checkpoint's adapter on it; the base model's numbers are computed with the adapter switched
off (``disable_adapter``), so a 7B evaluation needs one copy of the weights.

For every sample and model, ``sample_records`` keeps what the numbers are made of: the
forward pass's NLL, teacher-forced hits and, for the samples that are generated, the prompt's
hash, the reference and the generation with their per-sample metrics. ``summarise`` turns
the records into one row per (model, split, category) — plus ``all`` per split — with
perplexity, teacher-forced suffix loss and top-1/top-5, generative token accuracy, BLEU-4 and
exact match, each with its 95% interval (bootstrap over samples; Wilson for proportions
counted per sample), and for the adapter the paired intervals of its differences from the
base on the same samples. Anyone can recompute a row from the records with a forward pass and
sacrebleu.

Before any number is computed, ``adapter_sanity`` checks that the adapter is the one
trained: the digest of its config *and* weights matches the lineage, the base model is the
one it was trained on, and the adapted logits differ from the base model's.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from spark_pipeline.evaluation import stats
from spark_pipeline.evaluation.metrics import (
    exact_match,
    generate_batch,
    perplexity,
    score_samples,
    split_at,
    token_accuracy,
)
from spark_pipeline.evaluation.settings import EvalSettings
from spark_pipeline.records import sha256_file
from spark_pipeline.tokens.tokenizer import load_tokenizer
from spark_pipeline.training.checkpoint import adapter_digest

Progress = Callable[[str], None]


class EvaluationError(RuntimeError):
    pass


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


def adapter_sanity(checkpoint: Path, adapted, probe: list[int], base_identity: dict | None = None) -> dict:
    lineage = json.loads((Path(checkpoint) / "lineage.json").read_text())
    expected, actual = lineage.get("adapter_digest"), adapter_digest(checkpoint)
    trained_on = (lineage.get("base_model") or {}).get("weights_sha256")
    here = (base_identity or {}).get("weights_sha256")
    base_matches = trained_on is None or here is None or trained_on == here
    with torch.no_grad():
        ids = torch.tensor([probe], device=next(adapted.parameters()).device)
        with adapted.disable_adapter():
            base_logits = adapted(input_ids=ids, use_cache=False).logits.float()
        adapted_logits = adapted(input_ids=ids, use_cache=False).logits.float()
    diff = float((adapted_logits - base_logits).abs().max())
    reasons = []
    if expected is None:
        reasons.append("the lineage names no adapter digest (config + weights); the checkpoint predates it")
    elif expected != actual:
        reasons.append("the adapter's config or weights are not the ones the lineage names")
    if not base_matches:
        reasons.append(f"the base model's weights ({here[:16]}) are not the ones it was trained on ({trained_on[:16]})")
    if not diff > 1e-6:
        reasons.append("the adapter does not change the logits")
    return {"adapter_digest_expected": expected, "adapter_digest_actual": actual,
            "digest_matches": expected is not None and expected == actual, "base_matches": base_matches,
            "max_logit_difference": diff, "logits_differ": diff > 1e-6, "reasons": reasons, "passed": not reasons}


def sample_id(sample: dict) -> str:
    """The evaluation sample's own hash, or (for samples built without one) a hash of its ids."""
    return sample.get("sample_hash") or hashlib.sha256(json.dumps(sample["ids"]).encode()).hexdigest()[:16]


class _Timer:
    """Progress lines: what is done, out of how many, and the time left."""

    def __init__(self, what: str, total: int, progress: Progress | None):
        self.what, self.total, self.progress, self.start = what, total, progress, time.perf_counter()

    def __call__(self, done: int) -> None:
        if not self.progress or not self.total:
            return
        elapsed = time.perf_counter() - self.start
        left = elapsed / done * (self.total - done) if done else float("nan")
        self.progress(f"{self.what}: {done}/{self.total} samples, {elapsed:.1f} s, ~{left:.0f} s left")


def sample_records(model, name: str, samples: list[dict], tokenizer, settings: EvalSettings,
                   context: dict | None = None, progress: Progress | None = None) -> list[dict]:
    """One record per sample: forward-pass scores, and for the first
    ``generation_samples_per_category`` of each category the generation and its metrics.
    ``context``: ``include_dirs`` (pair id -> header folders) for the compile check and
    ``ngrams`` (an NgramIndex of the training mixture) for the memorization report."""
    from spark_pipeline.evaluation.codecheck import compiles

    context = context or {}
    device = next(model.parameters()).device
    scores = score_samples(model, [s["ids"] for s in samples], device=device, fraction=settings.split_fraction,
                           batch_size=settings.batch_size, pad_id=tokenizer.pad_id,
                           progress=_Timer(f"{name} scored", len(samples), progress))
    budget: dict[tuple[str, str], int] = defaultdict(int)
    chosen = []
    for i, s in enumerate(samples):
        key = (s["split"], s["category"])
        if budget[key] < settings.generation_samples_per_category:
            budget[key] += 1
            chosen.append(i)
    cuts = {i: split_at(len(samples[i]["ids"]), settings.split_fraction) for i in chosen}
    outputs = generate_batch(model, [samples[i]["ids"][:cuts[i]] for i in chosen], settings.max_new_tokens,
                             tokenizer.eos_id, tokenizer.pad_id, device, settings.batch_size,
                             progress=_Timer(f"{name} generated", len(chosen), progress))
    generated = dict(zip(chosen, outputs, strict=True))
    records = []
    for i, s in enumerate(samples):
        sc = scores[i]
        rec = {"model": name, "split": s["split"], "category": s["category"], "pair_id": s.get("pair_id", ""),
               "sample_id": sample_id(s),
               "tokens": sc.n_tokens, "nll_sum": sc.nll_sum, "suffix_tokens": sc.suffix_tokens,
               "suffix_nll_sum": sc.suffix_nll_sum, "top1": sc.top1, "top5": sc.top5, "generated": i in generated,
               "prompt_sha256": None, "prompt_tokens": None, "reference": None, "generation": None,
               "reference_ids": None, "generation_ids": None, "token_accuracy": None, "exact_match": None,
               "bleu4": None, "bleu_stats": None, "bleu4_signature": None, "compiles": None, "memorized_longest": None}
        if i in generated:
            cut = cuts[i]
            prompt = s["ids"][:cut]
            reference = s["ids"][cut:][: settings.max_new_tokens]
            gen = generated[i]
            hyp, ref = tokenizer.decode(gen[: len(reference)]), tokenizer.decode(reference)
            bleu_stats = stats.bleu_statistics([hyp], [ref])[0]
            rec.update({"prompt_sha256": hashlib.sha256(json.dumps(prompt).encode()).hexdigest(),
                        "prompt_tokens": cut, "reference": ref, "generation": tokenizer.decode(gen),
                        "reference_ids": reference, "generation_ids": gen,
                        "token_accuracy": token_accuracy(gen, reference), "exact_match": exact_match(gen, reference),
                        "bleu4": stats.sentence_bleu_from(bleu_stats), "bleu_stats": bleu_stats.tolist(),
                        "bleu4_signature": stats.sentence_bleu_signature()})
            if "include_dirs" in context:
                rec["compiles"] = compiles(tokenizer.decode(prompt) + tokenizer.decode(gen),
                                           context["include_dirs"].get(s.get("pair_id"), []))
            if "ngrams" in context:
                rec["memorized_longest"] = context["ngrams"].longest_overlap(gen)
        records.append(rec)
    return records


def _metrics(recs: list[dict], resamples: int, seed: int) -> dict:
    """A group's metrics with their 95% intervals, and the statistics the paired comparisons use."""
    nan = float("nan")
    tokens = np.array([r["tokens"] for r in recs], dtype=float)
    nll = np.array([r["nll_sum"] for r in recs], dtype=float)
    suffix = np.array([r["suffix_tokens"] for r in recs], dtype=float)
    statistic = {"perplexity": stats.ratio_statistic(nll, tokens, np.exp),
                 "tf_loss": stats.ratio_statistic([r["suffix_nll_sum"] for r in recs], suffix),
                 "tf_top1": stats.ratio_statistic([r["top1"] for r in recs], suffix),
                 "tf_top5": stats.ratio_statistic([r["top5"] for r in recs], suffix)}
    n, n_tok, n_suf = len(recs), tokens.sum(), suffix.sum()
    out = {"samples": n, "tokens": int(n_tok), "nll": nll.sum() / n_tok if n_tok else nan,
           "perplexity": perplexity(nll.sum(), int(n_tok)),
           "tf_loss": sum(r["suffix_nll_sum"] for r in recs) / n_suf if n_suf else nan,
           "tf_top1": sum(r["top1"] for r in recs) / n_suf if n_suf else nan,
           "tf_top5": sum(r["top5"] for r in recs) / n_suf if n_suf else nan}
    for metric in ("perplexity", "tf_top1", "tf_top5"):
        out[f"{metric}_lo"], out[f"{metric}_hi"] = stats.bootstrap(statistic[metric], n, resamples, seed)
    gen = [r for r in recs if r["generated"]]
    out["gen_samples"] = len(gen)
    if gen:
        acc = [r["token_accuracy"] for r in gen]
        bleu = np.array([r["bleu_stats"] for r in gen], dtype=float)
        exact = sum(bool(r["exact_match"]) for r in gen)
        compiled = [r["compiles"] for r in gen if r["compiles"] is not None]
        overlaps = [r["memorized_longest"] for r in gen if r["memorized_longest"] is not None]
        out.update({"gen_token_accuracy": float(np.mean(acc)), "bleu4": stats.corpus_bleu_from(bleu),
                    "bleu4_signature": stats.bleu_signature(),
                    "exact_match": exact / len(gen),
                    "compile_rate": sum(compiled) / len(compiled) if compiled else nan,
                    "memorized_longest_max": max(overlaps) if overlaps else -1,
                    "memorized_longest_mean": float(np.mean(overlaps)) if overlaps else nan})
        statistic["gen_token_accuracy"] = stats.mean_statistic(acc)
        statistic["bleu4"] = stats.bleu_statistic(bleu)
        out["gen_token_accuracy_lo"], out["gen_token_accuracy_hi"] = stats.bootstrap(
            statistic["gen_token_accuracy"], len(gen), resamples, seed)
        out["bleu4_lo"], out["bleu4_hi"] = stats.bootstrap(statistic["bleu4"], len(gen), resamples, seed)
        out["exact_match_lo"], out["exact_match_hi"] = stats.wilson(exact, len(gen))
        out["compile_rate_lo"], out["compile_rate_hi"] = stats.wilson(sum(compiled), len(compiled)) \
            if compiled else (nan, nan)
    else:
        out.update({k: nan for k in ("gen_token_accuracy", "bleu4", "exact_match", "compile_rate",
                                     "memorized_longest_mean", "gen_token_accuracy_lo", "gen_token_accuracy_hi",
                                     "bleu4_lo", "bleu4_hi", "exact_match_lo", "exact_match_hi",
                                     "compile_rate_lo", "compile_rate_hi")})
        out["memorized_longest_max"] = -1
        out["bleu4_signature"] = ""
    return out


def _groups(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["split"], r["category"])].append(r)
        groups[(r["split"], "all")].append(r)
    return groups


def paired_differences(a: list[dict], b: list[dict], resamples: int, seed: int = 0) -> dict:
    """Intervals of model a minus model b on the samples both have (matched by sample id):
    the relative perplexity reduction (b - a) / b and the token-accuracy difference, each with
    its number of paired samples and whether it is degenerate (``stats.degenerate``)."""
    nan = float("nan")
    b_by_id = {r["sample_id"]: r for r in b}
    common = [(r, b_by_id[r["sample_id"]]) for r in a if r["sample_id"] in b_by_id]
    gen = [(x, y) for x, y in common if x["generated"] and y["generated"]]
    out = {"ppl_reduction_vs_base_lo": nan, "ppl_reduction_vs_base_hi": nan,
           "token_accuracy_vs_base_lo": nan, "token_accuracy_vs_base_hi": nan,
           # fewer than stats.MIN_PAIRED_SAMPLES: the interval is shown but names no regression
           "paired_samples": len(common), "ppl_reduction_vs_base_degenerate": stats.degenerate(len(common)),
           "gen_paired_samples": len(gen), "token_accuracy_vs_base_degenerate": stats.degenerate(len(gen))}
    if len(common) >= 2 and all(x["tokens"] for x, _ in common):
        pa_ = stats.ratio_statistic([x["nll_sum"] for x, _ in common], [x["tokens"] for x, _ in common], np.exp)
        pb_ = stats.ratio_statistic([y["nll_sum"] for _, y in common], [y["tokens"] for _, y in common], np.exp)

        def reduction(idx):
            base = pb_(idx)
            return (base - pa_(idx)) / base

        zero = lambda idx: np.zeros(idx.shape[0])  # noqa: E731
        out["ppl_reduction_vs_base_lo"], out["ppl_reduction_vs_base_hi"] = stats.paired(
            reduction, zero, len(common), resamples, seed)
    if len(gen) >= 2:
        out["token_accuracy_vs_base_lo"], out["token_accuracy_vs_base_hi"] = stats.paired(
            stats.mean_statistic([x["token_accuracy"] for x, _ in gen]),
            stats.mean_statistic([y["token_accuracy"] for _, y in gen]), len(gen), resamples, seed)
    return out


def summarise(records: list[dict], settings: EvalSettings, base_records: list[dict] | None = None) -> list[dict]:
    """Rows per (model, split, category) from the records, with intervals; with
    ``base_records``, paired differences from the base and the regression flag."""
    rows = []
    base_groups = _groups(base_records) if base_records else {}
    for model in sorted({r["model"] for r in records}):
        for (split, category), recs in sorted(_groups([r for r in records if r["model"] == model]).items()):
            row = {"model": model, "split": split, "category": category,
                   **_metrics(recs, settings.bootstrap_resamples, seed=0),
                   "few_samples": len(recs) < settings.min_samples_per_category, "flag": ""}
            if base_groups and model != "base" and (split, category) in base_groups:
                row.update(paired_differences(recs, base_groups[(split, category)], settings.bootstrap_resamples))
                # worse than the base beyond doubt: the whole interval of the reduction below zero,
                # over enough paired samples (a degenerate interval names no regression)
                if stats.differs((row["ppl_reduction_vs_base_lo"], row["ppl_reduction_vs_base_hi"]),
                                 row["paired_samples"]) and row["ppl_reduction_vs_base_hi"] < 0:
                    row["flag"] = "regression"
            rows.append(row)
    return rows


def _base_digest(base_weights_sha256: str, base_model: Path, eval_files: list[Path], tokenizer,
                 settings: EvalSettings, dtype, context: dict | None) -> str:
    """What the base model's records depend on: its weights and config, the evaluation files,
    the generation settings, the tokenizer, the dtype and the compile/memorization context."""
    digest = hashlib.sha256(base_weights_sha256.encode())
    digest.update(sha256_file(Path(base_model) / "config.json").encode())
    for path in eval_files:
        digest.update(sha256_file(path).encode())
    generation = {k: v for k, v in settings.__dict__.items() if k not in ("min_samples_per_category",
                                                                          "bootstrap_resamples", "outlier_factor", "outlier_z")}
    digest.update(json.dumps([generation, tokenizer.fingerprint, str(dtype),
                              sorted((context or {}).get("include_dirs", {})), (context or {}).get("ngram_key", ""),
                              stats.sentence_bleu_signature()],
                             sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _cached(cache_dir: Path | None, name: str, compute: Callable[[], list[dict]],
            progress: Progress | None) -> list[dict]:
    if cache_dir is None:
        return compute()
    cached = Path(cache_dir) / name
    if cached.exists():
        if progress:
            progress(f"base: records reused from {cached.name}")
        return pq.read_table(cached).to_pylist()
    records = compute()
    cached.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), cached)
    return records


def _base_records(adapted, base_weights_sha256: str, base_model: Path, eval_dir: Path, samples, tokenizer,
                  settings: EvalSettings, cache_dir: Path | None, context: dict | None,
                  progress: Progress | None) -> list[dict]:
    """The base model's records (the adapter switched off), computed once per (base weights,
    evaluation sets, settings). The weights are known by their hash from ``base_identity``
    (remembered beside them), not read again: 15 GB at 7B."""
    def compute():
        with adapted.disable_adapter():
            return sample_records(adapted, "base", samples, tokenizer, settings, context, progress)

    files = [Path(eval_dir) / f"{split}.parquet" for split in ("in_domain", "held_out")]
    digest = _base_digest(base_weights_sha256, base_model, files, tokenizer, settings,
                          next(adapted.parameters()).dtype, context)
    return _cached(cache_dir, f"base-{digest}.samples.parquet", compute, progress)


def _spec_conditioned(adapted, name: str, base_weights_sha256: str, base_model: Path, eval_dir: Path, tokenizer,
                      settings: EvalSettings, cache_dir: Path | None, context: dict | None,
                      progress: Progress | None) -> tuple[list[dict], list[dict]]:
    """Spec-conditioned completion (:mod:`spark_pipeline.evaluation.speccond`): the base
    model's records (cached like its other records) and the adapter's, and the summary rows.
    Nothing when the split has no items."""
    from spark_pipeline.evaluation import speccond

    items = speccond.load_items(eval_dir, tokenizer, settings)
    if not items:
        if progress:
            progress("spec-conditioned completion: no items (the held-out pairs gave none), skipped")
        return [], []
    n = len(items) * len(speccond.CONDITIONS)

    def compute():
        with adapted.disable_adapter():
            return speccond.spec_records(adapted, "base", items, tokenizer, settings, context,
                                         _Timer("base spec-conditioned generated", n, progress))

    digest = _base_digest(base_weights_sha256, base_model, [Path(eval_dir) / "spec_conditioned.parquet"], tokenizer,
                          settings, next(adapted.parameters()).dtype, context)
    base = _cached(cache_dir, f"base-{digest}.spec_conditioned.parquet", compute, progress)
    mine = speccond.spec_records(adapted, name, items, tokenizer, settings, context,
                                 _Timer(f"{name} spec-conditioned generated", n, progress))
    records = base + mine
    return speccond.summarise(records, settings.bootstrap_resamples), records


def evaluate_checkpoint(checkpoint: Path, base_model: Path, eval_dir: Path, tokenizer_name: str, max_length: int,
                        settings: EvalSettings, checkpoint_key: str, cache_dir: Path | None = None,
                        context: dict | None = None, dtype: str = "float32",
                        progress: Progress | None = None) -> tuple[list[dict], list[dict], dict, tuple]:
    """``(rows, records, sanity, (spec_rows, spec_records))``: the tables' rows, every sample's
    record, the sanity check, and the spec-conditioned completion's rows and records
    (:mod:`spark_pipeline.evaluation.speccond`); all empty when the sanity check fails."""
    from peft import PeftModel

    from spark_pipeline.training.model import base_identity, load_base_model

    checkpoint = Path(checkpoint)
    if not (checkpoint / "lineage.json").exists():
        raise EvaluationError(f"{checkpoint} is not a complete checkpoint (no lineage.json)")
    tokenizer = load_tokenizer(tokenizer_name)
    samples = load_eval_samples(eval_dir, tokenizer, max_length, settings.max_samples_per_category)
    if not samples:
        raise EvaluationError(f"the evaluation sets at {eval_dir} hold no usable sample")
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # batched, on GPU when there is one
    identity = base_identity(base_model)
    # one copy of the base weights, in the training dtype; the base's numbers with the adapter off
    adapted = PeftModel.from_pretrained(load_base_model(str(base_model), dtype=getattr(torch, dtype), device=device),
                                        str(checkpoint)).eval()
    sanity = adapter_sanity(checkpoint, adapted, samples[0]["ids"][:64], identity)
    sanity["base_model"] = identity
    if not sanity["passed"]:
        return [], [], sanity, ([], [])
    name = f"adapter:{checkpoint_key}"
    base_records = _base_records(adapted, identity["weights_sha256"], base_model, eval_dir, samples, tokenizer,
                                 settings, cache_dir, context, progress)
    records = base_records + sample_records(adapted, name, samples, tokenizer, settings, context, progress)
    rows = summarise(records, settings, base_records)
    spec_rows, spec_recs = _spec_conditioned(adapted, name, identity["weights_sha256"], base_model, eval_dir,
                                             tokenizer, settings, cache_dir, context, progress)
    lineage_sha = sha256_file(checkpoint / "lineage.json")
    step = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    base_ppl = {(r["split"], r["category"]): r["perplexity"] for r in rows if r["model"] == "base"}
    for row in rows:
        base_value = base_ppl.get((row["split"], row["category"]))
        row.update({"checkpoint": checkpoint_key, "step": step, "lineage_sha256": lineage_sha,
                    "base_model_sha256": identity["weights_sha256"], "dtype": dtype,
                    # relative perplexity reduction against the base (§6.4): 0 for the base itself
                    "ppl_reduction_vs_base": (base_value - row["perplexity"]) / base_value if base_value else float("nan")})
    for rec in records + spec_rows + spec_recs:
        rec.update({"checkpoint": checkpoint_key, "step": step})
    return rows, records, sanity, (spec_rows, spec_recs)
