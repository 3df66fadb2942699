"""Spec-conditioned completion: items from the held-out pairs' mapping files (eval_sets), the
mixture's contamination check over them, the two prompts, the identifier rule, and the gain
with its paired intervals."""

import json

import dagster as dg
import numpy as np
import pytest

from spark_pipeline.corpus.parquet import SPEC_ITEM_SCHEMA, read_rows, write_table
from spark_pipeline.corpus.settings import CorpusSettings
from spark_pipeline.corpus.specitems import cut_code, parse_section, section_items, spec_conditioned_items
from spark_pipeline.corpus.stages import text_hash
from spark_pipeline.definitions import defs
from spark_pipeline.evaluation import stats
from spark_pipeline.evaluation.settings import EvalSettings
from spark_pipeline.evaluation.speccond import hardware_identifiers, load_items, summarise
from spark_pipeline_tests.conftest import dagster_resources, sample_entry, write_manifest

SEP = "=" * 82
SETTINGS = CorpusSettings.load("demo")
MAPPING = f"""{SEP}
Section 1: Control register (0x00)
Source: engine.md
Status: implemented
Folders: src

ENG_CTRL at offset 0x00 enables the engine with EN (bit 0); MODE (bits 2:1) selects the operation.

// File: src/engine.c
void eng_enable(uint32_t mode)
{{
    ENG->CTRL = 0U;
    ENG->CTRL = ENG_CTRL_EN | (mode << 1);
    while (!(ENG->STAT & ENG_STAT_RDY)) {{
    }}
}}

{SEP}
Section 2: Electrical characteristics
Source: engine.md
Status: not_applicable (electrical)

The engine runs from a 3.3 V supply and draws 4 mA while it computes a block.

{SEP}
Section 3: Status register (0x04)
Source: engine.md
Status: not_implemented

RDY (bit 0) is set when the engine is idle and ready for the next command word.

{SEP}
Section 4: Interrupts
Source: engine.md
Status: partial
Folders: src

(no text)

// File: src/engine.c
void eng_irq(void)
{{
    ENG->ICR = 0x1U;
    ENG->IER |= (1UL << 3);
}}
"""


def test_a_mapping_section_splits_into_text_and_code_and_only_mapped_sections_with_text_make_items():
    blocks = MAPPING.split(SEP + "\n")[1:]
    first = parse_section(blocks[0].strip("\n"))
    assert (first.section_id, first.status, first.files) == ("1", "implemented", ["src/engine.c"])
    assert first.text.startswith("ENG_CTRL at offset") and first.code.startswith("// File: src/engine.c")
    items = section_items(MAPPING.encode(), "eng", "crypto", SETTINGS.eval.spec_conditioned, SETTINGS.cleaning)
    # section 2 has no code (not applicable), 3 is not implemented, 4 has no datasheet text
    assert [i["section_id"] for i in items] == ["1"]
    item = items[0]
    assert item["section_text"] == ("Section 1: Control register (0x00)\n\nENG_CTRL at offset 0x00 enables the engine "
                                    "with EN (bit 0); MODE (bits 2:1) selects the operation.")
    assert "Status" not in item["section_text"] and "Folders" not in item["section_text"], "SpecMap's findings stay out"
    assert item["text"] == item["code_prefix"] + item["reference"] and item["sample_hash"] == text_hash(item["text"])
    assert item["code_prefix"].endswith("\n") and item["reference"].strip()
    assert cut_code("a\nb\nc\nd", 0.5) == ("a\nb\n", "c\nd") and cut_code("a\nb", 0.99) == ("a\n", "b")


