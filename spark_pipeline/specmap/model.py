"""The file model: how likely a candidate file is to implement a datasheet section.

SpecMap's offline judge does not rank files with hand-set weights and thresholds. For each
section it computes a row of evidence per candidate file (:mod:`.features`: how much of
the section's names and register numbers the file holds and uses, its text relevance, what
kind of file it is) and a logistic model turns the row into a probability. Every weight and
every threshold of the decision (keep files at or above ``threshold`` and within
``relative`` of the section's best file, at most ``max_files`` distinct files) is **fitted
on labelled pairs** (:func:`fit`): the shipped model (``file_model.json``) on the benchmark's
development pairs only, and the benchmark scores every pair with a model that never saw it
(``benchmarks/specmap_bench.py``, leave one pair out).

Prediction needs no library (a dot product); fitting uses scikit-learn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

#: Bumped when the features change meaning (a model fitted on other features is refused).
FEATURE_VERSION = 8


#: What the section gate weighs: the file decision's outcome and what kind of text the
#: section is (:func:`section_row`).
SECTION_FEATURES = ("best_p", "kept", "kept_primary", "kept_strong", "section_units", "section_pins",
                    "section_board", "section_registers", "section_prose")


@dataclass
class SectionGate:
    """M4 learned: whether a section carries code at all, from its kept files' probabilities
    and evidence and the kind of text it is (a section of electrical figures, pins or board
    advice has no implementation, whatever words a file shares with it)."""

    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    threshold: float = 0.5
    features: tuple[str, ...] = SECTION_FEATURES

    def probability(self, row: dict[str, float]) -> float:
        z = self.bias
        for name, w, m, s in zip(self.features, self.weights, self.mean, self.scale, strict=True):
            z += w * (row.get(name, 0.0) - m) / s
        return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, z))))


def section_row(kept: Sequence[tuple[str, float]], rows: dict[str, dict[str, float]]) -> dict[str, float]:
    """The section gate's row: how sure the file decision is (``best_p``, ``kept``), what the
    kept files hold (``kept_primary``, ``kept_strong``), and the section's profile (the same in
    every candidate's row)."""
    any_row = next(iter(rows.values()), {})
    out = {name: any_row.get(name, 0.0) for name in ("section_units", "section_pins", "section_board",
                                                      "section_registers", "section_prose")}
    out["best_p"] = max((p for _, p in kept), default=0.0)
    out["kept"] = min(1.0, len(kept) / 5)
    out["kept_primary"] = max((rows[p].get("primary_cov", 0.0) for p, _ in kept), default=0.0)
    out["kept_strong"] = max((rows[p].get("strong_cov", 0.0) for p, _ in kept), default=0.0)
    return out


@dataclass
class FileModel:
    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    threshold: float = 0.5
    """Keep a file whose probability is at least this."""
    relative: float = 0.0
    """... and at least this share of the section's best file's."""
    max_files: int = 8
    """At most this many files with different contents per section (copies come along)."""
    min_name_share: float = 0.0
    """For a section with names of its own (not prose): a file that holds none of its own
    names or numbers must hold at least this share of the weight of its register-shaped
    names (``strong_cov``) to be a candidate (0: every file is one)."""
    feature_version: int = FEATURE_VERSION
    gate: SectionGate | None = None
    """Whether a section carries code at all (fitted after the file decision)."""
    trained_on: list[str] = field(default_factory=list)
    """The labelled pairs the model was fitted on."""
    note: str = ""

    def eligible(self, row: dict[str, float]) -> bool:
        """Whether a file can implement the section at all (see ``min_name_share``)."""
        return (row.get("section_prose", 0.0) > 0 or row.get("primary_cov", 0.0) > 0
                or row.get("number_cov", 0.0) > 0 or row.get("strong_cov", 0.0) >= self.min_name_share)

    def probability(self, row: dict[str, float]) -> float:
        if not self.eligible(row):
            return 0.0
        z = self.bias
        for name, w, m, s in zip(self.features, self.weights, self.mean, self.scale, strict=True):
            z += w * (row.get(name, 0.0) - m) / s
        return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, z))))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FileModel:
        data = json.loads(text)
        gate = data.get("gate")
        if gate is not None:
            gate = SectionGate(**{**gate, **{k: tuple(gate[k]) for k in ("weights", "mean", "scale", "features")}})
        model = cls(**{**data, "features": tuple(data["features"]), "weights": tuple(data["weights"]),
                       "mean": tuple(data["mean"]), "scale": tuple(data["scale"]), "gate": gate})
        if model.feature_version != FEATURE_VERSION:
            raise ValueError(f"file model was fitted on feature version {model.feature_version}, "
                             f"this SpecMap computes version {FEATURE_VERSION}: refit it "
                             "(python benchmarks/specmap_bench.py --repos DIR --fit)")
        return model

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json() + "\n")


