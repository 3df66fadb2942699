"""SpecMap on the faults seen with real datasheets and repositories, each reproduced on a
small datasheet and repository written here: sections no program implements, generic words
and part numbers routing code, sibling headers crowding out the driver, weak excerpts,
languages other than C, and the repository index built once per revision."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_pipeline.specmap.judge import WITH_CODE
from spark_pipeline.specmap.mapping_file import split_sections, write_mapping
from spark_pipeline.specmap.pairs import PairError, load_manifest, resolve_pair
from spark_pipeline.specmap.pipeline import run_specmap
from spark_pipeline_tests.conftest import sample_entry, write_manifest


def _write(root: Path, files: dict[str, str | bytes]) -> Path:
    """A repository (or any tree) from {relative path: text or bytes}."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
    return root


def _run(tmp_path, storage, repo: Path, sheet: Path, pair_id: str = "probe", **kwargs):
    entry = sample_entry(id=pair_id, repository={"path": str(repo)}, datasheets=[str(sheet)])
    pair = load_manifest(write_manifest(tmp_path / f"{pair_id}.yaml", [entry]))[0]
    return run_specmap(resolve_pair(pair, storage), **kwargs)


def _by_id(result):
    return {m.section.id: m for m in result.sections}


def _files(mapping) -> set[str]:
    """What reaches the corpus under a section: code only for implemented / partial."""
    return {f.path for f in mapping.files} if mapping.verdict.status in WITH_CODE else set()


# ------------------------------------------------------------------ 2. status calibration


SENSOR_SHEET = """# 1 Registers
The XQ9000 has two registers.
## 1.1 PWR_CTRL - Power control
PWR_CTRL
Bit SLEEP puts the device to sleep; bit RESET_ALL restores the defaults. VDD must be stable.
## 1.2 FIFO_COUNT - FIFO level
FIFO_COUNT
FIFO_COUNT holds the number of bytes waiting in the FIFO.
# 2 Electrical characteristics
VDD 1.8 V to 3.6 V. I2C SCL up to 400 kHz. PWR_CTRL writes take 2 us. FIFO depth 1024.
## 2.1 Current consumption
IDD in SLEEP mode (PWR_CTRL bit SLEEP set) is 5 uA at VDD = 3.3 V.
# 3 Package information
QFN24, 4 x 4 mm, 0.5 mm pitch. Pin 1 is VDD, pin 2 is SCL, pin 3 is SDA.
# 4 Ordering information
XQ9000-QFN24: tape and reel of 5000.
# 5 Revision history
Rev 1.1: PWR_CTRL bit RESET_ALL added; FIFO_COUNT widened.
"""

SENSOR_REPO = {
    "src/xq9000.c": (
        '#include "xq9000.h"\n'
        "void xq9000_sleep(int on)\n{\n    uint8_t v = on ? XQ9000_PWR_CTRL_SLEEP : 0;\n"
        "    i2c_write(XQ9000_ADDR, XQ9000_PWR_CTRL, v);\n}\n"
        "void xq9000_reset(void)\n{\n    i2c_write(XQ9000_ADDR, XQ9000_PWR_CTRL, XQ9000_PWR_CTRL_RESET_ALL);\n}\n"),
    "src/xq9000.h": (
        "#define XQ9000_ADDR 0x68\n#define XQ9000_PWR_CTRL 0x6B\n#define XQ9000_PWR_CTRL_SLEEP 0x40\n"
        "#define XQ9000_PWR_CTRL_RESET_ALL 0x80\nvoid xq9000_sleep(int on);\nvoid xq9000_reset(void);\n"),
    "lib/fifo.c": (
        "#define FIFO_SIZE 64\nstatic unsigned char fifo_buf[FIFO_SIZE];\nstatic int fifo_count;\n"
        "int fifo_push(unsigned char b)\n{\n    if (fifo_count >= FIFO_SIZE) return -1;\n"
        "    fifo_buf[fifo_count++] = b;\n    return 0;\n}\n"
        "int fifo_level(void)\n{\n    return fifo_count; /* bytes in the FIFO */\n}\n"),
    "board/power.c": ("/* board power: VDD rail and I2C pull-ups */\nint vdd_rail_on(void) { return VDD_OK; }\n"
                      "int scl_sda_pullups(void) { return I2C_SCL | I2C_SDA; }\n"),
}


