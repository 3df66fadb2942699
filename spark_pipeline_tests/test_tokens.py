"""Tokenizer, tokenized cache and packing, with a small OLMo-3 model for the isolation test."""

import os
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
import torch

from spark_pipeline.corpus.parquet import MIXTURE_SCHEMA, write_table
from spark_pipeline.records import atomic_write_json
from spark_pipeline.tokens.cache import (
    IGNORE_INDEX,
    CacheError,
    PackedDataset,
    build_cache,
    pack_plan,
    verify_order,
    wait_for_cache,
)
from spark_pipeline.tokens.tokenizer import DOLMA2_EOS, DOLMA2_PAD, DOLMA2_VOCAB, load_tokenizer

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2,
        "num_key_value_heads": 2, "vocab_size": DOLMA2_VOCAB, "max_position_embeddings": 512, "sliding_window": 64,
        "full_attention_every": 4, "rope_theta": 500000.0, "pad_token_id": DOLMA2_PAD, "eos_token_id": DOLMA2_EOS}


def _mixture(folder, texts, shard_rows=3):
    rows = [{"seq": i, "text": t + "<|endoftext|>", "category": "general", "source": "domain", "pair_id": "p",
             "section_id": "s", "chunk_index": i, "sample_hash": str(i), "truncated": False} for i, t in enumerate(texts)]
    shards = []
    for k in range(0, len(rows), shard_rows):
        name = f"shard-{k // shard_rows:05d}.parquet"
        write_table(folder / name, rows[k:k + shard_rows], MIXTURE_SCHEMA)
        shards.append({"file": name, "rows": len(rows[k:k + shard_rows])})
    atomic_write_json(folder / "manifest.json", {"mixture_hash": f"h{len(texts)}", "shards": shards})
    return folder


def test_dolma2_offline_ids():
    tok = load_tokenizer()
    assert (tok.eos_id, tok.pad_id, tok.vocab_size) == (100257, 100277, 100278)
    ids = tok.encode_documents(["int main(void) { return 0; }<|endoftext|>"])[0]
    assert ids[-1] == 100257 and tok.decode(ids[:-1]) == "int main(void) { return 0; }"
    assert tok.encode_documents(["<|endoftext|>"]) == [[100257]]


def test_special_token_text_in_source_is_text():
    """A literal <|endoftext|> in a C comment is not an end of document (it was: the document
    ended mid-file, and an endswith-only check passed); only the appended EOS is special."""
    tok = load_tokenizer()
    source = "/* a stray <|endoftext|> and a <|pad|> */\nint x;\n"
    ids = tok.encode_documents([source + "<|endoftext|>"])[0]
    assert ids.count(tok.eos_id) == 1 and ids[-1] == tok.eos_id and tok.pad_id not in ids
    assert tok.decode(ids[:-1]) == source


def test_dolma2_offline_matches_the_real_tokenizer_when_present():
    from pathlib import Path

    real = Path(os.environ.get("SPARK_REFERENCE_DIR", "/nonexistent")) / "dolma2-tokenizer.json"
    if not real.exists():
        pytest.skip("$SPARK_REFERENCE_DIR does not hold dolma2-tokenizer.json (OLMo-3's tokenizer)")
    ours, theirs = load_tokenizer(), load_tokenizer(f"hf:{real}")
    code = (Path(__file__).resolve().parents[1] / "spark_pipeline" / "sample" / "repos" / "imu_driver" / "src"
            / "skm6.c").read_text()
    assert ours.encode_documents([code + "<|endoftext|>"]) == theirs.encode_documents([code + "<|endoftext|>"])
    tricky = "/* <|endoftext|> and <|pad|> in a comment */ int x;"
    assert ours.encode(tricky) == theirs.encode(tricky), "special-token text is text for both"


def test_cache_order_truncation_key_and_done(tmp_path):
    texts = [f"sample {i} " + "word " * (3 + 7 * i) for i in range(12)] + ["x = 1;\n" * 900]  # the last is long
    mix = _mixture(tmp_path / "mix", texts)
    (tmp_path / "mix").mkdir(exist_ok=True)
    info = build_cache(mix, tmp_path / "tokens", max_length=256, workers=2, batch_size=2)
    assert info.samples == 13 and info.truncated == 0 and info.split_samples == 1 and info.hard_splits == 0
    table = pa.ipc.open_file(pa.memory_map(f"{info.path}/tokens.arrow")).read_all()
    indices = table.column("sample_idx").to_pylist()
    assert indices[:12] == list(range(12)) and set(indices[12:]) == {12}, "order verified, restored if needed"
    ids = table.column("input_ids").to_pylist()
    tok = load_tokenizer()
    assert ids[0] == tok.encode_documents([texts[0] + "<|endoftext|>"])[0]
    long_rows = ids[12:]
    assert len(long_rows) == info.rows - 12 > 1 and all(len(r) <= 256 for r in long_rows)
    whole = tok.encode_documents([texts[12] + "<|endoftext|>"])[0]
    assert [t for r in long_rows for t in r] == whole, "split, not truncated: every token kept"
    assert [r.count(DOLMA2_EOS) for r in long_rows] == [0] * (len(long_rows) - 1) + [1]
    assert all("\n" in tok.decode([r[-1]]) for r in long_rows[:-1]), "each piece ends with a line end"
    assert (tmp_path / "tokens" / info.key / ".done").exists()
    again = build_cache(mix, tmp_path / "tokens", max_length=256, workers=1)
    assert again.key == info.key and again.seconds == info.seconds, "a finished cache is reused"
    other = build_cache(mix, tmp_path / "tokens", max_length=512, workers=1)
    assert other.key != info.key