def load(path: Path | None = None) -> FileModel:
    """The shipped model (fitted on the benchmark's development pairs), or one from ``path``."""
    if path is not None:
        return FileModel.from_json(Path(path).read_text())
    return FileModel.from_json(resources.files("spark_pipeline.specmap").joinpath("file_model.json").read_text())


@dataclass
class Sample:
    """One labelled section of one pair: its candidates' rows and the gold files."""

    pair: str
    section: str
    candidates: list[tuple[str, dict[str, float], str]]
    """(path, feature row, content key: copies of one file share it)."""
    gold: set[str]


def decide(model: FileModel, candidates: Sequence[tuple[str, dict[str, float], str]],
           probabilities: Sequence[float] | None = None) -> tuple[list[tuple[str, float]], float | None]:
    """The files a model keeps for one section and the section gate's probability (None
    without a gate): no file when the gate judges the section to carry no code."""
    kept = select(model, candidates, probabilities)
    if model.gate is None or not kept:
        return kept, None
    p = model.gate.probability(section_row(kept, {path: row for path, row, _ in candidates}))
    return (kept if p >= model.gate.threshold else []), p


def select(model: FileModel, candidates: Sequence[tuple[str, dict[str, float], str]],
           probabilities: Sequence[float] | None = None) -> list[tuple[str, float]]:
    """The files a model keeps for one section, best first, with their probabilities (before
    the section gate: :func:`decide`)."""
    probs = list(probabilities) if probabilities is not None else [model.probability(r) for _, r, _ in candidates]
    if not probs:
        return []
    best = max(probs)
    ranked = sorted(zip(candidates, probs, strict=True), key=lambda cp: (-cp[1], cp[0][0]))
    kept: list[tuple[str, float]] = []
    contents: set[str] = set()
    for (path, _row, content), p in ranked:
        if p <= 0.0 or p < model.threshold or p < model.relative * best:
            break
        if content not in contents:
            if len(contents) >= model.max_files:
                continue
            contents.add(content)
        kept.append((path, p))
    return kept


def _f1(tp: int, pred: int, gold: int) -> float:
    p = tp / pred if pred else 0.0
    r = tp / gold if gold else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def fit(samples: Iterable[Sample], features: Sequence[str], c: float = 0.3,
        thresholds: Sequence[float] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        relatives: Sequence[float] = (0.0, 0.3, 0.5, 0.7), caps: Sequence[int] = (3, 5, 8, 12),
        shares: Sequence[float] = (0.1, 0.2, 0.3, 0.5), gate: bool = True) -> FileModel:
    """A logistic model over ``features`` fitted on the samples' eligible candidates (gold = 1),
    with the decision's name-share gate, threshold, relative cut and cap chosen to maximise the
    pooled file F1 over the samples (gold files that are not candidates count as misses)."""
    samples = list(samples)
    best_model, best_f1 = None, -1.0
    for share in shares:
        model = _fit_at(samples, features, c, share)
        if model is None:
            continue
        f1 = _choose_decision(model, samples, thresholds, relatives, caps)
        if f1 > best_f1 + 1e-9:
            best_model, best_f1 = model, f1
    if best_model is None:
        raise ValueError("the labelled samples need both gold and non-gold candidates to fit a model")
    if gate:
        best_f1 = _fit_gate(best_model, samples, c)
    best_model.note = (f"fitted on {len(samples)} labelled sections of {len(best_model.trained_on)} pairs; "
                       f"pooled file F1 {best_f1:.3f}")
    return best_model