@pytest.fixture
def sensor(tmp_path, storage):
    repo = _write(tmp_path / "sensor", SENSOR_REPO)
    sheet = tmp_path / "xq9000.md"
    sheet.write_text(SENSOR_SHEET)
    return _run(tmp_path, storage, repo, sheet)


def test_sections_no_program_implements_carry_no_code(sensor, tmp_path):
    by_id = _by_id(sensor)
    kinds = {sid: by_id[sid].kind for sid in ("2", "2.1", "3", "4", "5")}
    assert kinds == {"2": "electrical", "2.1": "electrical", "3": "package", "4": "ordering", "5": "history"}
    for sid in kinds:
        assert by_id[sid].verdict.status == "not_applicable" and not by_id[sid].files
    write_mapping(sensor, tmp_path / "out")
    blocks = {b.split(":")[0]: b for b in split_sections((tmp_path / "out" / "mapping.txt").read_text())}
    for sid in kinds:
        assert "// File:" not in blocks[f"Section {sid}"]
        assert "Status: not_applicable (" in blocks[f"Section {sid}"]
    assert sensor.stats()["not_applicable"] == 5


def test_implemented_needs_the_sections_own_names_not_generic_words(sensor):
    by_id = _by_id(sensor)
    pwr = by_id["1.1"]
    assert pwr.verdict.status == "implemented"
    assert _files(pwr) == {"src/xq9000.c", "src/xq9000.h"}
    fifo = by_id["1.2"]  # lib/fifo.c shares only the word FIFO with it
    assert fifo.verdict.status == "not_implemented" and not _files(fifo)
    assert "FIFO_COUNT" in fifo.verdict.evidence[0]


# ----------------------------------------------------- 3. generic words and the part number


IMU_SHEET = """# 4 Register Descriptions
This section describes each REGISTER of the XQ-9000 DEVICE.
## 4.28 Register 107 - Power Management 1
PWR_MGMT_1
This REGISTER configures the power mode of the XQ-9000 DEVICE. Setting SLEEP puts the DEVICE
into low power SLEEP mode; DEVICE_RESET resets every REGISTER of the XQ-9000 POWER block.
## 4.29 Register 117 - Who Am I
WHO_AM_I
The XQ-9000 DEVICE returns 0x68 from this REGISTER.
"""

IMU_REPO = {
    "Drivers/HAL/Src/hal_pwr.c": (
        "/* POWER controller of the MCU: SLEEP, STOP and STANDBY of the DEVICE */\n"
        "void HAL_PWR_EnterSLEEPMode(uint32_t Regulator)\n{\n    PWR->CR |= PWR_CR_SLEEP_DEVICE;\n"
        "    DEVICE_REGISTER = POWER_SLEEP;\n}\n"
        "void HAL_PWR_DeviceRegisterReset(void)\n{\n    DEVICE_REGISTER = REGISTER_RESET | POWER_RESET;\n}\n"
        "void HAL_PWR_PowerDevice(void) { POWER_DEVICE_REGISTER = SLEEP | DEVICE | POWER; }\n"),
    "Drivers/HAL/Inc/hal_pwr.h": (
        "#define PWR_CR_SLEEP_DEVICE 0x1\n#define DEVICE_REGISTER (*(volatile unsigned *)0x40007000)\n"
        "#define POWER_SLEEP 1\n#define REGISTER_RESET 2\n#define POWER_RESET 4\n#define POWER_DEVICE_REGISTER 8\n"),
    "Core/Src/xq9000.c": (
        '#include "xq9000.h"\n'
        "void XQ9000_init(void)\n{\n    /* wake the sensor up: clear PWR_MGMT_1 */\n"
        "    XQ9000_write(PWR_MGMT_1_REG, 0x00);\n    if (XQ9000_read(WHO_AM_I_REG) != 0x68) { error(); }\n}\n"),
    "Core/Inc/xq9000.h": "#define PWR_MGMT_1_REG 0x6B\n#define WHO_AM_I_REG 0x75\nvoid XQ9000_init(void);\n",
    "Core/Src/board_xq9000.c": ("/* XQ9000 board support for the XQ9000 evaluation board */\n"
                                "int board_xq9000_present(void) { return XQ9000_BOARD | XQ9000_REV; }\n"),
}


