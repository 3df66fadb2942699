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
from dataclasses import dataclass
from pathlib import Path

from spark_pipeline.evaluation.metrics import bleu4, exact_match, split_at, token_accuracy
from spark_pipeline.llm import ChatClient, JudgeError, LLMConfig, Usage

SYSTEM = ("You complete source code. Reply with the exact continuation of the given code only: no explanation, "
          "no markdown, no repetition of the given part.")
_FENCE = re.compile(r"^```[\w+-]*\n?|\n?```\s*$")


@dataclass
class ExternalModel:
    name: str
    provider: str
    model: str
    base_url: str = ""
    api_key_env: str = ""
    max_retries: int = 5
    backoff_s: float = 1.0

    def config(self, max_tokens: int) -> LLMConfig:
        return LLMConfig(provider=self.provider, model=self.model, base_url=self.base_url,
                         api_key_env=self.api_key_env, max_tokens=max_tokens, max_retries=self.max_retries,
                         backoff_s=self.backoff_s)


def evaluate_external(spec: ExternalModel, samples: list[dict], tokenizer, max_new_tokens: int,
                      per_category: int, split_fraction: float, cache_dir: Path) -> tuple[list[dict], dict]:
    usage = Usage()
    client = ChatClient(spec.config(max_new_tokens), cache_dir, usage)
    budget: dict[tuple[str, str], int] = defaultdict(int)
    per_group: dict[tuple[str, str], list[tuple[list[int], list[int]]]] = defaultdict(list)
    errors: dict[tuple[str, str], int] = defaultdict(int)
    for s in samples:
        key = (s["split"], s["category"])
        if budget[key] >= per_category:
            continue
        budget[key] += 1
        cut = split_at(len(s["ids"]), split_fraction)
        reference = s["ids"][cut:][:max_new_tokens]
        try:
            answer = client.complete(SYSTEM, tokenizer.decode(s["ids"][:cut]))
        except JudgeError:
            errors[key] += 1
            errors[(s["split"], "all")] += 1
            continue
        generated = tokenizer.encode(_FENCE.sub("", answer))[: max_new_tokens]
        per_group[key].append((generated, reference))
        per_group[(s["split"], "all")].append((generated, reference))
    rows = []
    for (split, category) in sorted(set(per_group) | set(errors)):
        pairs = per_group.get((split, category), [])
        nan = float("nan")
        rows.append({
            "model": f"external:{spec.name}", "split": split, "category": category, "samples": len(pairs),
            "tokens": 0, "nll": nan, "perplexity": nan, "tf_loss": nan, "tf_top1": nan, "tf_top5": nan,
            "gen_samples": len(pairs), "gen_errors": errors.get((split, category), 0),
            "gen_token_accuracy": sum(token_accuracy(g, r) for g, r in pairs) / len(pairs) if pairs else nan,
            "bleu4": bleu4([tokenizer.decode(g[: len(r)]) for g, r in pairs],
                           [tokenizer.decode(r) for _, r in pairs]) if pairs else nan,
            "exact_match": sum(exact_match(g, r) for g, r in pairs) / len(pairs) if pairs else nan,
        })
    return rows, usage.to_dict()
