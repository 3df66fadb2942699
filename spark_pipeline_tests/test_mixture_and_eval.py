import json

import pytest

from spark_pipeline.corpus import checks
from spark_pipeline.corpus.evalsets import evaluation_sets, select_in_domain
from spark_pipeline.corpus.mixture import assemble, general_samples, truncate, write_mixture
from spark_pipeline.corpus.parquet import read_lineage, read_rows
from spark_pipeline.corpus.settings import CorpusSettings
from spark_pipeline.corpus.stages import text_hash
from spark_pipeline.records import sha256_file
from spark_pipeline.settings import SAMPLE_DIR

HERO = CorpusSettings.load("hero")


def _sample(pair, i, text=None, category="stm32_hal"):
    text = text or f"int function_{pair}_{i}(void) {{ return {i}; /* sample {i} of {pair} with its own words */ }}\n"
    return {"pair_id": pair, "category": category, "section_id": f"s{i}", "chunk_index": i, "text": text,
            "sample_hash": text_hash(text)}


def test_paper_values():
    m = HERO.mixture
    assert (m.max_tokens, m.chars_per_token, m.eos, m.recipe, m.max_chars) == (2048, 4.0, "<|endoftext|>",
                                                                                "domain_only", 8192)
    assert (HERO.eval.in_domain_samples, HERO.eval.tail_shards) == (2270, 2)


def test_truncation_at_boundaries():
    text = "a" * 8000 + ";\n" + "b" * 500
    cut, was_cut = truncate(text, 8192)
    assert was_cut and cut == "a" * 8000 + ";\n" and len(cut) <= 8192
    text = ("word " * 1500) + ". " + "tail " * 400
    cut, _ = truncate(text, 8192)
    assert cut.endswith(".")
    assert truncate("short", 8192) == ("short", False)
    assert truncate("x" * 9000, 8192) == ("x" * 8192, True), "no boundary: a hard cut"


def test_order_is_preserved_and_recorded_and_eos_appended():
    domain = [_sample("p1", i) for i in range(5)] + [_sample("p2", i) for i in range(3)]
    result = assemble(domain, [], [], HERO)
    assert [(r["pair_id"], r["chunk_index"]) for r in result.rows] == [(d["pair_id"], d["chunk_index"]) for d in domain]
    assert [r["seq"] for r in result.rows] == list(range(8))
    assert all(r["text"].endswith("<|endoftext|>") and r["source"] == "domain" for r in result.rows)


def test_long_samples_are_split_into_rows_not_cut():
    """A sample over 2,048 tokens of 4 characters becomes several rows at line boundaries;
    nothing is lost (cutting lost everything after 8,192 characters)."""
    text = "".join(f"int x_{i} = {i};\n" for i in range(900))  # about 16,000 characters
    result = assemble([_sample("p", 0, text)], [], [], HERO)
    assert len(result.rows) == 2 and result.split_samples == 1 and result.truncated == 0 and not result.duplicates
    assert all(len(r["text"]) <= 8192 + len("<|endoftext|>") for r in result.rows)
    assert "".join(r["text"].removesuffix("<|endoftext|>") for r in result.rows) == text
    assert [r["section_id"] for r in result.rows] == ["s0~1", "s0~2"]


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_domain_general_interleaves_deterministically(fraction):
    domain = [_sample("p", i) for i in range(40)]
    general = [_sample("general_pool", i, category="general") for i in range(100)]
    a = assemble(domain, general, [], HERO, "domain_general", fraction)
    b = assemble(domain, general, [], HERO, "domain_general", fraction)
    assert [r["text"] for r in a.rows] == [r["text"] for r in b.rows]
    assert a.general_achieved == pytest.approx(fraction, abs=0.02)
    positions = [i for i, r in enumerate(a.rows) if r["source"] == "general"]
    gaps = [y - x for x, y in zip(positions, positions[1:], strict=False)]
    assert max(gaps) - min(gaps) <= 1, "general samples are spread evenly"
    domain_order = [r["chunk_index"] for r in a.rows if r["source"] == "domain"]
    assert domain_order == list(range(40))


def test_small_general_pool_reports_the_achieved_fraction():
    domain = [_sample("p", i) for i in range(40)]
    result = assemble(domain, [_sample("general_pool", 0, category="general")], [], HERO, "domain_general", 0.5)
    assert result.general_requested == 0.5 and result.general_achieved == pytest.approx(1 / 41)


def test_bad_recipes_are_refused():
    with pytest.raises(ValueError, match="unknown mixture recipe"):
        assemble([], [], [], HERO, "shuffled")
    with pytest.raises(ValueError, match="general_fraction"):
        assemble([], [], [], HERO, "domain_general", 0.0)