def test_verify_order():
    assert verify_order([0, 1, 2, 3])
    assert not verify_order([1, 0, 2, 3]) and not verify_order([0, 1, 3]) and not verify_order([0, 2, 1, 3])


def test_missing_mixture_says_what_to_do(tmp_path):
    with pytest.raises(CacheError, match="materialize training_mixture first"):
        build_cache(tmp_path / "nothing", tmp_path / "tokens")


def test_other_ranks_wait_by_polling_the_done_marker(tmp_path, caplog):
    folder = tmp_path / "cache"
    folder.mkdir()
    threading.Timer(0.3, lambda: (folder / ".done").write_text("k")).start()
    t0 = time.monotonic()
    wait_for_cache(folder, poll_s=0.05, log_every_s=0.1)
    assert 0.25 < time.monotonic() - t0 < 5
    with pytest.raises(CacheError, match="not ready"):
        wait_for_cache(tmp_path / "never", poll_s=0.01, timeout_s=0.05)


def test_packing_keeps_documents_whole_and_in_order():
    plan = pack_plan(np.array([5, 4, 3, 8, 1]), 10)
    assert plan.tolist() == [0, 2, 3, 5]
    with pytest.raises(CacheError, match="more than a row"):
        pack_plan(np.array([11]), 10)


def _cache_for(tmp_path, texts, seq_len=64):
    info = build_cache(_mixture(tmp_path / "mix", texts), tmp_path / "tokens", max_length=seq_len)
    return PackedDataset(info.path, seq_len, DOLMA2_PAD)


def test_packed_rows_positions_labels_and_efficiency(tmp_path):
    (tmp_path / "mix").mkdir()
    ds = _cache_for(tmp_path, ["alpha beta gamma", "delta epsilon", "zeta eta theta iota kappa"])
    row = ds[0]
    lengths = ds.lengths.tolist()
    starts = np.cumsum([0] + lengths[:-1])
    assert row["position_ids"][starts].tolist() == [0, 0, 0]
    assert all(row["labels"][s] == IGNORE_INDEX for s in starts[1:]), "no document predicts the next one"
    total = sum(lengths)
    assert (row["input_ids"][total:] == DOLMA2_PAD).all() and (row["labels"][total:] == IGNORE_INDEX).all()
    assert ds.efficiency == pytest.approx(total / 64)


def test_a_token_cannot_attend_across_a_document_boundary(tmp_path):
    """Logits of the second document are the same packed behind the first as alone, and
    change when the first document changes only if isolation is broken."""
    from spark_pipeline.training.model import build_base_model

    model = build_base_model(TINY, seed=0).eval()
    tok = load_tokenizer()
    doc_a = tok.encode_documents(["static int counter = 0;<|endoftext|>"])[0]
    doc_a2 = tok.encode_documents(["void reset_all_the_things(void) {}<|endoftext|>"])[0]
    doc_b = tok.encode_documents(["int add(int x, int y) { return x + y; }<|endoftext|>"])[0]

    def logits_of_b(prefix):
        ids = torch.tensor([prefix + doc_b])
        pos = torch.tensor([list(range(len(prefix))) + list(range(len(doc_b)))])
        with torch.no_grad():
            out = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        return out[0, len(prefix):]

    with torch.no_grad():
        alone = model(input_ids=torch.tensor([doc_b]), use_cache=False).logits[0]
    packed = logits_of_b(doc_a)
    assert torch.allclose(packed, alone, atol=1e-5)
    assert torch.allclose(logits_of_b(doc_a2), alone, atol=1e-5)
    # without document positions the same row leaks: the test can see a broken isolation
    ids = torch.tensor([doc_a + doc_b])
    with torch.no_grad():
        leaky = model(input_ids=ids, use_cache=False).logits[0, len(doc_a):]
    assert not torch.allclose(leaky, alone, atol=1e-4)


def test_paper_lora_on_olmo3_7b_has_1_386_141_696_trainable_parameters():
    from spark_pipeline.config import load_config
    from spark_pipeline.training.model import (
        LoraSettings,
        add_adapters,
        build_base_model,
        trainable_parameters,
    )

    cfg = load_config("hero")["training"]
    with torch.device("meta"):
        base = build_base_model(cfg["model"]["shape"], seed=0)
    assert sum(p.numel() for p in base.parameters()) == 7_298_011_136
    lora = cfg["lora"]
    settings = LoraSettings(lora["r"], lora["alpha"], lora["dropout"], lora["use_rslora"])
    model = add_adapters(base, settings)
    assert trainable_parameters(model) == 1_386_141_696
    assert settings.scale == pytest.approx(45.2548, abs=1e-4)
    names = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                     "embed_tokens", "lm_head"}
