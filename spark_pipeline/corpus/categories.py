"""The 13 domain categories of a sample (paper §3.4).

A sample's category is its pair's category from the manifest. Two content rules may refine
it, as the paper fills these two categories "via regex matches across all repositories",
and the rule's name is kept beside the category:

1. ``register_defines`` by content: most non-empty lines are ``#define NAME <number or mask>``.
2. ``general`` by content: C code with nothing of the hardware in it — no ``volatile``, no
   register-width hex constants, no register or peripheral access, no inline assembly or
   interrupt attributes.

The paths of a sample's source files (device tree sources and bindings, USB, Zephyr, AMD
GPU register headers, i.MX, AURIX, STM32 HAL, Cortex assembly, crypto, wireless, Linux
kernel drivers) decide only for pairs the manifest calls ``general``: a pair declared
``register_defines`` stays ``register_defines`` even though its files sit under ``stm32``
paths (path rules used to override the manifest for most samples of such a pair).
"""

from __future__ import annotations

import functools
import re

from spark_pipeline.specmap.pairs import DOMAIN_CATEGORIES


def _number_define(line: str) -> bool:
    """``#define NAME value`` where the value is a number, a shifted bit or ``BIT(n)``,
    possibly parenthesised and suffixed (``(0x3UL << 4)``, ``(12U)``, ``BIT(3)``)."""
    parts = line.split(None, 3)
    if len(parts) >= 2 and parts[0] == "#" and parts[1] == "define":
        parts = ["#define"] + line.split(None, 4)[2:]
    if len(parts) < 3 or parts[0] != "#define":
        return False
    value = parts[2].lstrip("(")
    return value[:1].isdigit() or value.startswith("BIT(")


PATH_RULES: tuple[tuple[str, re.Pattern], ...] = (
    ("device_tree", re.compile(r"\.dtsi?$|\.overlay$|devicetree/bindings/|/dts/")),
    ("amd_gpu_registers", re.compile(r"drivers/gpu/drm/amd/|/asic_reg/|amdgpu", re.I)),
    ("usb_stack", re.compile(r"(^|/)usb(/|_)|tinyusb|/gadget/", re.I)),
    ("zephyr_rtos", re.compile(r"zephyr", re.I)),
    ("nxp_imx", re.compile(r"imx|mcux|fsl_", re.I)),
    ("infineon_aurix", re.compile(r"aurix|tricore|(^|/)Ifx", re.I)),
    ("stm32_hal", re.compile(r"stm32|_hal_|(^|/)hal_", re.I)),
    ("arm_cortex_asm", re.compile(r"\.(s|S|asm)$|startup_|cmsis", re.I)),
    ("crypto", re.compile(r"crypto|(^|[/_])(aes|sha\d*|rsa|ecc|hmac)([_./]|$)", re.I)),
    ("wireless_ble_wifi", re.compile(r"bluetooth|(^|[/_])ble([_/]|$)|wifi|wlan|802\.11|nimble", re.I)),
    ("linux_kernel", re.compile(r"(^|/)(drivers|arch|kernel|include/linux)/")),
)

# Signs of the hardware: words found by plain substring search, then the two patterns that
# need a regular expression (register-width hex constants, PERIPH->REG accesses).
_HARDWARE_WORDS = ("volatile", "__attribute__", "asm", "IRQ", "register", "REG_", "_REG", "GPIO", "UART", "SPI",
                   "I2C", "RCC", "DMA", "TIM", "ADC", "NVIC", "SCB", "ioread", "iowrite", "readl", "writel")
_HARDWARE = re.compile(r"0[xX][0-9A-Fa-f]{6}|->\s*[A-Z][A-Z0-9_]")


@functools.lru_cache(maxsize=65536)
def path_category(paths: tuple[str, ...]) -> str | None:
    """The category every one of ``paths`` points to, or None (chunks of one file repeat their
    paths, so the answer is cached)."""
    for category, pattern in PATH_RULES:
        if all(pattern.search(path) for path in paths):
            return category
    return None


def categorize(text: str, source_files: list[str], manifest_category: str) -> tuple[str, str]:
    """(category, rule) for one sample."""
    if manifest_category not in DOMAIN_CATEGORIES:
        raise ValueError(f"unknown domain category {manifest_category!r}")
    if text.count("define") >= 5:  # cheap guard before looking at lines
        lines = [line for line in text.split("\n") if line.strip()]
        defines = sum(1 for line in lines if "define" in line and _number_define(line.strip()))
        if defines >= 5 and defines >= 0.5 * len(lines):
            return "register_defines", "content:register_defines"
    if source_files and manifest_category == "general":
        by_path = path_category(tuple(source_files))
        if by_path:
            return by_path, f"path:{by_path}"
    code_lines = text.count(";\n") + text.count("{\n") + text.count("}\n")
    if code_lines >= 3 and not any(word in text for word in _HARDWARE_WORDS) and not _HARDWARE.search(text):
        return "general", "content:general"
    return manifest_category, "manifest"
