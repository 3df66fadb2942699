"""The 13 domain categories of a sample (paper §3.4).

A sample starts with its pair's category from the manifest. Rules then refine it, first
match wins, and the rule's name is kept beside the category:

1. ``register_defines`` by content (the paper fills this category by regular expressions
   across all repositories): most non-empty lines are ``#define NAME <number or mask>``.
2. By the paths of the sample's source files, when all of them agree (device tree sources
   and bindings, USB, Zephyr, AMD GPU register headers, i.MX, AURIX, STM32 HAL, Cortex
   assembly, crypto, wireless, Linux kernel drivers).
3. ``general`` by content (also regular expressions in the paper): C code with nothing of
   the hardware in it — no ``volatile``, no register-width hex constants, no register or
   peripheral access, no inline assembly or interrupt attributes.
"""

from __future__ import annotations

import functools
import re

from spark_pipeline.specmap.pairs import DOMAIN_CATEGORIES

_DEFINE_NUMBER = re.compile(
    r"^\s*#\s*define\s+[A-Za-z_]\w*\s+\(?\s*(?:0[xX][0-9A-Fa-f]+|\d+|\(?\s*\d+U?L?\s*<<\s*\d+\s*\)?|BIT\(\d+\))[uUlL]*\s*\)?"
    r"\s*(?:/[*/].*)?$", re.M)
_NONEMPTY = re.compile(r"^\s*\S", re.M)

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

_HARDWARE = re.compile(
    r"\bvolatile\b|0[xX][0-9A-Fa-f]{6,}|->\s*[A-Z][A-Z0-9_]{1,}\b|\b__attribute__\b|\b__asm|\basm\s*\(|\bIRQ|_IRQHandler|"
    r"\bregister\b|\bREG_|_REG\b|\b(?:GPIO|UART|USART|SPI|I2C|RCC|DMA|TIM|ADC|NVIC|SCB)\w*|\bioread|\bwritel|\breadl")


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
    if text.count("define") >= 5:  # cheap guard before the line-by-line patterns
        lines = len(_NONEMPTY.findall(text))
        defines = len(_DEFINE_NUMBER.findall(text))
        if defines >= 5 and defines >= 0.5 * lines:
            return "register_defines", "content:register_defines"
    if source_files:
        by_path = path_category(tuple(source_files))
        if by_path:
            return by_path, f"path:{by_path}"
    code_lines = text.count(";\n") + text.count("{\n") + text.count("}\n")
    if code_lines >= 3 and not _HARDWARE.search(text):
        return "general", "content:general"
    return manifest_category, "manifest"
