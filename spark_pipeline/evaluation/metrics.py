"""The paper's metrics, computed on token ids.

* **Perplexity** (§6.4): exp of the mean token negative log-likelihood. Per sample the NLL
  is summed over its predicted tokens; a category's (or the overall) perplexity is
  exp(total NLL / total tokens), i.e. weighted by token count.
* **Teacher-forced completion** (§6.5): a sample's tokens are split at 75% of their count
  (``split_at``); the model reads the whole sample once and is scored on the 25% suffix
  only: mean loss, top-1 and top-5 accuracy of the next-token prediction.
* **Generative completion** (§6.6): greedy decoding from the 75% prefix, up to
  ``max_new_tokens``. *Token accuracy* is the share of reference suffix positions at which the
  generated token equals the reference token (position by position, the generation cut or
  padded to the reference's length, so missing tokens count as wrong); *exact match* is
  1 when the generation reproduces the whole reference suffix; BLEU-4 is sacrebleu's corpus
  BLEU on the decoded texts with sacrebleu's default settings (13a tokenizer, ``exp``
  smoothing; see :mod:`spark_pipeline.evaluation.stats` for its signature).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def split_at(n_tokens: int, fraction: float = 0.75) -> int:
    """Index of the first suffix token: at least one token on each side when n >= 2."""
    if n_tokens < 2:
        raise ValueError(f"a sample of {n_tokens} token(s) cannot be split into prefix and suffix")
    return min(max(1, int(math.floor(n_tokens * fraction))), n_tokens - 1)


@dataclass
class SampleScores:
    nll_sum: float          # summed over the predicted tokens of the whole sample
    n_tokens: int           # predicted tokens (length - 1)
    suffix_nll_sum: float
    suffix_tokens: int
    top1: int               # suffix positions whose top-1 prediction is right
    top5: int


@torch.no_grad()
def score_samples(model, samples: list[list[int]], device="cpu", fraction: float = 0.75,
                  batch_size: int = 8, pad_id: int = 0, progress=None) -> list[SampleScores]:
    """One forward pass per sample (batched, right-padded) gives perplexity and the
    teacher-forced suffix metrics together. ``progress(done)`` after every batch."""
    out: list[SampleScores] = []
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i]))
    results: dict[int, SampleScores] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        longest = max(len(samples[i]) for i in idx)
        ids = torch.full((len(idx), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), longest), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :len(samples[i])] = torch.tensor(samples[i])
            mask[row, :len(samples[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
        logp = F.log_softmax(logits[:, :-1], dim=-1)
        targets = ids[:, 1:].to(device)
        token_nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        top5 = logp.topk(5, dim=-1).indices
        for row, i in enumerate(idx):
            n = len(samples[i])
            cut = split_at(n, fraction)
            nll = token_nll[row, : n - 1]
            # prediction at position t is for token t+1: the suffix tokens cut..n-1 are predicted at cut-1..n-2
            suffix = slice(cut - 1, n - 1)
            hits5 = (top5[row, suffix] == targets[row, suffix].unsqueeze(-1))
            results[i] = SampleScores(float(nll.sum()), n - 1, float(nll[suffix].sum()), n - cut,
                                      int(hits5[:, 0].sum()), int(hits5.any(-1).sum()))
        if progress:
            progress(start + len(idx))
    for i in range(len(samples)):
        out.append(results[i])
    return out


def perplexity(nll_sum: float, n_tokens: int) -> float:
    return math.exp(nll_sum / n_tokens) if n_tokens else float("nan")


def token_accuracy(generated: list[int], reference: list[int]) -> float:
    if not reference:
        return float("nan")
    hits = sum(1 for g, r in zip(generated, reference, strict=False) if g == r)
    return hits / len(reference)


def exact_match(generated: list[int], reference: list[int]) -> bool:
    return generated[: len(reference)] == reference and len(generated) >= len(reference)


def bleu4(hypotheses: list[str], references: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


@torch.no_grad()
def generate_batch(model, prefixes: list[list[int]], max_new_tokens: int, eos_id: int, pad_id: int,
                   device="cpu", batch_size: int = 8, progress=None) -> list[list[int]]:
    """Greedy continuations of many prefixes, ``batch_size`` at a time (left-padded, longest
    first so a batch wastes little), each cut after its first EOS as a single-sample
    ``generate`` would stop there. ``progress(done)`` after every batch."""
    order = sorted(range(len(prefixes)), key=lambda i: -len(prefixes[i]))
    out: dict[int, list[int]] = {}
    for start in range(0, len(order), max(1, batch_size)):
        idx = order[start:start + max(1, batch_size)]
        longest = max(len(prefixes[i]) for i in idx)
        ids = torch.full((len(idx), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), longest), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, longest - len(prefixes[i]):] = torch.tensor(prefixes[i])
            mask[row, longest - len(prefixes[i]):] = 1
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                   max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_id,
                                   pad_token_id=pad_id)
        for row, i in enumerate(idx):
            new = generated[row, longest:].tolist()
            out[i] = new[: new.index(eos_id) + 1] if eos_id in new else new
        if progress:
            progress(start + len(idx))
    return [out[i] for i in range(len(prefixes))]