def test_general_pool_from_the_sample():
    rows = general_samples(SAMPLE_DIR / "general_c", HERO)
    assert len(rows) >= 4 and {r["category"] for r in rows} == {"general"}
    assert all(50 <= len(r["text"]) <= 7500 for r in rows)


def test_in_domain_comes_from_the_tail_shards_per_category():
    settings = CorpusSettings.load("hero", {"eval": {"in_domain_samples": 4, "category_shard_rows": 10,
                                                     "max_fraction": 0.5}})
    samples = [_sample("p", i, category="stm32_hal") for i in range(50)] + \
              [_sample("q", i, category="crypto") for i in range(8)]
    chosen = select_in_domain(samples, settings.eval)
    by_cat = {}
    for r in chosen:
        by_cat.setdefault(r["category"], []).append(r["chunk_index"])
    assert len(by_cat["stm32_hal"]) == 2 and all(i >= 30 for i in by_cat["stm32_hal"]), "last two shards only"
    assert len(by_cat["crypto"]) == 2
    strict = CorpusSettings.load("hero", {"eval": {"in_domain_samples": 100, "category_shard_rows": 10,
                                                   "max_fraction": 0.1}})
    capped = select_in_domain(samples, strict.eval)
    assert sum(r["category"] == "stm32_hal" for r in capped) == 5 and not any(r["category"] == "crypto" for r in capped)
    assert select_in_domain(samples, settings.eval) == chosen, "deterministic"


def test_contamination_exact_and_near_duplicates_are_dropped_or_reported():
    base = ("static int spi_transfer(uint8_t *buffer, int length) { for (int i = 0; i < length; i++) "
            "{ SPI1->DR = buffer[i]; while (!(SPI1->SR & SPI_SR_RXNE)) {} buffer[i] = SPI1->DR; } return 0; }\n")
    near = base.replace("return 0;", "return 1;")
    eval_rows = [{**_sample("e", 0, base), "split": "in_domain"}]
    domain = [_sample("p", 0, base), _sample("p", 1, near), _sample("p", 2)]
    result = assemble(domain, [], eval_rows, HERO)
    assert [(d.kind, d.dropped["chunk_index"], d.kept["chunk_index"]) for d in result.duplicates] == [("near", 1, 0)]
    assert [(c.kind, c.train["chunk_index"]) for c in result.contamination] == [("exact", 0)]
    assert result.dropped_contaminated == 1 and [r["chunk_index"] for r in result.rows] == [2]
    keep = CorpusSettings.load("hero", {"eval": {"drop_contaminated": False}})
    reported = assemble(domain, [], eval_rows, keep)
    assert len(reported.contamination) == 1 and [r["chunk_index"] for r in reported.rows] == [0, 2]


UART = ("static void uart_send(USART_TypeDef *uart, const char *data, size_t len) { for (size_t i = 0; i < len; i++) "
        "{ while (!(uart->SR & USART_SR_TXE)) {} uart->DR = (uint8_t)data[i]; } while (!(uart->SR & USART_SR_TC)) "
        "{} } /* the baud rate register holds the mantissa and the fraction of USARTDIV; the transmitter "
        "is enabled with TE in control register 1, the receiver with RE, and the whole USART with UE */\n")