def _fit_gate(model: FileModel, samples: list[Sample], c: float) -> float:
    """Fit the section gate on the sections where the file decision kept files (gold: the
    section has gold files), with its threshold at the best pooled file F1; return that F1."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    decided = []
    for sample in samples:
        kept = select(model, sample.candidates)
        rows = {path: row for path, row, _ in sample.candidates}
        decided.append((sample, kept, section_row(kept, rows) if kept else None))
    x = [[r.get(f, 0.0) for f in SECTION_FEATURES] for _, kept, r in decided if kept]
    y = [1 if s.gold else 0 for s, kept, _ in decided if kept]
    if len(set(y)) < 2:
        return _pooled(decided, None)
    x = np.asarray(x, dtype=float)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
    clf.fit((x - mean) / scale, np.asarray(y))
    gate = SectionGate(tuple(float(w) for w in clf.coef_[0]), float(clf.intercept_[0]),
                       tuple(float(m) for m in mean), tuple(float(s) for s in scale), features=SECTION_FEATURES)
    best, best_f1 = 0.0, _pooled(decided, None)
    for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        gate.threshold = t
        f1 = _pooled(decided, gate)
        if f1 > best_f1 + 1e-9:
            best, best_f1 = t, f1
    if best > 0.0:
        gate.threshold = best
        model.gate = gate
    return best_f1


def _pooled(decided, gate: SectionGate | None) -> float:
    tp = pred = gold = 0
    for sample, kept, row in decided:
        if kept and gate is not None and gate.probability(row) < gate.threshold:
            kept = []
        paths = {p for p, _ in kept}
        tp += len(paths & sample.gold)
        pred += len(paths)
        gold += len(sample.gold)
    return _f1(tp, pred, gold)


def _fit_at(samples: list[Sample], features: Sequence[str], c: float, share: float) -> FileModel | None:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    gate = FileModel(tuple(features), (0.0,) * len(features), 0.0, (0.0,) * len(features), (1.0,) * len(features),
                     min_name_share=share)
    rows, labels = [], []
    for sample in samples:
        for path, row, _ in sample.candidates:
            if gate.eligible(row):
                rows.append([row.get(name, 0.0) for name in features])
                labels.append(1 if path in sample.gold else 0)
    if len(set(labels)) < 2:
        return None
    x = np.asarray(rows, dtype=float)
    y = np.asarray(labels)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
    clf.fit((x - mean) / scale, y)
    return FileModel(tuple(features), tuple(float(w) for w in clf.coef_[0]), float(clf.intercept_[0]),
                     tuple(float(m) for m in mean), tuple(float(s) for s in scale), min_name_share=share,
                     trained_on=sorted({s.pair for s in samples}))


def _choose_decision(model: FileModel, samples: list[Sample], thresholds, relatives, caps) -> float:
    """Set the model's threshold, relative cut and cap to the best pooled file F1; return it."""
    probs = [[model.probability(r) for _, r, _ in s.candidates] for s in samples]
    best, best_f1 = (0.5, 0.0, 8), -1.0
    for t in thresholds:
        for rel in relatives:
            for cap in caps:
                model.threshold, model.relative, model.max_files = t, rel, cap
                tp = pred = gold = 0
                for sample, p in zip(samples, probs, strict=True):
                    kept = {path for path, _ in select(model, sample.candidates, p)}
                    tp += len(kept & sample.gold)
                    pred += len(kept)
                    gold += len(sample.gold)
                f1 = _f1(tp, pred, gold)
                if f1 > best_f1 + 1e-9:
                    best, best_f1 = (t, rel, cap), f1
    model.threshold, model.relative, model.max_files = best
    return best_f1
