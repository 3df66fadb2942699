"""Evaluation sets (paper §3.4), and the contamination check between training and them.

* In-domain: per category, the samples in that category's last ``tail_shards`` shards (the
  category's samples in pipeline order, cut into shards of ``category_shard_rows``), from
  which a stratified, deterministic draw (ordered by sample hash) takes the category's
  quota: ``in_domain_samples`` spread evenly over the categories present, never more than
  ``max_fraction`` of a category. These samples are kept out of training.
* Held-out: the samples of the pairs flagged ``held_out`` (those pairs never reach training)
  whose text no training pair produced. A held-out sample that a sample of a training pair
  copies, nearly copies or contains (what the mixture counts as contamination: same
  normalised text, Jaccard or containment of 5-word shingles at least
  ``minhash_threshold``) is dropped from held-out and recorded. Pairs that share a
  datasheet share its text; that text comes from a training pair, so it is no held-out
  text. Every in-domain sample is a training pair's sample, so the two sets are disjoint
  by construction.
* Contamination (:class:`~spark_pipeline.corpus.integrity.EvalIndex`, used here and by the
  mixture): a training sample that copies an evaluation sample (the same normalised text),
  or whose 5-word shingles reach ``minhash_threshold`` in exact Jaccard or containment with
  one, is reported, and dropped from training if so configured.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from spark_pipeline.corpus.integrity import Contamination, Duplicate, EvalIndex, deduplicate
from spark_pipeline.corpus.settings import EvalSettings


def select_in_domain(samples: list[dict], settings: EvalSettings) -> list[dict]:
    """``samples`` in pipeline order (pair order, then chunk order), held-out pairs excluded."""
    by_category: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_category[s["category"]].append(s)
    if not by_category:
        return []
    quota = math.ceil(settings.in_domain_samples / len(by_category))
    chosen: list[dict] = []
    for category in sorted(by_category):
        rows = by_category[category]
        shard = max(settings.category_shard_rows, 1)
        n_shards = math.ceil(len(rows) / shard)
        first_tail = max(n_shards - settings.tail_shards, 0) * shard
        tail = rows[first_tail:]
        take = min(quota, int(settings.max_fraction * len(rows)), len(tail))
        picked = sorted(tail, key=lambda r: r["sample_hash"])[:take]
        chosen.extend(picked)
    order = {id(s): i for i, s in enumerate(samples)}
    return sorted(chosen, key=lambda s: order[id(s)])


def _closeness(case: Contamination) -> tuple:
    return case.kind == "exact", case.jaccard, case.containment


def unshared_held_out(held_out: list[dict], domain: list[dict], threshold: float) -> tuple[list[dict], list[Duplicate]]:
    """The ``held_out`` samples no ``domain`` (training pair) sample copies, nearly copies or
    contains, in their order; and for each one dropped, a record naming the closest
    training-pair sample (``kept``)."""
    if not held_out or not domain:
        return list(held_out), []
    index = EvalIndex(held_out, threshold)
    closest: dict[int, Contamination] = {}
    for row in domain:
        for i, case in index.matches(row).items():
            if i not in closest or _closeness(case) > _closeness(closest[i]):
                closest[i] = case
    kept = [row for i, row in enumerate(held_out) if i not in closest]
    shared = [Duplicate(held_out[i], case.train, case.kind, case.jaccard) for i, case in sorted(closest.items())]
    return kept, shared


@dataclass
class EvalSets:
    in_domain: list[dict]
    held_out: list[dict]
    in_domain_duplicates: list[Duplicate]
    held_out_duplicates: list[Duplicate]
    held_out_shared: list[Duplicate]
    """Held-out samples dropped because a training pair produced their text."""


def evaluation_sets(domain: list[dict], held_out: list[dict], settings: EvalSettings) -> EvalSets:
    """Both evaluation sets from the training pairs' samples (``domain``, pipeline order) and
    the held-out pairs' samples: the in-domain draw, held-out without the text training pairs
    share, then each set without its own duplicates."""
    threshold, permutations = settings.minhash_threshold, settings.minhash_permutations
    in_domain, in_dups = deduplicate(select_in_domain(domain, settings), threshold, permutations)
    unshared, shared = unshared_held_out(held_out, domain, threshold)
    held, out_dups = deduplicate(unshared, threshold, permutations)
    return EvalSets(in_domain, held, in_dups, out_dups, shared)
