"""External models as baselines (§6.6: Qwen3-Coder through vLLM, Claude Opus through
Anthropic's API): generative completion only, since a chat API gives no token
log-probabilities for perplexity or teacher forcing.

Each evaluation sample's 75% prefix is sent with an instruction to continue the code; the
answer (code fences stripped) is tokenized with the pipeline's tokenizer and scored exactly as
the local models are (token accuracy, exact match, BLEU-4). Answers are cached on disk; a
request that fails after the client's retries is counted in ``gen_errors`` and its sample
left out of that model's scores, never silently scored as empty.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from spark_pipeline.evaluation.metrics import exact_match, split_at, token_accuracy
from spark_pipeline.evaluation.settings import ExternalModel
from spark_pipeline.llm import ChatClient, JudgeError, Usage

SYSTEM = ("You complete source code. Reply with the exact continuation of the given code only: no explanation, "
          "no markdown, no repetition of the given part.")
_FENCE = re.compile(r"^```[\w+-]*\n?|\n?```\s*$")


def evaluate_external(spec: ExternalModel, samples: list[dict], tokenizer, max_new_tokens: int,
                      per_category: int, split_fraction: float, cache_dir: Path,
                      settings=None) -> tuple[list[dict], list[dict], dict]:
    """``(rows, records, usage)``: rows as the local models' (generation columns only, with
    their intervals), one record per answered sample (prompt hash, reference, generation,
    per-sample metrics), and the API usage."""
    import hashlib
    import json

    from spark_pipeline.evaluation import stats
    from spark_pipeline.evaluation.evaluate import EvalSettings, sample_id, summarise

    usage = Usage()
    client = ChatClient(spec.config(max_new_tokens), cache_dir, usage)
    budget: dict[tuple[str, str], int] = defaultdict(int)
    errors: dict[tuple[str, str], int] = defaultdict(int)
    name = f"external:{spec.name}"
    records = []
    for s in samples:
        key = (s["split"], s["category"])
        if budget[key] >= per_category:
            continue
        budget[key] += 1
        cut = split_at(len(s["ids"]), split_fraction)
        prompt = s["ids"][:cut]
        reference = s["ids"][cut:][:max_new_tokens]
        try:
            answer = client.complete(SYSTEM, tokenizer.decode(prompt))
        except JudgeError:
            errors[key] += 1
            errors[(s["split"], "all")] += 1
            continue
        generated = tokenizer.encode(_FENCE.sub("", answer))[: max_new_tokens]
        hyp, ref = tokenizer.decode(generated[: len(reference)]), tokenizer.decode(reference)
        bleu_stats = stats.bleu_statistics([hyp], [ref])[0]
        records.append({
            "model": name, "split": s["split"], "category": s["category"], "pair_id": s.get("pair_id", ""),
            "sample_id": sample_id(s),
            "tokens": 0, "nll_sum": 0.0, "suffix_tokens": 0, "suffix_nll_sum": 0.0, "top1": 0, "top5": 0,
            "generated": True, "prompt_sha256": hashlib.sha256(json.dumps(prompt).encode()).hexdigest(),
            "prompt_tokens": cut, "reference": ref, "generation": tokenizer.decode(generated),
            "reference_ids": reference, "generation_ids": generated,
            "token_accuracy": token_accuracy(generated, reference), "exact_match": exact_match(generated, reference),
            "bleu4": stats.sentence_bleu_from(bleu_stats), "bleu_stats": bleu_stats.tolist(),
            "bleu4_signature": stats.sentence_bleu_signature(),
            "compiles": None, "memorized_longest": None})
    settings = settings or EvalSettings(split_fraction=split_fraction, max_new_tokens=max_new_tokens,
                                        max_samples_per_category=0, generation_samples_per_category=per_category,
                                        batch_size=1, outlier_factor=2.0)
    rows = summarise(records, settings)
    nan = float("nan")
    for row in rows:  # a chat API gives no log-probabilities: no perplexity, no teacher forcing
        row.update({"tokens": 0, "nll": nan, "perplexity": nan, "perplexity_lo": nan, "perplexity_hi": nan,
                    "tf_loss": nan, "tf_top1": nan, "tf_top5": nan, "tf_top1_lo": nan, "tf_top1_hi": nan,
                    "tf_top5_lo": nan, "tf_top5_hi": nan, "gen_errors": errors.get((row["split"], row["category"]), 0)})
    answered = {(r["split"], r["category"]) for r in rows}
    for split, category in sorted(set(errors) - answered):  # every request of the group failed
        rows.append({"model": name, "split": split, "category": category, "samples": 0, "gen_samples": 0,
                     "gen_errors": errors[(split, category)], "gen_token_accuracy": nan, "bleu4": nan,
                     "exact_match": nan, "perplexity": nan, "flag": "", "few_samples": True})
    return rows, records, usage.to_dict()