def test_generic_words_and_the_part_number_do_not_route_code(tmp_path, storage):
    repo = _write(tmp_path / "imu", IMU_REPO)
    sheet = tmp_path / "xq9000-register-map.md"
    sheet.write_text(IMU_SHEET)
    result = _run(tmp_path, storage, repo, sheet)
    pwr = _by_id(result)["4.28"]
    assert pwr.verdict.status == "implemented"
    assert _files(pwr) == {"Core/Src/xq9000.c", "Core/Inc/xq9000.h"}
    assert "XQ9000" not in pwr.weights, "the part number never counts"
    assert max(pwr.weights, key=pwr.weights.get) == "PWR_MGMT_1"
    assert pwr.weights.get("REGISTER", 0) < 0.2 * pwr.weights["PWR_MGMT_1"]
    symbols = {s.symbol.name for f in pwr.files for s in f.symbols}
    assert symbols == {"XQ9000_init", "PWR_MGMT_1_REG"}


# -------------------------------------------- 4. siblings, 5. excerpts (a vendor device pack)


def _svd(path: Path, device: str) -> Path:
    path.write_text(f"""<?xml version="1.0" encoding="utf-8"?>
<device><name>{device}</name><cpu><name>CM4</name></cpu><peripherals>
 <peripheral><name>I2C1</name><groupName>I2C</groupName><description>Inter-integrated circuit</description>
  <baseAddress>0x40005400</baseAddress><registers>
   <register><name>CR1</name><description>Control register 1</description><addressOffset>0x0</addressOffset>
    <fields><field><name>PE</name><description>Peripheral enable</description><bitOffset>0</bitOffset><bitWidth>1</bitWidth></field>
     <field><name>START</name><description>Start generation</description><bitOffset>8</bitOffset><bitWidth>1</bitWidth></field>
     <field><name>ACK</name><description>Acknowledge enable</description><bitOffset>10</bitOffset><bitWidth>1</bitWidth></field>
    </fields></register>
   <register><name>DR</name><description>Data register</description><addressOffset>0x10</addressOffset>
    <fields><field><name>DR</name><description>8-bit data register</description><bitOffset>0</bitOffset><bitWidth>8</bitWidth></field></fields>
   </register>
  </registers></peripheral>
 <peripheral derivedFrom="I2C1"><name>I2C2</name><baseAddress>0x40005800</baseAddress></peripheral>
 <peripheral><name>ADC1</name><groupName>ADC</groupName><description>Analog to digital converter</description>
  <baseAddress>0x40012000</baseAddress><registers>
   <register><name>DR</name><description>Regular data register</description><addressOffset>0x4C</addressOffset>
    <fields><field><name>DATA</name><description>Regular data</description><bitOffset>0</bitOffset><bitWidth>16</bitWidth></field></fields>
   </register></registers></peripheral>
</peripherals></device>
""")
    return path


def _device_header(part: str) -> str:
    return (f"/* {part} device header */\n"
            "typedef struct { volatile unsigned CR1; volatile unsigned CR2; volatile unsigned DR; } I2C_TypeDef;\n"
            "#define I2C_CR1_PE 0x1\n#define I2C_CR1_START 0x100\n#define I2C_CR1_ACK 0x400\n"
            "#define I2C_DR_DR 0xFF\n#define ADC_DR_DATA 0xFFFF\n#define I2C1 ((I2C_TypeDef *)0x40005400)\n")


PACK_REPO = {
    "Device/Include/xq32f401xc.h": _device_header("XQ32F401xC"),
    "Device/Include/xq32f411xe.h": _device_header("XQ32F411xE"),
    "Device/Include/xq32f446xx.h": _device_header("XQ32F446xx"),
    "Core/Inc/i2c.h": "void i2c_init(void);\nvoid i2c_start(void);\nunsigned char i2c_read(void);\n",
    "Core/Src/i2c.c": (
        '#include "i2c.h"\n'
        "void i2c_init(void)\n{\n    I2C1->CR1 &= ~I2C_CR1_PE;\n    I2C1->CR1 |= I2C_CR1_ACK;\n"
        "    I2C1->CR1 |= I2C_CR1_PE;\n}\n"
        "void i2c_start(void)\n{\n    I2C1->CR1 |= I2C_CR1_START;\n}\n"
        "unsigned char i2c_read(void)\n{\n    return (unsigned char)(I2C1->DR & I2C_DR_DR);\n}\n"),
    "Core/Src/adc.c": "unsigned adc_read(void)\n{\n    return ADC1->DR & ADC_DR_DATA;\n}\n",
}


