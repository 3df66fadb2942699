import json
import re

import pytest

from spark_pipeline.settings import SAMPLE_MANIFEST
from spark_pipeline.specmap.judge import STATUSES
from spark_pipeline.specmap.mapping_file import (
    SEPARATOR,
    file_paths,
    section_statuses,
    split_sections,
    write_mapping,
)
from spark_pipeline.specmap.pairs import PairError, files_at_revision, load_manifest, resolve_pair
from spark_pipeline.specmap.pipeline import run_specmap
from spark_pipeline_tests.conftest import sample_entry, write_manifest


def _sample(pair_id, storage):
    pair = next(p for p in load_manifest(SAMPLE_MANIFEST) if p.id == pair_id)
    return resolve_pair(pair, storage)


@pytest.fixture
def imu(storage):
    return run_specmap(_sample("skm6_imu_i2c", storage))


def test_register_sections_map_to_the_defining_files_and_symbols(imu):
    by_id = {m.section.id: m for m in imu.sections}
    pwr = by_id["3.8"]
    assert pwr.verdict.status == "implemented"
    assert {f.path for f in pwr.files} >= {"include/skm6.h", "src/skm6.c"}
    symbols = {s.symbol.name for f in pwr.files for s in f.symbols}
    assert "SKM6_REG_PWR_MGMT_1" in symbols and "SKM6_PWR_MGMT_1_DEVICE_RESET" in symbols
    header = next(f for f in pwr.files if f.path == "include/skm6.h")
    reg = next(s for s in header.symbols if s.symbol.name == "SKM6_REG_PWR_MGMT_1")
    assert reg.symbol.kind == "macro" and reg.symbol.line > 0
    assert any("PWR_MGMT_1" in e for e in pwr.verdict.evidence)


def test_sections_no_program_implements_are_not_applicable(imu):
    by_id = {m.section.id: m for m in imu.sections}
    electrical = by_id["5"]
    assert electrical.verdict.status == "not_applicable" and electrical.kind == "electrical"
    assert not electrical.files
    assert all(m.verdict.status in STATUSES for m in imu.sections)


def test_every_phase_is_visible_in_the_result(imu):
    st = imu.stats()
    assert st["sections"] == 15 and st["mapped_folders"] >= 2 and st["mapped_files"] >= 2
    # not applicable: the title page, the introduction and the electrical characteristics
    assert st["not_applicable"] == 3 and not st["index_cached"]
    assert st["mapped_symbols"] > 10 and 0 < st["coverage"] < 1
    m = next(m for m in imu.sections if m.section.id == "3.3")
    assert m.folders[0].path in {"include", "src"} and m.folders[0].files[0].symbols


def _timer_repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "drv").mkdir(parents=True)
    (repo / "drv" / "timer.c").write_text(
        "#define TMR_CTRL 0x00\n#define TMR_LOAD_VAL 0x04\n"
        "void timer_start(void) { *(volatile int *)TMR_CTRL = 1; }\n")
    (repo / "other").mkdir()
    (repo / "other" / "noise.c").write_text("int unrelated_helper(int x) { return x * 2; }\n")
    return repo


def test_static_symbols_in_c_files_are_found(tmp_path, storage):
    sheet = tmp_path / "timer.md"
    sheet.write_text("# 1 Timer\nThe timer counts down. TMR_CTRL starts the timer.\n")
    entry = sample_entry(repository={"path": str(_timer_repo(tmp_path))}, datasheets=[str(sheet)])
    pair = load_manifest(write_manifest(tmp_path / "m.yaml", [entry]))[0]
    result = run_specmap(resolve_pair(pair, storage))
    section = result.sections[0]
    assert section.verdict.status == "implemented"
    assert [s.symbol.name for f in section.files for s in f.symbols] == ["TMR_CTRL", "timer_start"]


def test_m4_is_sequential_the_judge_sees_the_sections_before(tmp_path, storage):
    """M4 runs in document order: the judge is shown the statuses of the sections before the
    one it validates (an LLM judge reads them as context)."""
    from spark_pipeline.specmap.judge import LexicalJudge

    class Recording(LexicalJudge):
        def __init__(self):
            super().__init__()
            self.contexts: list[list[str]] = []

        def validate(self, section_title, query, summary, context, lexical):
            self.contexts.append(list(context))
            return lexical

    sheet = tmp_path / "timer.md"
    sheet.write_text("# 1 Timer\nTMR_CTRL starts the timer.\n## 1.1 Reload\nTMR_LOAD_VAL reloads it.\n")
    entry = sample_entry(repository={"path": str(_timer_repo(tmp_path))}, datasheets=[str(sheet)])
    pair = load_manifest(write_manifest(tmp_path / "m.yaml", [entry]))[0]
    judge = Recording()
    result = run_specmap(resolve_pair(pair, storage), judge)
    assert judge.contexts[0] == []
    assert judge.contexts[1] == [f"1 Timer: {result.sections[0].verdict.status}"]