def test_items_a_training_pair_produced_or_repeating_another_are_dropped_and_the_cap_holds():
    twice = MAPPING + f"\n{SEP}\nSection 5: Enable sequence\nSource: engine.md\nStatus: implemented\n\n" \
        "Write zero to ENG_CTRL, then set EN with the mode and wait for RDY in the status register.\n\n" + \
        MAPPING.split("Folders: src\n\n", 1)[1].split("\n\n", 1)[1].split(SEP)[0]
    sc = SETTINGS.eval.spec_conditioned
    made = spec_conditioned_items({"eng": (twice.encode(), "crypto")}, [], sc, SETTINGS.cleaning, 0.8, 128)
    assert [i["section_id"] for i in made.items] == ["1"] and [d.dropped["section_id"] for d in made.duplicates] == ["5"]
    code = made.items[0]["text"]
    training = [{"pair_id": "trained", "section_id": "9", "chunk_index": 0, "text": "/* copied */\n" + code,
                 "sample_hash": text_hash(code)}]
    shared = spec_conditioned_items({"eng": (twice.encode(), "crypto")}, training, sc, SETTINGS.cleaning, 0.8, 128)
    assert not shared.items and {d.kept["pair_id"] for d in shared.shared} == {"trained"}
    capped = spec_conditioned_items({"eng": (twice.encode(), "crypto")}, [],
                                    sc.model_copy(update={"max_items_per_pair": 0}), SETTINGS.cleaning, 0.8, 128)
    assert not capped.items and capped.capped == 1


def test_the_identifier_rule():
    code = ("#define AES_CR_CHMOD_CBC (1UL << AES_CR_CHMOD_Pos) /* CBC MODE, not counted */\n"
            "#define AES_BASE 0x50060000UL\n"
            "AES->CR |= AES_CR_CCFC; x = 0x0040u; if (p == NULL) return 1U<<7; uint32_t v; AES_TypeDef *a;\n")
    assert hardware_identifiers(code) == {"AES_CR_CHMOD_CBC", "1<<AES_CR_CHMOD_Pos", "AES_CR_CHMOD_Pos", "AES_BASE",
                                          "0x50060000", "AES", "CR", "AES_CR_CCFC", "0x40", "1<<7", "AES_TypeDef"}
    assert hardware_identifiers("for (int i = 0; i < n; i++) { total += buffer[i]; }") == set()


def _records(model, values):
    """Records of ``model``: per item id, (token accuracy, identifier match, compiles) with and without."""
    out = []
    for item, conditions in values.items():
        for condition, (acc, ident, ok) in zip(("with_section", "without_section"), conditions, strict=True):
            out.append({"model": model, "condition": condition, "category": "crypto" if item < 3 else "hal",
                        "sample_id": f"i{item}", "token_accuracy": acc, "ident_match": ident, "compiles": ok})
    return out


