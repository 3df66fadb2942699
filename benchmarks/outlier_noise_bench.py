"""False-positive and detection rates of the report's artifact check
(:mod:`spark_pipeline.evaluation.outliers`) on simulated runs.

    python benchmarks/outlier_noise_bench.py [--series 10000] [--factor 2.0] [--z 3.5] [--seed 0]

A simulated run is one checkpoint every 500 steps (the hero profile: 30 checkpoints over
15,000 steps; 12 and 6 for shorter runs), its log perplexity a decaying power law
``log(1.15) + A * (step / 500) ** -alpha`` (A in [0.2, 1.2], alpha in [0.3, 1.0], drawn per
run: about 1.5-3.8 at the first checkpoint down to about 1.2) plus per-checkpoint noise,
Gaussian or Student-t with 3 degrees of freedom (heavy tails) scaled to the same standard
deviation. The checkpoints are handed over shuffled (evaluated out of order). Generative token
accuracy rises along the same curve with its own noise (SD 0.01) and a 95% interval of
+-0.02.

Printed per setting, over ``--series`` runs (seeded):

- false positives: the share of runs with any checkpoint flagged, perplexity alone (no
  cross-check: the worst case) and with the generative scores; and, to show what the factor
  buys, perplexity alone with the factor lowered to 1.25;
- detection: the share of runs where an injected artifact (perplexity x4.67, the paper's
  1.2 -> 5.6, generative scores untouched; one checkpoint or two in a row, anywhere) is
  flagged exactly (those checkpoints and no other), and the same for a x1.5 artifact.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spark_pipeline.evaluation.outliers import perplexity_outliers  # noqa: E402


def simulate(rng, length: int, sd: float, heavy: bool) -> tuple[list[int], np.ndarray, np.ndarray]:
    steps = 500 * np.arange(1, length + 1)
    amplitude, alpha = rng.uniform(0.2, 1.2), rng.uniform(0.3, 1.0)
    curve = amplitude * (steps / 500.0) ** -alpha
    noise = rng.standard_t(3, length) / math.sqrt(3.0) if heavy else rng.standard_normal(length)
    log_ppl = math.log(1.15) + curve + sd * noise
    accuracy = 0.6 - 0.2 * curve / amplitude + 0.01 * rng.standard_normal(length)
    return list(steps), log_ppl, accuracy


def points(steps, log_ppl, accuracy, rng, generative: bool) -> list[dict]:
    out = [{"checkpoint": f"c{s}", "step": int(s), "perplexity": float(math.exp(y)),
            **({"gen_token_accuracy": float(a), "gen_token_accuracy_lo": float(a) - 0.02,
                "gen_token_accuracy_hi": float(a) + 0.02} if generative else {})}
           for s, y, a in zip(steps, log_ppl, accuracy, strict=True)]
    rng.shuffle(out)
    return out


def false_positives(rng, n, length, sd, heavy, factor, z) -> tuple[float, float, float]:
    alone = crossed = low_factor = 0
    for _ in range(n):
        steps, y, acc = simulate(rng, length, sd, heavy)
        alone += bool(perplexity_outliers(points(steps, y, acc, rng, False), factor, z))
        crossed += bool(perplexity_outliers(points(steps, y, acc, rng, True), factor, z))
        low_factor += bool(perplexity_outliers(points(steps, y, acc, rng, False), 1.25, z))
    return alone / n, crossed / n, low_factor / n


def detection(rng, n, length, sd, bad: int, jump: float, factor, z) -> float:
    exact = 0
    for _ in range(n):
        steps, y, acc = simulate(rng, length, sd, False)
        at = int(rng.integers(0, length - bad + 1))
        y[at:at + bad] += math.log(jump)
        flagged = {p["step"] for p in perplexity_outliers(points(steps, y, acc, rng, True), factor, z)}
        exact += flagged == set(steps[at:at + bad])
    return exact / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=10000)
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--z", type=float, default=3.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"{args.series} simulated runs per row, factor {args.factor}, z {args.z}, seed {args.seed}\n")
    print("| checkpoints | noise (SD of log perplexity) | false positives, perplexity alone | "
          "with generative cross-check | perplexity alone, factor 1.25 |")
    print("|---|---|---|---|---|")
    for length in (30, 12, 6):
        for sd, heavy in ((0.01, False), (0.03, False), (0.1, False), (0.03, True)):
            rates = false_positives(rng, args.series, length, sd, heavy, args.factor, args.z)
            print(f"| {length} | {sd}{' (t, 3 df)' if heavy else ''} | " + " | ".join(f"{r:.2%}" for r in rates) + " |")
    print("\n| checkpoints | noise | artifact | flagged exactly |")
    print("|---|---|---|---|")
    for length in (30, 6):
        for bad in (1, 2):
            for jump in (4.67, 1.5):
                rate = detection(rng, args.series, length, 0.03, bad, jump, args.factor, args.z)
                print(f"| {length} | 0.03 | x{jump}, {bad} in a row | {rate:.2%} |")


if __name__ == "__main__":
    main()
