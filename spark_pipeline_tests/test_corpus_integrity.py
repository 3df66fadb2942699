"""The guards of the training mixture: duplicates, contamination measured exactly, evaluation
samples out of training by construction, every case written down."""

from __future__ import annotations

import random

import pytest

from spark_pipeline.corpus import checks
from spark_pipeline.corpus.integrity import EvalIndex, deduplicate, jaccard, shingle_hashes
from spark_pipeline.corpus.mixture import assemble, write_mixture
from spark_pipeline.corpus.parquet import read_rows
from spark_pipeline.corpus.settings import CorpusSettings
from spark_pipeline.corpus.stages import text_hash

HERO = CorpusSettings.load("hero")
WORDS = [f"w{i}" for i in range(400)]
BASE = " ".join(WORDS[:120])


def _row(pair, i, text, **extra):
    return {"pair_id": pair, "category": "general", "section_id": f"s{i}", "chunk_index": i, "text": text,
            "sample_hash": text_hash(text), **extra}


def _variant(seed: int) -> str:
    """BASE with a few words replaced (seed 4: Jaccard 0.84, which plain MinHash LSH at 0.8
    misses; seed 95: Jaccard 0.645 and containment 0.78, which plain LSH flags)."""
    rnd = random.Random(seed)
    words = list(WORDS[:120])
    for _ in range(rnd.randint(1, 6)):
        words[rnd.randrange(len(words))] = "x" + str(rnd.randrange(1000))
    return " ".join(words)


def test_the_borderline_cases_are_what_they_claim():
    assert jaccard(shingle_hashes(BASE), shingle_hashes(_variant(4))) == pytest.approx(0.8413, abs=1e-3)
    assert jaccard(shingle_hashes(BASE), shingle_hashes(_variant(95))) == pytest.approx(0.6454, abs=1e-3)


def test_contamination_is_measured_exactly_not_estimated():
    """A training row at Jaccard 0.84 with an evaluation text is caught (plain LSH missed it);
    one at 0.645 is not dropped (plain LSH flagged it)."""
    index = EvalIndex([_row("e", 0, BASE, split="in_domain")], 0.8)
    caught = index.match(_row("p", 1, _variant(4)))
    assert caught is not None and caught.kind == "near" and caught.jaccard == pytest.approx(0.8413, abs=1e-3)
    assert index.match(_row("p", 2, _variant(95))) is None


def test_an_evaluation_text_inside_a_longer_training_text_is_contamination():
    evaluation = " ".join(WORDS[100:160])
    training = " ".join(WORDS[:400])  # holds the evaluation text word for word, and much more
    hit = EvalIndex([_row("e", 0, evaluation, split="held_out")], 0.8).match(_row("p", 0, training))
    assert hit is not None and hit.kind == "contained" and hit.containment == 1.0 and hit.jaccard < 0.2


def test_duplicates_keep_the_first_occurrence_and_record_every_drop():
    rows = [_row("p", 0, BASE), _row("p", 1, " ".join(WORDS[200:320])), _row("p", 2, BASE + "  \n"),
            _row("p", 3, _variant(4)), _row("p", 4, _variant(95))]
    kept, drops = deduplicate(rows, 0.8)
    assert [r["chunk_index"] for r in kept] == [0, 1, 4]
    assert [(d.kind, d.dropped["chunk_index"], d.kept["chunk_index"]) for d in drops] == [
        ("exact", 2, 0), ("near", 3, 0)]
    assert drops[1].jaccard == pytest.approx(0.8413, abs=1e-3)


def test_evaluation_samples_leave_training_whatever_the_setting_and_are_not_counted_as_contamination():
    domain = [_row("p", i, " ".join(WORDS[i * 30:(i + 1) * 30 + 5])) for i in range(6)]
    in_domain = [{**domain[4], "split": "in_domain"}, {**domain[5], "split": "in_domain"}]
    for drop in (True, False):
        settings = CorpusSettings.load("hero", {"eval": {"drop_contaminated": drop}})
        result = assemble(domain, [], in_domain, settings)
        assert [r["chunk_index"] for r in result.rows] == [0, 1, 2, 3]
        assert result.eval_removed == 2 and result.contamination == [], "a sample is never compared with itself"
        ok, bad = checks.no_eval_in_training(result.rows, in_domain, HERO.mixture.eos)
        assert ok and not bad
    leaked = [{**r, "seq": i, "text": r["text"] + HERO.mixture.eos} for i, r in enumerate(domain)]
    ok, bad = checks.no_eval_in_training(leaked, in_domain, HERO.mixture.eos)
    assert not ok and bad == [4, 5]


def test_every_case_is_listed_beside_the_manifest(tmp_path):
    evaluation = [_row("e", i, f"evaluation text number {i} " + " ".join(WORDS[i:i + 40]), split="in_domain")
                  for i in range(250)]
    domain = [_row("p", i, r["text"]) for i, r in enumerate(evaluation)] + [_row("p", 999, "int main(void) { }")]
    keep = CorpusSettings.load("hero", {"eval": {"drop_contaminated": False}})
    result = assemble(domain, [], evaluation, keep)
    manifest = write_mixture(tmp_path / "mixture", result, keep, {}, "domain_only")
    cases = read_rows(tmp_path / "mixture" / "contamination.parquet")
    assert manifest["contamination"]["found"] == len(cases) == 250 > 200
    assert manifest["contamination"]["kept_on_purpose"] == 250 and not any(c["dropped"] for c in cases)
    assert {c["kind"] for c in cases} == {"exact"}
    assert all(c["train_seq"] >= 0 for c in cases), "kept rows are named by their place in the mixture"