def test_gain_columns_and_paired_intervals_on_a_constructed_case():
    base = _records("base", {0: ((0.5, 0.5, None), (0.25, 0.0, None)), 1: ((0.25, 1.0, None), (0.25, 1.0, None)),
                             2: ((0.75, None, None), (0.5, None, None)), 3: ((0.0, 0.0, None), (0.0, 0.5, None))})
    adapter = _records("adapter:hero.x--checkpoint-2", {
        0: ((1.0, 1.0, True), (0.25, 0.0, False)), 1: ((0.5, 1.0, True), (0.5, 0.5, True)),
        2: ((0.75, None, None), (0.25, None, None)), 3: ((0.5, 1.0, None), (0.0, 0.0, None))})
    rows = {(r["model"], r["category"]): r for r in summarise(base + adapter, resamples=300)}
    assert set(rows) == {(m, c) for m in ("base", "adapter:hero.x--checkpoint-2") for c in ("all", "crypto", "hal")}
    b, a = rows[("base", "all")], rows[("adapter:hero.x--checkpoint-2", "all")]
    assert b["items"] == a["items"] == 4
    assert b["token_accuracy_with"] == pytest.approx(0.375) and b["token_accuracy_without"] == pytest.approx(0.25)
    assert b["token_accuracy_gain"] == pytest.approx(0.125)
    assert a["token_accuracy_gain"] == pytest.approx((0.75 + 0 + 0.5 + 0.5) / 4)
    # identifier match only over items whose reference has identifiers (item 2 has none)
    assert a["ident_match_items"] == 3 and a["ident_match_gain"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert b["ident_match_gain"] == pytest.approx((0.5 + 0 - 0.5) / 3)
    # compile rate only over items whose own code compiles (the adapter's records say so for 0 and 1; the base: none)
    assert a["compile_rate_items"] == 2 and a["compile_rate_gain"] == pytest.approx(0.5)
    assert b["compile_rate_items"] == 0 and np.isnan(b["compile_rate_gain"]) and np.isnan(b["compile_rate_gain_lo"])
    # the intervals are stats.paired over the same items, seed 0
    acc_with, acc_without = [1.0, 0.5, 0.75, 0.5], [0.25, 0.5, 0.25, 0.0]
    assert (a["token_accuracy_gain_lo"], a["token_accuracy_gain_hi"]) == stats.paired(
        stats.mean_statistic(acc_with), stats.mean_statistic(acc_without), 4, 300, 0)
    assert a["token_accuracy_gain_lo"] <= a["token_accuracy_gain"] <= a["token_accuracy_gain_hi"]
    # the adapter's gain against the base's, paired over the same items
    mine, theirs = [0.75, 0.0, 0.5, 0.5], [0.25, 0.0, 0.25, 0.0]
    assert a["token_accuracy_gain_vs_base"] == pytest.approx(np.mean(mine) - np.mean(theirs))
    assert (a["token_accuracy_gain_vs_base_lo"], a["token_accuracy_gain_vs_base_hi"]) == stats.paired(
        stats.mean_statistic(mine), stats.mean_statistic(theirs), 4, 300, 0)
    assert np.isnan(b["token_accuracy_gain_vs_base"]), "the base has no gain against itself"
    hal = rows[("adapter:hero.x--checkpoint-2", "hal")]
    assert hal["items"] == 1 and np.isnan(hal["token_accuracy_gain_lo"]), "one item: no interval"


@pytest.fixture
def corpus(storage, tmp_path):
    """The real stages through a Dagster instance: one training pair, one held-out pair."""
    with dg.instance_for_test() as instance:
        resources = dagster_resources(storage)
        manifest = write_manifest(tmp_path / "pairs.yaml", [sample_entry("skm6_imu_i2c"),
                                                           sample_entry("aes128_accelerator")])

        def run(selection, partition=None, run_config=None):
            return dg.materialize(list(defs.assets), selection=selection, partition_key=partition, instance=instance,
                                  resources=resources, run_config=run_config or {}, raise_on_error=False)

        assert run(["repo_datasheet_pairs"],
                   run_config={"ops": {"repo_datasheet_pairs": {"config": {"manifest": str(manifest)}}}}).success
        for pair in ("skm6_imu_i2c", "aes128_accelerator"):
            assert run(["specmap_mappings", "section_chunks", "quality_samples"], pair).success
        ev = run(["eval_sets"])
        assert ev.success
        yield {"run": run, "eval": ev, "storage": storage}


def test_items_come_only_from_held_out_pairs_and_the_prompts_differ_only_by_the_section(corpus):
    storage = corpus["storage"]
    eval_dir = storage / "corpus" / "eval"
    items = read_rows(eval_dir / "spec_conditioned.parquet")
    registry = json.loads((storage / "pairs" / "registry.json").read_text())
    assert items and {i["pair_id"] for i in items} == set(registry["held_out"]) == {"aes128_accelerator"}
    trained = section_items((storage / "specmap" / "skm6_imu_i2c" / "mapping.txt").read_bytes(), "skm6_imu_i2c",
                            "register_defines", SETTINGS.eval.spec_conditioned, SETTINGS.cleaning)
    assert trained, "the training pair's mapping would give items: the held-out rule is what keeps them out"
    assert all(i["split"] == "spec_conditioned" and i["text"] == i["code_prefix"] + i["reference"] for i in items)
    summary = json.loads((eval_dir / "eval.json").read_text())
    assert summary["spec_conditioned"]["items"] == len(items) and "spec_conditioned" in summary["sha256"]
    meta = corpus["eval"].asset_materializations_for_node("eval_sets")[0].metadata
    assert meta["spec_conditioned_items"].value == len(items)

    from spark_pipeline.tokens.tokenizer import load_tokenizer

    tok = load_tokenizer("dolma2-offline")
    ev = EvalSettings.load("demo")
    loaded = load_items(eval_dir, tok, ev)
    assert 0 < len(loaded) <= ev.spec_conditioned.items_per_category
    for item in loaded:
        with_, without = item["prompts"]["with_section"], item["prompts"]["without_section"]
        assert with_ == item["section_ids"] + without, "the same code tokens, after the section's"
        assert tok.decode(item["section_ids"]).startswith(item["section_text"][:40])
        assert without == tok.encode(item["code_prefix"])[-ev.spec_conditioned.max_prefix_tokens:]
        assert item["reference_ids"] == tok.encode(item["reference"])[: ev.max_new_tokens]


def test_the_mixture_checks_training_rows_against_the_spec_conditioned_split(corpus):
    """A training row that copies an item's code is contamination (eval split spec_conditioned)
    and is dropped; evaluation sets without the split are refused."""
    storage, run = corpus["storage"], corpus["run"]
    eval_dir = storage / "corpus" / "eval"
    samples = read_rows(storage / "corpus" / "samples" / "skm6_imu_i2c.parquet")
    items = read_rows(eval_dir / "spec_conditioned.parquet")
    # an item whose code is a training sample's text, as a held-out repository copying a trained one would give
    victim = samples[-1]
    planted = {**items[0], "chunk_index": 99, "text": victim["text"], "sample_hash": text_hash(victim["text"])}
    write_table(eval_dir / "spec_conditioned.parquet", items + [planted], SPEC_ITEM_SCHEMA)
    mix = run(["training_mixture"])
    assert mix.success
    cases = read_rows(storage / "corpus" / "mixture" / "contamination.parquet")
    assert [(c["eval_split"], c["eval"], c["dropped"]) for c in cases if c["eval_split"] == "spec_conditioned"] == \
        [("spec_conditioned", "aes128_accelerator:" + planted["section_id"] + "#99", True)]
    manifest = json.loads((storage / "corpus" / "mixture" / "manifest.json").read_text())
    rows = [r for s in manifest["shards"] for r in read_rows(storage / "corpus" / "mixture" / s["file"])]
    assert victim["sample_hash"] not in {r["sample_hash"] for r in rows}
    checks = {e.check_name: e.passed for e in mix.get_asset_check_evaluations()}
    assert checks["no_eval_sample_in_training"] and checks["manifest_counts_are_true"]

    (eval_dir / "spec_conditioned.parquet").unlink()
    refused = run(["training_mixture"])
    assert not refused.success
    error = next(e for e in refused.all_events if e.is_step_failure).step_failure_data.error.message
    assert "spec-conditioned" in error and "eval_sets" in error


def test_a_gain_over_too_few_items_says_its_interval_is_degenerate():
    """Four items cannot give a paired 95% interval (the report's rule for every paired one)."""
    from spark_pipeline.evaluation import speccond

    records = [{"model": "base", "category": "crypto", "sample_id": f"s{i}", "condition": condition,
                "token_accuracy": 0.5 + (0.1 if condition == "with_section" else 0.0), "ident_match": 0.5,
                "compiles": None}
               for i in range(4) for condition in ("with_section", "without_section")]
    [row, *_] = [r for r in speccond.summarise(records, resamples=200) if r["category"] == "all"]
    assert row["token_accuracy_gain"] == pytest.approx(0.1) and row["token_accuracy_gain_degenerate"]
    assert "degenerate" in speccond.cells([row])[0]["token_accuracy_gain"]