@pytest.fixture
def pack(tmp_path, storage):
    repo = _write(tmp_path / "pack", PACK_REPO)
    return _run(tmp_path, storage, repo, _svd(tmp_path / "XQ32F411.svd", "XQ32F411"))


def test_the_driver_and_the_parts_own_header_beat_sibling_headers(pack):
    cr1 = _by_id(pack)["I2C1.CR1"]
    assert cr1.verdict.status == "implemented"
    assert _files(cr1) == {"Core/Src/i2c.c", "Device/Include/xq32f411xe.h"}
    order = [f.path for f in sorted(cr1.files, key=lambda f: -f.score)]
    assert order[0] == "Core/Src/i2c.c", "the file that programs the register ranks first"


def test_excerpts_show_definitions_and_the_functions_that_program_the_register(pack):
    by_id = _by_id(pack)
    cr1 = by_id["I2C1.CR1"]
    shown = {f.path: [s.symbol for s in f.symbols] for f in cr1.files}
    driver = {s.name: s for s in shown["Core/Src/i2c.c"]}
    assert {"i2c_init", "i2c_start"} <= set(driver), "the init sequence and the start function are shown"
    assert all(s.kind == "function" for s in driver.values())
    assert "Core/Inc/i2c.h" not in shown, "prototypes are not shown when the definition is"
    header = [s.name for s in shown["Device/Include/xq32f411xe.h"]]
    assert {"I2C_CR1_PE", "I2C_CR1_START", "I2C_CR1_ACK"} <= set(header)
    assert "ADC_DR_DATA" not in header and "I2C_DR_DR" not in header
    for symbols in shown.values():
        names = [s.name for s in symbols]
        assert len(names) == len(set(names)), "a symbol appears once"
    dr = by_id["I2C1.DR"]
    dr_symbols = {s.symbol.name for f in dr.files for s in f.symbols}
    assert "I2C_DR_DR" in dr_symbols and "i2c_read" in dr_symbols
    assert "ADC_DR_DATA" not in dr_symbols and "adc_read" not in dr_symbols
    assert "Core/Src/adc.c" not in _files(dr)


# ----------------------------------------------------------------------- 6. languages


LANG_SHEET = """# 1 Register 107 - Power Management 1
PWR_MGMT_1
Write 0 to PWR_MGMT_1 to wake the sensor; DEVICE_RESET restores the defaults.
"""

LANG_REPO = {
    "examples/Wake/Wake.ino": (
        "#include <Wire.h>\n#define XQ_PWR_MGMT_1 0x6B\n"
        "void setup() {\n  Wire.begin();\n  Wire.beginTransmission(0x68);\n  Wire.write(XQ_PWR_MGMT_1);\n"
        "  Wire.write(0);\n  Wire.endTransmission(true);\n}\nvoid loop() {}\n"),
    "python/xq_sensor.py": (
        "class XQSensor:\n    PWR_MGMT_1 = 0x6B\n    DEVICE_RESET = 0x80\n\n"
        "    def __init__(self, bus):\n        self.bus = bus\n\n"
        "    def wake(self):\n        self.bus.write_byte_data(0x68, self.PWR_MGMT_1, 0x00)\n\n"
        "    def reset(self):\n        self.bus.write_byte_data(0x68, self.PWR_MGMT_1, self.DEVICE_RESET)\n"),
    ".github/workflows/ci.yml": "name: ci\non: push\njobs:\n  PWR_MGMT_1:\n    runs-on: ubuntu-latest\n",
    "ci.yml": "steps: [PWR_MGMT_1]\n",
    "docs/html/doxygen.css": "body { }\n",
    "docs/html/search_pwr.js": "var searchData=[['PWR_MGMT_1',['PWR_MGMT_1',['../a.html',1,'']]]];\n",
    "README.md": "Set PWR_MGMT_1.\n",
}


