"""SpecMap on what went wrong with real pairs from vendors it was not written for, each case
reproduced on a small datasheet and repository written here: outline-less two-column PDFs
with unnumbered headings, drivers that only name registers by number, files that only call
the driver, sections no program implements told by their content, build outputs, tests,
another microcontroller's vendor library and other parts' drivers in the tree, long data
lines, legacy encodings; and the fitted file model itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spark_pipeline.specmap.addresses import code_numbers, section_numbers, table_rows, title_numbers
from spark_pipeline.specmap.datasheet import read_datasheet
from spark_pipeline.specmap.index import closure, include_graph
from spark_pipeline.specmap.kinds import content_kind, section_kinds
from spark_pipeline.specmap.model import FEATURE_VERSION, FileModel, Sample, fit, load, select
from spark_pipeline.specmap.repo import scan_repository
from spark_pipeline.specmap.sections import Section
from spark_pipeline_tests.test_specmap_evidence import _files, _run, _write

# ----------------------------------------------------------------- PDFs without an outline


def _two_column_pdf(path: Path) -> Path:
    """A vendor-style page without an outline: a bold title, bold capitals headings and a
    bold register heading (not numbered), two columns of 9 pt body text, a bold feature list,
    a bold figure caption, a pin table whose rows start with numbers, and a register table."""
    from fpdf import FPDF

    pdf = FPDF(format="letter", unit="pt")
    pdf.set_auto_page_break(False)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 18)
    pdf.set_xy(36, 36)
    pdf.cell(0, 20, "XQ7 Three-Axis Sensor")
    body = ("The XQ7 measures acceleration on three axes and reports it over I2C. It wakes on motion "
            "and sleeps between samples to save power. ") * 3

    def column(x: float, y: float, blocks: list[tuple[str, str]]) -> float:
        for style, text in blocks:
            if style == "H":
                pdf.set_font("Helvetica", "B", 10)
                y += 8
            elif style == "L":
                pdf.set_font("Helvetica", "B", 9)
            elif style == "C":
                pdf.set_font("Helvetica", "B", 8)
            elif style == "T":
                pdf.set_font("Helvetica", "", 7)
            else:
                pdf.set_font("Helvetica", "", 9)
            pdf.set_xy(x, y)
            pdf.multi_cell(250, 11, text)
            y = pdf.get_y() + 2
        return y

    column(36, 70, [("H", "FEATURES"), ("L", "Three axes"), ("L", "Wake on motion"), ("L", "I2C interface"),
                    ("H", "GENERAL DESCRIPTION"), ("B", body), ("C", "Figure 1. Functional block diagram"),
                    ("H", "PIN CONFIGURATION"), ("T", "1 VDD Supply voltage"), ("T", "2 SDA Serial data"),
                    ("T", "3 SCL Serial clock")])
    column(320, 70, [("H", "ABSOLUTE MAXIMUM RATINGS"), ("B", "Supply voltage -0.3 V to 3.6 V. "
                                                              "Storage temperature -40 C to 125 C."),
                     ("H", "REGISTER MAP"), ("T", "0x2D POWER_CTL R/W Power control"),
                     ("T", "0x31 DATA_FORMAT R/W Data format"),
                     ("H", "Register 0x2D - POWER_CTL (Read/Write)"),
                     ("B", "Setting the measure bit starts the measurements. The right column has its own text.")])
    pdf.output(str(path))
    return path


def test_an_outline_less_two_column_pdf_is_sectioned_at_its_printed_headings(tmp_path):
    """Headings are told by layout, numbered or not; bold list items, figure captions and
    table rows are text; the left column is read before the right one."""
    sections = read_datasheet(_two_column_pdf(tmp_path / "xq7.pdf"))
    titles = [s.title for s in sections if s.id != "front"]
    assert titles == ["XQ7 Three-Axis Sensor", "FEATURES", "GENERAL DESCRIPTION", "PIN CONFIGURATION",
                      "ABSOLUTE MAXIMUM RATINGS", "REGISTER MAP", "Register 0x2D - POWER_CTL (Read/Write)"]
    by_title = {s.title: s for s in sections}
    assert "Wake on motion" in by_title["FEATURES"].text
    assert "Figure 1. Functional block diagram" in by_title["GENERAL DESCRIPTION"].text
    assert "2 SDA Serial data" in by_title["PIN CONFIGURATION"].text
    assert "measure bit" in by_title["Register 0x2D - POWER_CTL (Read/Write)"].text
    assert "measure bit" not in by_title["PIN CONFIGURATION"].text, "columns read one after the other"
    assert "measures acceleration" not in by_title["ABSOLUTE MAXIMUM RATINGS"].text


def test_outline_sections_of_a_two_column_page_keep_their_own_column(tmp_path):
    """A bookmark in the right column takes the right column's text below it, not the left
    column's lines that sit lower on the page (cut at the bookmark's height, they did)."""
    from fpdf import FPDF

    pdf = FPDF(format="letter", unit="pt")
    pdf.set_auto_page_break(False)
    pdf.add_page()
    left = ("Left column prose about the oscillator, long enough to fill the column down the page. " * 12)
    pdf.start_section("Oscillator", level=0)
    pdf.set_font("Helvetica", "B", 11)
    pdf.set_xy(36, 60)
    pdf.cell(250, 14, "Oscillator")
    pdf.set_font("Helvetica", "", 9)
    pdf.set_xy(36, 80)
    pdf.multi_cell(250, 11, left)
    pdf.set_xy(320, 200)
    pdf.start_section("Watchdog", level=0)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(250, 14, "Watchdog")
    pdf.set_font("Helvetica", "", 9)
    pdf.set_xy(320, 220)
    pdf.multi_cell(250, 11, "The watchdog resets a stuck program. " * 8)
    path = tmp_path / "cols.pdf"
    pdf.output(str(path))
    sections = {s.title: s for s in read_datasheet(path)}
    assert "watchdog resets" in sections["Watchdog"].text
    assert "oscillator" not in sections["Watchdog"].text.lower().replace("watchdog", "")
    assert " ".join(sections["Oscillator"].text.split()).count("Left column prose") == 12


# ------------------------------------------------------------- registers by their numbers


def test_register_numbers_are_read_from_headings_tables_and_code():
    assert title_numbers("Register 0x2D—POWER_CTL (Read/Write)") == [[0x2D]]
    assert title_numbers("Control Register (0Eh)") == [[0x0E]]
    assert title_numbers("Set Display ON/OFF (AEh/AFh)") == [[0xAE, 0xAF]]
    assert title_numbers("Register 0x32 to Register 0x37—DATAX0") == [list(range(0x32, 0x38))]
    assert title_numbers("Register 107 – Power Management 1") == [[107]]  # decimal, no hex given
    assert title_numbers("8.2 Block Diagram") == []
    rows = table_rows("6B 107 PWR_MGMT_1 R/W DEVICE_RESET\n0x2D POWER_CTL R/W\nPower Down 0000_0000 No active state")
    assert rows == [("PWR_MGMT_1", 0x6B), ("POWER_CTL", 0x2D), ("POWER_DOWN", 0x00)]
    own, listed = section_numbers(Section("t", "Decode-Mode Register", 2, "Table 4. Examples (Address (Hex) = 0xX9)"))
    assert own == [["@09"]] and listed == []
    code = ("#define PWR 0x6B  // 0x77 in a comment\nvoid f(void) { write_reg(0x2D, 0x08); x = y & 0x40;\n"
            "  static const uint8_t t[] = {0x1A, 0x03}; switch (r) { case 0xAE: break; } }\n"
            "X = const(0x2C)\n# python comment 0x99\nlet c: u8 = 0x10_u8;\n")
    assert code_numbers(code) == {"@6B", "@2D", "@08", "@1A", "@03", "@AE", "@2C", "@10"}


RAW_SHEET = """# 1 Register map
| 0x2D | POWER_CTL | R/W | Power control |
| 0x31 | DATA_FORMAT | R/W | Data format |
| 0x38 | FIFO_CTL | R/W | FIFO control |
| 0x1D | THRESH_TAP | R/W | Tap threshold |
## 1.1 Register 0x2D - POWER_CTL
Setting the measure bit starts measurements; the sleep bit stops them.
## 1.2 Register 0x31 - DATA_FORMAT
The range bits select the full scale; the justify bit aligns the data.
## 1.3 Register 0x1D - THRESH_TAP
Holds the threshold of tap interrupts.
"""

RAW_REPO = {
    "driver/xq7.c": ('#include "xq7.h"\nstatic void wr(uint8_t reg, uint8_t val) { bus_write(XQ7_ADDR, reg, val); }\n'
                     "void xq7_start(void)\n{\n    wr(0x2D, 0x08);\n}\n"
                     "void xq7_range(int g)\n{\n    wr(0x31, (uint8_t)g);\n}\n"),
    "driver/xq7.h": "#define XQ7_ADDR 0x53\nvoid xq7_start(void);\nvoid xq7_range(int g);\n",
    "app/main.c": ('#include "xq7.h"\nint main(void)\n{\n    xq7_start();\n    xq7_range(2);\n'
                   "    for (;;) { }\n}\n"),
}


def test_a_driver_that_names_registers_only_by_number_maps_and_callers_do_not(tmp_path, storage):
    """``wr(0x2D, 0x08)`` is POWER_CTL's code; main.c, which only calls the driver, is not an
    implementation of the register; a register no code touches stays not implemented."""
    repo = _write(tmp_path / "raw", RAW_REPO)
    sheet = tmp_path / "xq7.md"
    sheet.write_text(RAW_SHEET)
    result = _run(tmp_path, storage, repo, sheet)
    by_id = {m.section.id: m for m in result.sections}
    power, fmt, tap = by_id["1.1"], by_id["1.2"], by_id["1.3"]
    assert "@2D" in [n for g in power.primary for n in g]
    assert power.verdict.status == "implemented" and _files(power) == {"driver/xq7.c"}
    assert "xq7_start" in {s.symbol.name for f in power.files for s in f.symbols}
    assert _files(fmt) == {"driver/xq7.c"}
    assert not any("app/main.c" in _files(m) for m in (power, fmt, tap))
    assert tap.verdict.status == "not_implemented" and not _files(tap)


# ------------------------------------------------------- what is not the part's implementation


SENSOR_SHEET = """# 1 Registers
## 1.1 SENS_CTRL - Sensor control
SENS_CTRL
SENS_CTRL_EN starts conversions; SENS_CTRL_RATE sets their rate.
## 1.2 SENS_DATA - Conversion result
SENS_DATA
SENS_DATA holds the latest result.
"""

_DRIVER_NAMES = ("#define SENS_CTRL 0x10\n#define SENS_CTRL_EN 0x01\n#define SENS_CTRL_RATE 0x06\n"
                 "#define SENS_DATA 0x11\n")


def test_build_outputs_tests_vendor_libraries_and_other_parts_are_never_mapped(tmp_path, storage):
    repo = _write(tmp_path / "tree", {
        "src/xs200.h": _DRIVER_NAMES,
        "src/xs200.c": ('#include "xs200.h"\nvoid xs200_start(void) { reg_write(SENS_CTRL, SENS_CTRL_EN); }\n'
                        "int xs200_read(void) { return reg_read(SENS_DATA); }\n"),
        "Debug/src/xs200.list": "xs200_start: SENS_CTRL SENS_CTRL_EN SENS_DATA\n",
        "build/xs200.asm": "; Generated by the compiler\n_xs200_start: ; SENS_CTRL SENS_CTRL_EN SENS_DATA\n  ret\n",
        "Debug/makefile": "xs200.o: SENS_CTRL SENS_DATA\n",
        "tests/test_xs200.c": ('#include "xs200.h"\nvoid test_start(void) { xs200_start(); '
                               "assert(reg_read(SENS_CTRL) == SENS_CTRL_EN); }\n"),
        "Drivers/STM32F4xx_HAL_Driver/Src/stm32f4xx_hal_i2c.c": (
            "void HAL_I2C_Mem_Write(int reg) { /* SENS_CTRL SENS_DATA */ int SENS_CTRL_EN = reg; }\n"),
        "other/pcf8563.c": "#define SENS_CTRL 0x00\n#define SENS_DATA 0x02\nvoid pcf8563_init(void) { w(SENS_CTRL); }\n",
    })
    sheet = tmp_path / "xs200.md"
    sheet.write_text(SENSOR_SHEET)
    result = _run(tmp_path, storage, repo, sheet)
    mapped = {p for m in result.sections for p in _files(m)}
    assert mapped and mapped <= {"src/xs200.c", "src/xs200.h"}
    reasons = {r.input.split(":", 1)[1]: r.reason for r in result.rejections}
    assert reasons["tests/test_xs200.c"] == "test"
    assert reasons["build/xs200.asm"] == "build_output"
    candidates = {path for m in result.sections for path, _, _ in m.candidates}
    assert "Drivers/STM32F4xx_HAL_Driver/Src/stm32f4xx_hal_i2c.c" not in candidates  # another MCU's library
    assert "other/pcf8563.c" not in candidates  # another part's driver


def test_a_long_data_line_keeps_the_file_and_legacy_encodings_are_decoded(tmp_path):
    font = "const unsigned char font[] = {" + ", ".join(["0x00"] * 2000) + "};\n"
    minified = "var a=1;" * 2000 + "\n"
    comment = ("/* 初始化传感器寄存器 */\n/* 设置采样率和量程，然后启动测量 */\n"
               "// 读取温度数据并转换为摄氏度\n").encode("gb2312")
    repo = _write(tmp_path / "enc", {
        "font.c": "#define SENS_CTRL 0x10\n" + font + "void f(void) { w(SENS_CTRL); }\n"
                  + "".join(f"int helper_{i}(int x) {{ return x + {i}; }} /* a helper among many */\n" for i in range(300)),
        "min.c": minified,
        "gbk.c": comment + b"void init(void) { w(0x10); }\n",
    })
    scan = scan_repository(repo)
    assert "font.c" in scan.files and "w(SENS_CTRL)" in scan.files["font.c"].text
    assert scan.files["font.c"].text.splitlines()[1] == "", "the long line is left out, the numbering kept"
    assert "min.c" not in scan.files and any(r.reason == "long_line" for r in scan.rejections)
    assert "初始化传感器寄存器" in scan.files["gbk.c"].text
    assert scan.files["gbk.c"].encoding.lower().replace("-", "") in {"gb2312", "gbk", "gb18030"}


# ----------------------------------------------------------- not applicable by content


def test_sections_no_program_implements_are_told_by_their_content():
    electrical = Section("s1", "Supply", 1, "\n".join(
        ["Parameter Symbol Min Typ Max Unit"] + [f"Supply {i} VDD 1.7 3.3 3.6 V" for i in range(6)]))
    curves = Section("s2", "Figure set", 1, "Current vs. Temperature\n12 uA\nCurrent vs. Supply\n3.3 V\n40 °C")
    solder = Section("s3", "Assembly", 1, "Preheat 150 °C to 200 °C for 60 s; reflow peak temperature 260 °C.")
    drawing = Section("s4", "Outline", 1, "\n".join(f"A{i} {i}.20 mm" for i in range(8)))
    board = Section("s5", "Supply hints", 1, "Place a 100 nF capacitor close to VDD; route short traces to the "
                    "ground plane and add a ferrite bead with a 10 uF capacitor and a resistor on the line. " * 2)
    register = Section("s6", "Ranges", 1, "\n".join(["RANGE_SEL Min Typ Max"] + [f"RANGE_SEL {i} 2 g" for i in range(6)]))
    assert [content_kind(s) for s in (electrical, curves, solder, drawing, board, register)] == [
        "electrical", "electrical", "package", "package", "application", None]
    kinds = section_kinds([Section("7", "Specifications", 1, ""), Section("7.1", "Noise", 2, "x", parent_id="7"),
                           Section("8", "Pin Configuration and Functions", 1, "pins"),
                           Section("9", "Register 55 – INT Pin / Bypass Enable Configuration", 1, "INT_PIN_CFG")])
    assert kinds == {"7": "electrical", "7.1": "electrical", "8": "package"}
    assert "8" not in section_kinds([Section("8", "Pin Configuration and Functions", 1, "pins")], mcu=True)


# ------------------------------------------------------------------------- the file model


def _sample(pair: str, good: float, gold: bool = True) -> Sample:
    candidates = [("a.c", {"name_rel": good}, "ka"), ("copy/a.c", {"name_rel": good}, "ka"),
                  ("b.c", {"name_rel": 0.1}, "kb"), ("c.c", {"name_rel": 0.05}, "kc")]
    return Sample(pair, "1", candidates, {"a.c", "copy/a.c"} if gold else set())


def test_the_file_model_is_fitted_selects_copies_together_and_refuses_other_features(tmp_path):
    samples = [_sample(f"p{i}", 0.9) for i in range(6)] + [_sample("q", 0.2, gold=False)]
    model = fit(samples, ["name_rel"], shares=(0.0,))
    assert model.weights[0] > 0 and model.trained_on == ["p0", "p1", "p2", "p3", "p4", "p5", "q"]
    kept = [p for p, _ in select(model, _sample("new", 0.95).candidates)]
    assert kept == ["a.c", "copy/a.c"], "copies of one file come along, the rest is below the threshold"
    capped = FileModel(model.features, model.weights, model.bias, model.mean, model.scale, threshold=0.0,
                       relative=0.0, max_files=1)
    assert [p for p, _ in select(capped, _sample("new", 0.95).candidates)] == ["a.c", "copy/a.c"]
    path = tmp_path / "m.json"
    model.save(path)
    again = load(path)
    assert again.probability({"name_rel": 0.7}) == pytest.approx(model.probability({"name_rel": 0.7}))
    stale = json.loads(path.read_text())
    stale["feature_version"] = FEATURE_VERSION - 1
    path.write_text(json.dumps(stale))
    with pytest.raises(ValueError, match="refit it"):
        load(path)


def test_the_shipped_file_model_matches_the_features_and_names_its_training_pairs():
    from spark_pipeline.specmap.features import FEATURES

    model = load()
    assert model.features == FEATURES
    assert model.trained_on and all(not p.startswith("test") for p in model.trained_on)
    assert 0.0 < model.threshold < 1.0 and model.max_files >= 1


def test_includes_and_the_closure_of_the_parts_own_files():
    texts = {"src/LLCC68/LLCC68.h": '#include "../SX126x/SX1262.h"\n', "src/LLCC68/LLCC68.cpp": '#include "LLCC68.h"\n',
             "src/SX126x/SX1262.h": '#include "SX126x.h"\n', "src/SX126x/SX126x.h": "", "src/SX126x/SX126x.cpp": "",
             "src/SX126x/SX126x_config.cpp": "", "src/SX128x/SX128x.cpp": "",
             "pkg/__init__.py": "from .core import Sensor\n", "pkg/core.py": "import struct\n",
             "lib.rs": "mod regs;\n", "regs.rs": ""}
    graph = include_graph(texts)
    assert graph["src/LLCC68/LLCC68.h"] == {"src/SX126x/SX1262.h"}
    assert graph["pkg/__init__.py"] == {"pkg/core.py"} and graph["lib.rs"] == {"regs.rs"}
    reached = closure(graph, {"src/LLCC68/LLCC68.h", "src/LLCC68/LLCC68.cpp"}, texts)
    assert {"src/SX126x/SX126x.cpp", "src/SX126x/SX126x_config.cpp", "src/SX126x/SX1262.h"} <= reached
    assert "src/SX128x/SX128x.cpp" not in reached


def test_the_benchmark_never_fits_a_pair_on_itself_nor_on_a_test_pair():
    import importlib.util
    import sys

    from spark_pipeline.settings import PROJECT_DIR as PROJECT_ROOT

    spec = importlib.util.spec_from_file_location("specmap_bench", PROJECT_ROOT / "benchmarks" / "specmap_bench.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["specmap_bench"] = bench
    try:
        spec.loader.exec_module(bench)
    finally:
        sys.modules.pop("specmap_bench", None)
    dev = ["a", "b", "c"]
    assert bench.training_pairs("b", "dev", dev) == ["a", "c"]
    assert bench.training_pairs("t", "test", dev) == ["a", "b", "c"]
    labels = [__import__("yaml").safe_load(p.read_text()) for p in (PROJECT_ROOT / "benchmarks" / "specmap_labels").glob("*.yaml")]
    assert len(labels) >= 15 and {lab["split"] for lab in labels} == {"dev", "test"}
    assert len({lab.get("manufacturer") for lab in labels}) >= 8
    assert bench.norm_title("I²C Slave Address") == bench.norm_title("I2C slave address")
