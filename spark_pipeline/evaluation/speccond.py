"""Spec-conditioned completion (beyond the paper): does the model write the code better when
it reads the datasheet section first?

Each item of the ``spec_conditioned`` split (:mod:`spark_pipeline.corpus.specitems`: a held-out
pair's section text, the beginning of the code mapped to it, the rest as reference) is
generated twice per model, greedily, up to ``max_new_tokens``:

* **with** the section: prompt = tokens of the section text (its first
  ``max_section_tokens``), the tokens of a blank line, then the code prefix's tokens;
* **without** it: prompt = the same code prefix's tokens.

The code prefix is tokenized on its own (its last ``max_prefix_tokens`` tokens), so the two
prompts differ only by the leading section tokens: the "without" prompt is the tail of the
"with" prompt, token for token.

Per generation: token accuracy against the reference (as :func:`~spark_pipeline.evaluation.metrics.token_accuracy`),
the **identifier match** (:func:`hardware_identifiers`: the share of the reference's register
names, addresses and bit masks that the generation, cut to the reference's length in tokens,
reproduces exactly), and a **compile** result where it means something (below).

The **grounding gain** of a model is with minus without, per metric, over the same items,
with a paired 95% bootstrap interval (the same resampled items for both conditions); for the
adapter also its gain minus the base model's gain (``*_gain_vs_base``), paired over the same
items again.

**Compile rate.** The project's compile check (:func:`~spark_pipeline.evaluation.codecheck.compiles`)
runs the code prefix followed by the generation through the C compiler. Mapping-file code
is made of excerpts (functions without their file's includes, header fragments starting in a
struct), so most items do not compile even with the true reference. The check is therefore
applied only to items whose own code (prefix + reference, cut like the generation) compiles;
with none such, the compile columns are NaN, not zero.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from spark_pipeline.evaluation import stats
from spark_pipeline.evaluation.metrics import generate_batch, token_accuracy

CONDITIONS = ("with_section", "without_section")
METRICS = ("token_accuracy", "ident_match", "compile_rate")

_COMMENT = re.compile(r"/\*.*?(?:\*/|\Z)|//[^\n]*", re.S)
_HEX = re.compile(r"\b0[xX]([0-9A-Fa-f]+)(?:[uU]?[lL]{0,2}|[lL]{1,2}[uU]?)\b")
_SHIFT = re.compile(r"\b(\d+|0[xX][0-9A-Fa-f]+)[uUlL]*\s*<<\s*(\w+)")
_WORD = re.compile(r"\b[A-Za-z]\w*\b")
#: Upper-case words that are C or the compiler's, not the hardware's.
NOT_HARDWARE = frozenset({"NULL", "TRUE", "FALSE", "EOF", "BOOL", "VOID", "ASM", "FILE", "EXIT_SUCCESS",
                          "EXIT_FAILURE", "STATIC", "INLINE", "CONST", "UL", "ULL", "LL"})


def hardware_identifiers(code: str) -> set[str]:
    """The register names, addresses and bit masks written in ``code`` (comments removed):

    * **hex constants** (addresses, masks, reset values): ``0x...`` with any ``U``/``L``
      suffix, kept as the lower-case digits without leading zeros (``0x0040UL`` -> ``0x40``);
    * **shift masks**: ``<number> << <name or number>`` (``1UL << 7``, ``1U<<AES_CR_EN_Pos``),
      kept without suffixes and spaces (``1<<7``);
    * **register, field and macro names**: words starting with a letter that are either all
      upper-case (letters, digits, underscores) with two letters or more (``AES_CR_EN``,
      ``DINR``, ``SR``), or joined by underscores with an upper-case first part of two letters
      or more (``AES_CR_CHMOD_Pos``, ``AES_TypeDef``, ``GPIO_PIN_5``), other than C's own
      (:data:`NOT_HARDWARE`). Lower-case names (``uint32_t``, ``process``) are not counted.

    Matching is exact on these strings: ``AES_CR_EN`` is not ``AES_CR_ENABLE``.
    """
    code = _COMMENT.sub(" ", code)
    found = {f"0x{m.group(1).lower().lstrip('0') or '0'}" for m in _HEX.finditer(code)}
    for m in _SHIFT.finditer(code):
        left = m.group(1).lower()
        if left.startswith("0x"):
            left = "0x" + (left[2:].lstrip("0") or "0")
        found.add(f"{left}<<{m.group(2)}")
    for m in _WORD.finditer(code):
        word = m.group(0)
        if word in NOT_HARDWARE or word in found:
            continue
        if word.isupper() and sum(c.isalpha() for c in word) >= 2:
            found.add(word)
        elif "_" in word:
            head = word.split("_", 1)[0]
            if head.isupper() and sum(c.isalpha() for c in head) >= 2:
                found.add(word)
    return found


def load_items(eval_dir: Path, tokenizer, settings) -> list[dict]:
    """The split's items (at most ``settings.spec_conditioned.items_per_category`` per
    category, in file order), each with its two prompts as token ids and the reference's ids.
    No split file (evaluation sets built before it existed) or a cap of 0: no items."""
    sc = settings.spec_conditioned
    path = Path(eval_dir) / "spec_conditioned.parquet"
    if not path.exists() or sc.items_per_category == 0:
        return []
    counts: dict[str, int] = defaultdict(int)
    separator = tokenizer.encode("\n\n")
    items = []
    for row in pq.read_table(path).to_pylist():
        if counts[row["category"]] >= sc.items_per_category:
            continue
        section = tokenizer.encode(row["section_text"])[: sc.max_section_tokens] + separator
        prefix = tokenizer.encode(row["code_prefix"])[-sc.max_prefix_tokens:]
        reference = tokenizer.encode(row["reference"])[: settings.max_new_tokens]
        if not prefix or not reference:
            continue
        counts[row["category"]] += 1
        items.append({**row, "prompts": {"with_section": section + prefix, "without_section": prefix},
                      "section_ids": section, "prefix_ids": prefix, "reference_ids": reference})
    return items


def spec_records(model, name: str, items: list[dict], tokenizer, settings, context: dict | None = None,
                 progress=None) -> list[dict]:
    """One record per (item, condition) for ``model``: the prompt's hash and length, the
    reference and the generation, token accuracy, the identifiers and those matched, and the
    compile results (``context``: ``include_dirs``, pair id -> header folders)."""
    from spark_pipeline.evaluation.codecheck import compiles

    context = context or {}
    device = next(model.parameters()).device
    prompts = [item["prompts"][c] for item in items for c in CONDITIONS]
    outputs = generate_batch(model, prompts, settings.max_new_tokens, tokenizer.eos_id, tokenizer.pad_id, device,
                             settings.batch_size, progress=progress)
    truth_compiles = context.setdefault("spec_reference_compiles", {})
    records = []
    for k, item in enumerate(items):
        ref_ids = item["reference_ids"]
        reference = tokenizer.decode(ref_ids)
        wanted = hardware_identifiers(reference)
        dirs = context.get("include_dirs", {}).get(item["pair_id"]) if "include_dirs" in context else None
        if dirs is not None and item["sample_hash"] not in truth_compiles:
            truth_compiles[item["sample_hash"]] = compiles(item["code_prefix"] + reference, dirs)
        eligible = truth_compiles.get(item["sample_hash"])
        for j, condition in enumerate(CONDITIONS):
            gen = outputs[2 * k + j]
            prompt = item["prompts"][condition]
            generation = tokenizer.decode(gen)
            matched = wanted & hardware_identifiers(tokenizer.decode(gen[: len(ref_ids)]))
            records.append({
                "model": name, "condition": condition, "split": "spec_conditioned", "category": item["category"],
                "pair_id": item["pair_id"], "section_id": item["section_id"], "sample_id": item["sample_hash"],
                "prompt_sha256": hashlib.sha256(json.dumps(prompt).encode()).hexdigest(),
                "prompt_tokens": len(prompt), "section_tokens": len(item["section_ids"]),
                "reference": reference, "generation": generation, "reference_ids": ref_ids, "generation_ids": gen,
                "token_accuracy": token_accuracy(gen, ref_ids),
                "identifiers": sorted(wanted), "identifiers_matched": sorted(matched),
                "ident_match": len(matched) / len(wanted) if wanted else None,
                "reference_compiles": eligible,
                "compiles": compiles(item["code_prefix"] + generation, dirs) if eligible else None})
    return records


def _values(recs: list[dict], metric: str) -> dict[str, dict[str, float]]:
    """sample id -> condition -> the metric (compile: 0/1), for items with both conditions."""
    key = "compiles" if metric == "compile_rate" else metric
    by_item: dict[str, dict[str, float]] = defaultdict(dict)
    for r in recs:
        if r.get(key) is not None:
            by_item[r["sample_id"]][r["condition"]] = float(r[key])
    return {i: v for i, v in by_item.items() if len(v) == len(CONDITIONS)}


def summarise(records: list[dict], resamples: int, seed: int = 0) -> list[dict]:
    """One row per (model, category), plus ``all``: per metric the mean with and without the
    section, the gain (with - without) and its paired 95% interval over the items; for every
    model but the base, the gain minus the base's gain on the same items, with its paired
    interval. ``items``: items in the group; ``<metric>_items``: those the metric applies to."""
    nan = float("nan")
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["model"], r["category"])].append(r)
        groups[(r["model"], "all")].append(r)
    rows = []
    for (model, category), recs in sorted(groups.items()):
        row = {"model": model, "split": "spec_conditioned", "category": category,
               "items": len({r["sample_id"] for r in recs})}
        base = _base_group(groups, model, category)
        for metric in METRICS:
            values = _values(recs, metric)
            ids = sorted(values)
            with_ = [values[i]["with_section"] for i in ids]
            without = [values[i]["without_section"] for i in ids]
            row[f"{metric}_items"] = len(ids)
            row[f"{metric}_with"] = float(np.mean(with_)) if ids else nan
            row[f"{metric}_without"] = float(np.mean(without)) if ids else nan
            row[f"{metric}_gain"] = row[f"{metric}_with"] - row[f"{metric}_without"]
            row[f"{metric}_gain_lo"], row[f"{metric}_gain_hi"] = stats.paired(
                stats.mean_statistic(with_), stats.mean_statistic(without), len(ids), resamples, seed)
            row[f"{metric}_gain_degenerate"] = stats.degenerate(len(ids))  # too few items to tell
            row[f"{metric}_gain_vs_base"] = row[f"{metric}_gain_vs_base_lo"] = row[f"{metric}_gain_vs_base_hi"] = nan
            if base is not None:
                theirs = _values(base, metric)
                common = [i for i in ids if i in theirs]
                mine_gain = [values[i]["with_section"] - values[i]["without_section"] for i in common]
                base_gain = [theirs[i]["with_section"] - theirs[i]["without_section"] for i in common]
                if common:
                    row[f"{metric}_gain_vs_base"] = float(np.mean(mine_gain) - np.mean(base_gain))
                row[f"{metric}_gain_vs_base_lo"], row[f"{metric}_gain_vs_base_hi"] = stats.paired(
                    stats.mean_statistic(mine_gain), stats.mean_statistic(base_gain), len(common), resamples, seed)
                row[f"{metric}_gain_vs_base_degenerate"] = stats.degenerate(len(common))
        rows.append(row)
    return rows


def _base_group(groups: dict, model: str, category: str) -> list[dict] | None:
    if model == "base":
        return None
    return groups.get(("base", category))


TABLE_COLUMNS = ["model", "category", "items", "token_accuracy_with", "token_accuracy_without", "token_accuracy_gain",
                 "ident_match_items", "ident_match_with", "ident_match_without", "ident_match_gain",
                 "compile_rate_items", "compile_rate_gain", "token_accuracy_gain_vs_base", "ident_match_gain_vs_base"]


#: what each column of the spec-conditioned table is, as the UI shows it beside the column's name
_GAIN = "with minus without the section, the same items [95% paired bootstrap interval; 'degenerate' under 6 items]"
COLUMN_DESCRIPTIONS = {
    "model": "base or adapter:<checkpoint>",
    "category": "domain category of the held-out pair, or all",
    "items": "items scored: a datasheet section, the first half of the code that implements it, the rest to complete",
    "token_accuracy_with": "generative token accuracy with the section before the code prefix",
    "token_accuracy_without": "generative token accuracy from the code prefix alone",
    "token_accuracy_gain": f"token accuracy {_GAIN}",
    "ident_match_items": "items whose reference names hardware identifiers (hex constants, masks, register names)",
    "ident_match_with": "share of the reference's hardware identifiers generated, with the section",
    "ident_match_without": "share of the reference's hardware identifiers generated, without the section",
    "ident_match_gain": f"identifier match {_GAIN}",
    "compile_rate_items": "items whose own code compiles (gcc -fsyntax-only), the only ones a compile rate can judge",
    "compile_rate_gain": f"compile rate {_GAIN}",
    "token_accuracy_gain_vs_base": "the adapter's token-accuracy gain minus the base's [95% paired interval]",
    "ident_match_gain_vs_base": "the adapter's identifier-match gain minus the base's [95% paired interval]",
}


def cells(rows: list[dict]) -> list[dict[str, str]]:
    """Each row as text; a gain with its paired 95% interval in brackets, or "degenerate" when
    the items are too few for one (:func:`~.stats.degenerate`)."""
    def fmt(value, lo=None, hi=None, degenerate=False) -> str:
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            return str(value)
        if value is None or value != value:
            return "n/a"
        text = f"{value:+.3f}" if lo is not None else f"{value:.3f}"
        if degenerate:
            text += " (degenerate interval: too few items)"
        elif lo is not None and lo == lo and hi == hi:
            text += f" [{lo:+.3f}, {hi:+.3f}]"
        return text

    out = []
    for r in rows:
        row = {}
        for c in TABLE_COLUMNS:
            if c.endswith("_gain") or c.endswith("_gain_vs_base"):
                row[c] = fmt(r.get(c, float("nan")), r.get(f"{c}_lo", float("nan")), r.get(f"{c}_hi", float("nan")),
                             bool(r.get(f"{c}_degenerate")))
            else:
                row[c] = fmt(r.get(c, float("nan")))
        out.append(row)
    return out


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no spec-conditioned items: the held-out pairs gave none)"
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(c[k] for k in TABLE_COLUMNS) + " |" for c in cells(rows)]
    return "\n".join(lines)


NOTE = ("Spec-conditioned completion (held-out pairs): each item generated with its datasheet section before the code "
        "prefix and without it; *_gain = with - without, [95% paired bootstrap interval over the same items]; "
        "*_gain_vs_base: the adapter's gain minus the base's. ident_match: share of the reference's register names, "
        "hex constants and shift masks reproduced. compile_rate only over items whose own code compiles (n/a: none).")