def test_sketches_python_and_other_languages_are_read_ci_and_generated_docs_are_not(tmp_path, storage):
    repo = _write(tmp_path / "lang", LANG_REPO)
    sheet = tmp_path / "sensor.md"
    sheet.write_text(LANG_SHEET)
    result = _run(tmp_path, storage, repo, sheet)
    assert {p: f.language for p, f in result.scan.files.items()} == {
        "examples/Wake/Wake.ino": "C++", "python/xq_sensor.py": "Python"}
    assert {r.input.split(":", 1)[1]: r.reason for r in result.rejections} == {
        "docs/html/search_pwr.js": "generated_docs"}
    pwr = result.sections[0]
    assert pwr.verdict.status == "implemented"
    assert "python/xq_sensor.py" in _files(pwr)
    shown = {(f.path, s.symbol.name, s.symbol.kind) for f in pwr.files for s in f.symbols}
    assert ("python/xq_sensor.py", "wake", "function") in shown
    # The sketch programs the register itself: it is weighed as code, not as a caller (the
    # file model keeps it or not by its evidence against the Python driver's).
    sketch = next(row for path, row, _ in pwr.candidates if path == "examples/Wake/Wake.ino")
    assert sketch["example"] == 1.0 and sketch["example_caller"] == 0.0 and sketch["primary_use"] > 0
    assert pwr.probabilities["examples/Wake/Wake.ino"] > 0.2


def test_a_repository_without_source_names_what_is_read(tmp_path, storage):
    repo = _write(tmp_path / "docs_only", {"README.md": "x", "notes.txt": "y", ".github/ci.yml": "z: 1\n"})
    sheet = tmp_path / "sensor.md"
    sheet.write_text(LANG_SHEET)
    with pytest.raises(PairError) as err:
        _run(tmp_path, storage, repo, sheet)
    message = str(err.value)
    assert "no usable source files" in message and ".md" in message and ".txt" in message
    assert "C++" in message and "Python" in message and ".ino" in message


# ---------------------------------------------------- 7. one index per repository revision


def test_the_repository_index_is_built_once_per_revision(tmp_path, storage, monkeypatch):
    from spark_pipeline.specmap import index as index_module

    repo = _write(tmp_path / "sensor", SENSOR_REPO)
    sheet = tmp_path / "xq9000.md"
    sheet.write_text(SENSOR_SHEET)
    other = tmp_path / "xq9000_short.md"
    other.write_text(SENSOR_SHEET.split("# 2 Electrical")[0])
    cache = tmp_path / "index_cache"
    first = _run(tmp_path, storage, repo, sheet, "pair_a", cache_dir=cache)
    assert not first.index_cached and len(list(cache.glob("*.index"))) == 1

    def no_ctags(*_args, **_kwargs):
        raise AssertionError("ctags ran although the index was cached")

    built: list[int] = []
    original = index_module.SymbolIndex.__init__

    def counting(self, symbols, text):
        built.append(len(symbols))
        original(self, symbols, text)

    monkeypatch.setattr(index_module, "run_ctags", no_ctags)
    monkeypatch.setattr(index_module.SymbolIndex, "__init__", counting)
    again = _run(tmp_path, storage, repo, sheet, "pair_a", cache_dir=cache)
    assert again.index_cached
    assert [m.verdict.status for m in again.sections] == [m.verdict.status for m in first.sections]
    second_pair = _run(tmp_path, storage, repo, other, "pair_b", cache_dir=cache)  # same repository
    assert second_pair.index_cached and len(list(cache.glob("*.index"))) == 1
    # Symbols are scored lazily: a symbol index only for the files some section picked.
    picked = [{f.path for m in r.sections for f in m.files} for r in (again, second_pair)]
    assert 0 < len(built) <= sum(len(p) for p in picked)
    assert all(len(p) < len(again.scan.files) for p in picked)

    monkeypatch.undo()
    (repo / "src" / "extra.c").write_text("int extra;\n")  # a new revision of the folder
    entry = sample_entry(id="pair_a", repository={"path": str(repo)}, datasheets=[str(sheet)])
    pair = load_manifest(write_manifest(tmp_path / "again.yaml", [entry]))[0]
    changed = run_specmap(resolve_pair(pair, storage), cache_dir=cache)
    assert not changed.index_cached and "src/extra.c" in changed.scan.files
    assert len(list(cache.glob("*.index"))) == 2


