"""SpecMap on real input: the STM32F411 datasheet (PDF) and its CMSIS-SVD against a real
STM32F411 bare-metal repository.

    python benchmarks/specmap_bench.py --repo PATH [--runs 3]

PATH is a checkout of a real STM32F411 repository, for example
NAKSEUNGCHOI/stm32f411RE-bare-metal (it is never part of this project). The datasheets are
read from ../shared/reference/ beside the checkout; the script says so and exits when they,
or the repository, are absent.

It prints, as medians over ``--runs`` runs:
* sections per second for the PDF datasheet and for the SVD (datasheet reading included);
* file-level precision and recall on LABELS below, a small labelled set written for this
  benchmark: register sections of the SVD -> the files that define those registers (the
  STM32F411 device header, wherever the repository keeps a copy) and the files whose code
  programs them. The same figures for a same-run baseline, plain BM25 over whole files with
  the same number of files per section, show what the hierarchy and the name matching add.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark_pipeline.specmap.lexical import BM25, tokenize  # noqa: E402
from spark_pipeline.specmap.pairs import Datasheet, Pair, resolve_pair  # noqa: E402
from spark_pipeline.specmap.pipeline import run_specmap  # noqa: E402
from spark_pipeline.specmap.repo import scan_repository  # noqa: E402

REFERENCE = ROOT.parent / "shared" / "reference"
PDF = REFERENCE / "stm32f411-datasheet.pdf"
SVD = REFERENCE / "STM32F411.svd"

# The STM32F411 device header: where a register's struct member and bit masks are defined.
F411_HEADER = "Drivers/CMSIS/Device/ST/STM32F4xx/Include/stm32f411xe.h"
DEFINES = {f"21_i2c_MPU6050/{F411_HEADER}", f"22_SPI_RFID/{F411_HEADER}",
           "chip_headers/CMSIS/Device/ST/STM32F4xx/Include/stm32f411xe.h"}
I2C_DRIVERS = {"21_i2c_MPU6050/Core/Src/i2c.c", "22_SPI_RFID/Core/Src/i2c.c"}
SPI_DRIVER = {"22_SPI_RFID/Core/Src/spi.c"}

#: SVD section id -> files that define or program the register (read off the code by hand).
LABELS: dict[str, set[str]] = {
    "I2C3.CR1": DEFINES | I2C_DRIVERS,
    "I2C3.SR1": DEFINES | I2C_DRIVERS,
    "I2C3.SR2": DEFINES | I2C_DRIVERS,
    "I2C3.CCR": DEFINES | I2C_DRIVERS,
    "I2C3.TRISE": DEFINES | I2C_DRIVERS,
    "I2S2ext.CR1": DEFINES | SPI_DRIVER,   # SPI1 shares this layout (derivedFrom)
    "I2S2ext.SR": DEFINES | SPI_DRIVER,
    "RCC.APB1ENR": DEFINES | I2C_DRIVERS,
    "RCC.APB2ENR": DEFINES | SPI_DRIVER,
    "RCC.AHB1ENR": DEFINES | I2C_DRIVERS | SPI_DRIVER | {"1_blinky/main.c", "23_LCD/main.c"},
    "GPIOA.MODER": DEFINES | SPI_DRIVER | {"1_blinky/main.c"},
    "GPIOA.ODR": DEFINES | SPI_DRIVER | {"1_blinky/main.c", "21_i2c_MPU6050/Core/Src/MPU6050.c"},
    "GPIOB.MODER": DEFINES | I2C_DRIVERS | {"23_LCD/main.c"},
    "GPIOB.PUPDR": DEFINES | I2C_DRIVERS,
    "GPIOB.BSRR": DEFINES | {"23_LCD/main.c"},
}


def _pair(repo: Path, sheet: Path, kind: str) -> Pair:
    return Pair("bench", repo, None, None, (Datasheet(sheet, kind),), "STMicroelectronics", "mcu", "mcu",
                "stm32_hal")


def _prf(predicted: dict[str, set[str]]) -> tuple[float, float]:
    tp = sum(len(predicted.get(k, set()) & gold) for k, gold in LABELS.items())
    n_pred = sum(len(predicted.get(k, set())) for k in LABELS)
    n_gold = sum(len(g) for g in LABELS.values())
    return (tp / n_pred if n_pred else 0.0), tp / n_gold


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, help="checkout of a real STM32F411 repository")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not PDF.exists() or not SVD.exists():
        print(f"skipped: the reference datasheets are not at {REFERENCE}")
        return 0
    if args.repo is None or not args.repo.is_dir():
        print("skipped: pass --repo with a checkout of a real STM32F411 repository, for example "
              "NAKSEUNGCHOI/stm32f411RE-bare-metal")
        return 0
    repo = args.repo.resolve()
    storage = Path("/tmp") / "spark_specmap_bench"
    rates: dict[str, list[float]] = {"pdf": [], "svd": []}
    svd_result = None
    for _ in range(args.runs):
        for kind, sheet in (("pdf", PDF), ("svd", SVD)):
            resolved = resolve_pair(_pair(repo, sheet, kind), storage)
            t0 = time.perf_counter()
            result = run_specmap(resolved)
            rates[kind].append(len(result.sections) / (time.perf_counter() - t0))
            if kind == "svd":
                svd_result = result
    stats = {k: svd_result.stats()[k] for k in ("sections", "implemented", "partial", "not_implemented")}
    missing = [k for k in LABELS if k not in {m.section.id for m in svd_result.sections}]
    if missing:
        print(f"warning: labelled sections absent from the SVD: {missing}")

    predicted = {m.section.id: {f.path for f in m.files} for m in svd_result.sections}
    precision, recall = _prf(predicted)

    # Baseline, same run: BM25 over whole files, as many files per section as SpecMap kept (at least 5).
    scan = scan_repository(repo)
    bm25 = BM25({p: tokenize(f.text) for p, f in scan.files.items()})
    by_id = {m.section.id: m for m in svd_result.sections}
    baseline = {}
    for key in LABELS:
        section = by_id[key].section
        scores = bm25.scores(tokenize(f"{section.title}\n{section.text}"))
        k = max(len(predicted.get(key, ())), 5)
        baseline[key] = set(sorted(scores, key=lambda p: -scores[p])[:k])
    b_precision, b_recall = _prf(baseline)

    print(f"repository: {repo.name} ({len(scan.files)} source files)")
    print(f"runs: {args.runs} (medians)")
    print(f"PDF datasheet : {statistics.median(rates['pdf']):7.1f} sections/s")
    print(f"SVD datasheet : {statistics.median(rates['svd']):7.1f} sections/s   {stats}")
    print(f"labelled set  : {len(LABELS)} register sections, {sum(len(g) for g in LABELS.values())} gold files")
    print(f"SpecMap       : precision {precision:.2f}  recall {recall:.2f}")
    print(f"BM25 baseline : precision {b_precision:.2f}  recall {b_recall:.2f}")
    if b_recall:
        print(f"recall ratio SpecMap / BM25 baseline: {recall / b_recall:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