def test_held_out_drops_text_a_training_pair_produced_and_the_sets_are_disjoint():
    """A held-out sample that a training pair's sample copies, nearly copies or contains is
    dropped from held-out, named with the closest such sample; text of its own stays. So no
    text is in both sets (every in-domain sample is a training pair's)."""
    settings = CorpusSettings.load("hero", {"eval": {"in_domain_samples": 10, "category_shard_rows": 2,
                                                     "max_fraction": 1.0}})
    domain = [_sample("hal", i) for i in range(4)] + [_sample("hal", 4, UART)]
    held = [_sample("fork", 0, domain[3]["text"]),                     # the same datasheet text
            _sample("fork", 1, UART.replace("uint8_t", "char")),       # a near copy
            _sample("fork", 2, UART[: len(UART) * 3 // 5] + "\n"),     # inside a training pair's text
            _sample("fork", 3)]                                        # its own text
    sets = evaluation_sets(domain, held, settings.eval)
    assert [r["chunk_index"] for r in sets.held_out] == [3]
    assert [(d.kind, d.dropped["chunk_index"], d.kept["chunk_index"]) for d in sets.held_out_shared] == \
        [("exact", 0, 3), ("near", 1, 4), ("contained", 2, 4)]
    assert {(r["pair_id"], r["chunk_index"]) for r in sets.in_domain} == {("hal", 2), ("hal", 3), ("hal", 4)}
    assert not {r["text"] for r in sets.in_domain} & {r["text"] for r in sets.held_out}
    assert evaluation_sets(domain, held, settings.eval).held_out_shared == sets.held_out_shared, "deterministic"
    alone = evaluation_sets([], held, settings.eval)
    assert len(alone.held_out) == 4 and not alone.held_out_shared and not alone.in_domain


def test_contamination_check_covers_the_held_out_set():
    """Training rows copying a held-out text are found like those copying an in-domain one:
    a domain row that nearly copies it, a general C row that is it."""
    crc = ("uint32_t crc32(const uint8_t *data, size_t len) { uint32_t crc = 0xFFFFFFFFu; while (len--) { crc ^= "
           "*data++; for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & -(crc & 1u)); } return ~crc; }\n")
    eval_rows = [{**_sample("held", 0, UART), "split": "held_out"}, {**_sample("held", 1, crc), "split": "held_out"}]
    domain = [_sample("p", 0, UART.replace("uint8_t", "char"))] + [_sample("p", i) for i in range(1, 4)]
    general = [_sample("general_pool", 0, crc, category="general")]
    result = assemble(domain, general, eval_rows, HERO, "domain_general", 0.2)
    assert sorted((c.kind, c.train["pair_id"], c.evaluation["split"]) for c in result.contamination) == \
        [("exact", "general_pool", "held_out"), ("near", "p", "held_out")]
    assert result.dropped_contaminated == 2 and [r["chunk_index"] for r in result.rows] == [1, 2, 3]


def test_shards_manifest_and_byte_identical_rewrite(tmp_path):
    settings = CorpusSettings.load("hero", {"mixture": {"shard_rows": 3}})
    result = assemble([_sample("p", i) for i in range(8)], [], [], settings)
    manifest = write_mixture(tmp_path / "mixture", result, settings, {"quality_samples": {"p": "abc"}}, "domain_only")
    assert [s["rows"] for s in manifest["shards"]] == [3, 3, 2]
    for shard in manifest["shards"]:
        path = tmp_path / "mixture" / shard["file"]
        assert sha256_file(path) == shard["sha256"]
        assert read_lineage(path) == {"quality_samples": {"p": "abc"}}
    seqs = [r["seq"] for s in manifest["shards"] for r in read_rows(tmp_path / "mixture" / s["file"])]
    assert checks.seq_strictly_increasing(seqs)[0]
    first = {s["file"]: (tmp_path / "mixture" / s["file"]).read_bytes() for s in manifest["shards"]}
    again = write_mixture(tmp_path / "mixture", assemble([_sample("p", i) for i in range(8)], [], [], settings),
                          settings, {"quality_samples": {"p": "abc"}}, "domain_only")
    assert again["mixture_hash"] == manifest["mixture_hash"]
    assert {s["file"]: (tmp_path / "mixture" / s["file"]).read_bytes() for s in again["shards"]} == first
    on_disk = json.loads((tmp_path / "mixture" / "manifest.json").read_text())
    assert on_disk["samples"] == 8 and on_disk["estimated_tokens"] == int(on_disk["characters"] / 3.5)
    assert not list(tmp_path.glob(".mixture*")), "no temporary folders left"


def test_checks_fail_on_broken_data():
    rows = [{"seq": 0, "text": "a<|endoftext|>", "sample_hash": "h0", "pair_id": "p", "section_id": "s",
             "chunk_index": 0},
            {"seq": 2, "text": "b", "sample_hash": "h1", "pair_id": "p", "section_id": "s", "chunk_index": 1}]
    assert checks.rows_end_with_eos(rows, "<|endoftext|>") == (False, [2])
    assert checks.seq_strictly_increasing([0, 2, 2, 5]) == (False, [2])
    assert checks.seq_strictly_increasing([0, 1, 7]) == (True, [])
    eval_rows = [{"sample_hash": "h1", "text": "other", "pair_id": "e", "section_id": "s", "chunk_index": 0},
                 {"sample_hash": text_hash("a"), "text": "a", "pair_id": "e", "section_id": "s", "chunk_index": 1}]
    assert checks.no_eval_in_training(rows, eval_rows, "<|endoftext|>") == (False, [0, 2])
    ok, bad = checks.samples_within_bounds([{"pair_id": "p", "section_id": "s", "chunk_index": 0, "text": "x" * 49}],
                                           50, 7500)
    assert not ok and "49 chars" in bad[0]