# ------------------------------------ callers of the driver are not the register's code


DRIVER_SHEET = """# 4 Register Descriptions
## 4.28 Register 107 - Power Management 1
PWR_MGMT_1
SLEEP puts the device to sleep. CLKSEL selects the clock source.
## 4.29 Register 59 to 64 - Accelerometer Measurements
ACCEL_XOUT_H, ACCEL_XOUT_L
ACCEL_XOUT[15:8] and ACCEL_XOUT[7:0] hold the X axis sample.
## 4.30 Register 25 - Sample Rate Divider
SMPLRT_DIV
## 4.31 Register 27 - Gyroscope Configuration
GYRO_CONFIG
"""

DRIVER_REPO = {
    "src/drv.c": (
        '#include "drv.h"\n#define REG_PWR_MGMT_1 0x6B\n#define REG_SMPLRT_DIV 0x19\n#define REG_GYRO_CONFIG 0x1B\n'
        "int drv_set_sleep(drv_t *h, int on)\n{\n    return h->write(REG_PWR_MGMT_1, on ? 0x40 : 0);\n}\n"
        "int drv_init(drv_t *h)\n{\n    h->write(REG_PWR_MGMT_1, 0);\n    h->write(REG_SMPLRT_DIV, 7);\n"
        "    return h->write(REG_GYRO_CONFIG, 0);\n}\n"),
    "src/drv.h": "typedef struct drv drv_t;\nint drv_set_sleep(drv_t *h, int on);\nint drv_init(drv_t *h);\n",
    "example/basic.c": '#include "drv.h"\nint basic_sleep(drv_t *h)\n{\n    return drv_set_sleep(h, 1);\n}\n',
    "test/init_test.c": '#include "drv.h"\nint init_test(drv_t *h)\n{\n    return drv_init(h);\n}\n',
    "python/reader.py": ("class Reader:\n    ACCEL_XOUT0 = 0x3B\n\n    def read_accel(self, bus):\n"
                         "        return bus.read_word(0x68, self.ACCEL_XOUT0)\n"),
    "bin/reader-example": "#!/usr/bin/env python3\nfrom reader import Reader\nprint(Reader().read_accel(None))\n",
}


def test_files_that_only_call_the_driver_are_not_the_registers_code(tmp_path, storage):
    """An example that calls the function dedicated to PWR_MGMT_1 and a test that calls the
    init are not implementations of the register: only the driver that programs it is (the
    earlier M2 added such callers to the section)."""
    repo = _write(tmp_path / "driver", DRIVER_REPO)
    sheet = tmp_path / "driver.md"
    sheet.write_text(DRIVER_SHEET)
    result = _run(tmp_path, storage, repo, sheet)
    pwr = _by_id(result)["4.28"]
    assert pwr.verdict.status == "implemented" and "src/drv.c" in _files(pwr)
    assert not _files(pwr) & {"example/basic.c", "test/init_test.c"}
    assert {"drv_set_sleep", "drv_init"} <= {s.symbol.name for f in pwr.files for s in f.symbols}
    assert any(r.input.endswith("test/init_test.c") and r.reason == "test" for r in result.rejections)


def test_a_register_pair_is_found_by_its_value_and_scripts_by_their_shebang(tmp_path, storage):
    """ACCEL_XOUT_H / ACCEL_XOUT_L hold ACCEL_XOUT, which a driver may number (ACCEL_XOUT0)."""
    repo = _write(tmp_path / "driver", DRIVER_REPO)
    sheet = tmp_path / "driver.md"
    sheet.write_text(DRIVER_SHEET)
    result = _run(tmp_path, storage, repo, sheet)
    assert result.scan.files["bin/reader-example"].language == "Python"
    accel = _by_id(result)["4.29"]
    assert accel.verdict.status in WITH_CODE
    assert "python/reader.py" in _files(accel)