def test_empty_repository_fails_the_pair_with_a_clear_message(tmp_path, storage):
    repo = tmp_path / "empty"
    repo.mkdir()
    (repo / "README.md").write_text("nothing here")
    entry = sample_entry(repository={"path": str(repo)})
    pair = load_manifest(write_manifest(tmp_path / "m.yaml", [entry]))[0]
    with pytest.raises(PairError, match=r"skm6_imu_i2c.*no usable source files"):
        run_specmap(resolve_pair(pair, storage))


def test_unreadable_datasheet_is_recorded_and_others_still_map(tmp_path, storage):
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.4 garbage")
    entry = sample_entry()
    entry["datasheets"] = [str(bad)] + entry["datasheets"]
    pair = load_manifest(write_manifest(tmp_path / "m.yaml", [entry]))[0]
    result = run_specmap(resolve_pair(pair, storage))
    assert [r.reason for r in result.rejections] == ["unreadable_datasheet"]
    assert "bad.pdf" in result.rejections[0].message
    assert result.stats()["sections"] == 15
    only_bad = sample_entry(datasheets=[str(bad)])
    pair = load_manifest(write_manifest(tmp_path / "m2.yaml", [only_bad]))[0]
    with pytest.raises(PairError, match="no datasheet could be read"):
        run_specmap(resolve_pair(pair, storage))


def test_mapping_file_format_and_sidecar(imu, storage, tmp_path):
    out = tmp_path / "out"
    meta = write_mapping(imu, out)
    text = (out / "mapping.txt").read_text()
    separators = [line for line in text.splitlines() if set(line) == {"="}]
    assert separators and all(len(line) == 82 for line in separators)
    assert SEPARATOR == "=" * 82
    blocks = split_sections(text)
    assert len(blocks) == len(imu.sections) == len(meta["sections"])
    assert section_statuses(text) == [s["status"] for s in meta["sections"]]
    paths = file_paths(text)
    assert paths and set(paths) <= files_at_revision(_sample("skm6_imu_i2c", storage))
    block = next(b for b in blocks if b.startswith("Section 3.8:"))
    assert "// File: include/skm6.h" in block and "#define SKM6_REG_PWR_MGMT_1" in block
    electrical = next(b for b in blocks if b.startswith("Section 5:"))
    assert "// File:" not in electrical, "gap analysis keeps unrelated code out"
    sidecar = json.loads((out / "mapping.json").read_text())
    assert sidecar["mapping_sha256"] == meta["mapping_sha256"]
    sec = next(s for s in sidecar["sections"] if s["id"] == "3.8")
    sym = sec["folders"][0]["files"][0]["symbols"][0]
    assert {"name", "kind", "line", "end", "score"} <= set(sym)
    # every candidate's probability from the file model, best first, for auditing the decision
    probabilities = [c["probability"] for c in sec["candidates"]]
    assert sec["candidates"][0]["path"] in {"include/skm6.h", "src/skm6.c"}
    assert probabilities == sorted(probabilities, reverse=True) and 0 < probabilities[0] <= 1
    assert 0 <= sec["section_probability"] <= 1
    assert re.fullmatch(r"[0-9a-f]{64}", sidecar["mapping_sha256"])


def test_mapping_is_deterministic(storage, tmp_path):
    a = write_mapping(run_specmap(_sample("spk32_gpio_uart_hal", storage)), tmp_path / "a")
    b = write_mapping(run_specmap(_sample("spk32_gpio_uart_hal", storage)), tmp_path / "b")
    assert a["mapping_sha256"] == b["mapping_sha256"]
    assert (tmp_path / "a" / "mapping.txt").read_bytes() == (tmp_path / "b" / "mapping.txt").read_bytes()


def test_svd_register_sections_map_to_register_code(storage):
    result = run_specmap(_sample("spk32_gpio_uart_hal", storage))
    by_id = {m.section.id: m for m in result.sections}
    cr1 = by_id["USART1.CR1"]
    assert cr1.verdict.status == "implemented"
    assert "Drivers/SPK32_HAL/Src/hal_uart.c" in {f.path for f in cr1.files}
    ahb = by_id["RCC.AHB1ENR"]
    assert "Drivers/SPK32_HAL/Src/hal_gpio.c" in {f.path for f in ahb.files}
