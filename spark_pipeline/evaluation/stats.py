"""How sure a number is: bootstrap intervals over evaluation samples, paired comparisons
between two models on the same samples, and Wilson intervals for pass rates.

Every per-category metric of the tables is a function of per-sample quantities (perplexity:
summed NLL over summed tokens; top-k: hits over suffix tokens; token accuracy: mean over
generated samples; BLEU-4: sacrebleu's corpus BLEU, default settings, scored by sacrebleu from
summed n-gram statistics). A
bootstrap resamples the samples with replacement ``resamples`` times (seeded, so a table is
reproducible) and takes the 2.5th and 97.5th percentiles of the metric: a percentile interval
at 95%. A *paired* comparison resamples the same sample indices for both models and gives the
interval of the difference; a difference whose interval holds 0 is not a difference, and
one over fewer than ``MIN_PAIRED_SAMPLES`` samples is *degenerate*: shown, never named.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

LEVEL = 0.95
RESAMPLES = 1000
MIN_PAIRED_SAMPLES = 6
"""A paired interval over fewer samples is *degenerate*: no winner, regression or difference is
named from it. Even when every sample moves the same way, a sign test cannot tell that from
chance at 95% below six samples (two-sided p = 2 * 0.5**5 = 0.0625 with five, 0.031 with six),
while the percentile bootstrap has almost nothing to resample (two samples give three distinct
resamples) and a difference that is the same on every sample gives an interval of zero width
that excludes 0."""


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n: int, resamples: int = RESAMPLES,
              seed: int = 0) -> tuple[float, float]:
    """Interval of ``statistic`` over ``n`` samples. ``statistic`` takes an index matrix
    ``(resamples, n)`` and returns one value per row (vectorised)."""
    if n < 2:
        return float("nan"), float("nan")
    return _interval(statistic(_indices(n, resamples, seed)))


def ratio_statistic(numerator, denominator, transform=None):
    """sum(numerator[idx]) / sum(denominator[idx]) per resample, optionally transformed
    (``np.exp`` for perplexity from NLL and token counts)."""
    num, den = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)

    def statistic(idx: np.ndarray) -> np.ndarray:
        d = den[idx].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            value = np.where(d > 0, num[idx].sum(axis=1) / d, np.nan)
            return transform(value) if transform else value

    return statistic


def mean_statistic(values):
    v = np.asarray(values, dtype=float)
    return lambda idx: v[idx].mean(axis=1)


@functools.cache
def _bleu_metrics():
    """sacrebleu's two BLEUs with their default settings: ``BLEU()`` is what
    ``sacrebleu.corpus_bleu`` computes (13a tokenizer, mixed case, ``exp`` smoothing, no
    effective order), ``BLEU(effective_order=True)`` what ``sacrebleu.sentence_bleu`` computes.
    Each is scored once so that it can state its signature."""
    from sacrebleu.metrics import BLEU

    corpus, sentence = BLEU(), BLEU(effective_order=True)
    corpus.corpus_score(["a"], [["a"]])
    sentence.sentence_score("a", ["a"])
    return corpus, sentence


def bleu_signature() -> str:
    """sacrebleu's signature of the corpus BLEU-4 in the tables, e.g.
    ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0``."""
    return str(_bleu_metrics()[0].get_signature())


def sentence_bleu_signature() -> str:
    """sacrebleu's signature of the per-sample sentence BLEU (``eff:yes``)."""
    return str(_bleu_metrics()[1].get_signature())


def bleu_statistics(hypotheses: list[str], references: list[str]) -> np.ndarray:
    """Per sentence: sys_len, ref_len, matches (4), totals (4), as sacrebleu counts them."""
    corpus = _bleu_metrics()[0]
    rows = []
    for hyp, ref in zip(hypotheses, references, strict=True):
        s = corpus.corpus_score([hyp], [[ref]])  # one sentence's counts, as the corpus score sums them
        rows.append([s.sys_len, s.ref_len, *s.counts, *s.totals])
    return np.asarray(rows, dtype=float).reshape(-1, 10)


def _score(metric, total: np.ndarray) -> float:
    # sacrebleu's own scoring of summed statistics, with the metric's own settings
    return float(metric.compute_bleu([int(x) for x in total[2:6]], [int(x) for x in total[6:10]], int(total[0]),
                                     int(total[1]), smooth_method=metric.smooth_method,
                                     smooth_value=metric.smooth_value, effective_order=metric.effective_order,
                                     max_ngram_order=metric.max_ngram_order).score)


def corpus_bleu_from(stats: np.ndarray) -> float:
    """Corpus BLEU-4 from summed sentence statistics: equal to ``sacrebleu.corpus_bleu`` with
    its defaults (signature :func:`bleu_signature`)."""
    return _score(_bleu_metrics()[0], np.asarray(stats, dtype=float).reshape(-1, 10).sum(axis=0))


def sentence_bleu_from(stats: np.ndarray) -> float:
    """One sample's BLEU from its statistics: equal to ``sacrebleu.sentence_bleu`` with its
    defaults (effective order; signature :func:`sentence_bleu_signature`)."""
    return _score(_bleu_metrics()[1], np.asarray(stats, dtype=float).reshape(10))


def bleu_statistic(stats: np.ndarray):
    corpus = _bleu_metrics()[0]

    def statistic(idx: np.ndarray) -> np.ndarray:
        return np.array([_score(corpus, total) for total in stats[idx].sum(axis=1)])

    return statistic


def paired(statistic_a, statistic_b, n: int, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Interval of statistic_a - statistic_b, both on the same resampled sample indices."""
    if n < 2:
        return float("nan"), float("nan")
    idx = _indices(n, resamples, seed)
    return _interval(statistic_a(idx) - statistic_b(idx))


def excludes_zero(interval: tuple[float, float]) -> bool:
    lo, hi = interval
    return math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)


def degenerate(n: int) -> bool:
    """Whether a paired interval over ``n`` samples is degenerate (:data:`MIN_PAIRED_SAMPLES`)."""
    return n < MIN_PAIRED_SAMPLES


def differs(interval: tuple[float, float], n: int) -> bool:
    """A paired difference over ``n`` samples is named only when its interval excludes 0 and
    is not degenerate."""
    return excludes_zero(interval) and not degenerate(n)


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
