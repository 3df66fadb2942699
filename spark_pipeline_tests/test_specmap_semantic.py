"""The optional semantic relevance: a real (tiny, randomly initialised) BERT model built from
config and saved as a local model folder, so the embedding, pooling, caching and fusion run
for real without downloading anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_pipeline.specmap.pairs import load_manifest, resolve_pair
from spark_pipeline.specmap.pipeline import run_specmap
from spark_pipeline_tests.conftest import sample_entry, write_manifest


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_minilm")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789_") + [
        "register", "power", "timer", "sleep", "clock", "write", "read", "the", "void", "int"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=300)
    BertModel(config).save_pretrained(str(folder))
    return folder


def _resolved(tmp_path, storage, files: dict[str, str], sheet_text: str):
    repo = tmp_path / "repo"
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    sheet = tmp_path / "sheet.md"
    sheet.write_text(sheet_text)
    entry = sample_entry(id="sem", repository={"path": str(repo)}, datasheets=[str(sheet)])
    return resolve_pair(load_manifest(write_manifest(tmp_path / "m.yaml", [entry]))[0], storage)


REPO = {"src/timer.c": "void timer_start(void) { TMR_CTRL = 1; }\n",
        "src/power.c": "void power_sleep(void) { PWR_CTRL = 2; }\n",
        "src/misc.c": "int add(int a, int b) { return a + b; }\n"}
SHEET = "# 1 Timer\nTMR_CTRL starts the timer.\n# 2 Power\nPWR_CTRL puts the device to sleep.\n"


def test_scorer_embeds_files_once_and_caches_the_vectors(tiny_model, tmp_path, storage, monkeypatch):
    from spark_pipeline.specmap.semantic import SemanticScorer

    resolved = _resolved(tmp_path, storage, REPO, SHEET)
    cache = tmp_path / "cache"
    scorer = SemanticScorer(tiny_model)
    first = run_specmap(resolved, cache_dir=cache, semantic=scorer)
    assert [m.verdict.status for m in first.sections] == ["implemented", "implemented"]
    assert len(list(cache.glob("*.semantic"))) == 1
    vectors = scorer.embed(["timer register", "power sleep"])
    assert tuple(vectors.shape) == (2, 32)
    assert abs(float((vectors * vectors).sum(-1)[0]) - 1.0) < 1e-5, "embeddings are normalised"

    again = SemanticScorer(tiny_model)
    calls = []
    original = again.embed
    monkeypatch.setattr(again, "embed", lambda texts: calls.append(len(texts)) or original(texts))
    run_specmap(resolved, cache_dir=cache, semantic=again)
    assert calls and all(n == 1 for n in calls), "file vectors came from the cache; only sections were embedded"


class _Meaning:
    """A scorer whose similarities are given: tests the fusion rule on its own."""

    name = "given"

    def __init__(self, sims: dict[str, float]):
        self.sims = sims

    def similarities(self, query, index, cache_path=None):
        return self.sims


def test_a_close_match_in_meaning_is_a_candidate_weighed_by_the_model(tmp_path, storage):
    """Semantic relevance is one feature of the file model: a file close in meaning becomes a
    candidate even without words in common, and counts as much as the fitted model weighs it
    (the shipped model was fitted without it: weight 0, nothing changes)."""
    from dataclasses import replace

    from spark_pipeline.specmap.model import load

    resolved = _resolved(tmp_path, storage, REPO, SHEET)
    plain = run_specmap(resolved)
    meaning = _Meaning({"src/timer.c": 0.2, "src/power.c": 0.2, "src/misc.c": 0.9})
    shipped = load()
    off = run_specmap(resolved, semantic=meaning, model=shipped)
    assert "src/misc.c" in {p for p, _, _ in off.sections[0].candidates}
    assert [[f.path for f in m.files] for m in off.sections] == [[f.path for f in m.files] for m in plain.sections]
    weights = tuple(8.0 if f == "semantic" else w for f, w in zip(shipped.features, shipped.weights, strict=True))
    on = run_specmap(resolved, semantic=meaning, model=replace(shipped, weights=weights, gate=None, min_name_share=0.0))
    assert "src/misc.c" in {f.path for f in on.sections[0].files}


def test_without_the_extra_the_error_says_how_to_get_it(monkeypatch):
    import importlib.util

    from spark_pipeline.specmap import semantic

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(semantic.SemanticError, match=r"pip install -e '\.\[semantic\]'"):
        semantic.default_model_dir()
