"""General-code regression (§6.8): C++ problems in FullStackBench's AutoEval JSONL format
(``id``, ``content``, ``labels`` with ``difficulty``, ``test`` — the test program, a string
or ``{"code": ...}`` —, ``canonical_solution``). The real file is used when a path is given;
the project ships a small set it wrote (``data/cpp_problems.jsonl``) for the demo and tests.

A model writes a solution from the problem text; the solution and the test program are
compiled together with ``g++ -std=c++17``, and the program runs in a subprocess with a time
limit and an address-space limit, in its own empty folder and a bare environment. Compile
rate and pass rate are reported overall and by difficulty.
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

SAMPLE_PROBLEMS = Path(__file__).resolve().parent / "data" / "cpp_problems.jsonl"
_CODE = re.compile(r"```(?:cpp|c\+\+|cc)?\s*\n(.*?)(?:```|\Z)", re.S)


@dataclass
class Outcome:
    id: object
    difficulty: str
    compiled: bool
    passed: bool
    reason: str


def load_problems(path: Path | None = None) -> list[dict]:
    path = Path(path) if path else SAMPLE_PROBLEMS
    problems = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for p in problems:
        if isinstance(p.get("test"), dict):
            p["test_code"] = p["test"].get("code", "")
        else:
            p["test_code"] = p.get("test", "")
        labels = p.get("labels") or {}
        p["difficulty"] = labels.get("difficulty", "unknown") if isinstance(labels, dict) else "unknown"
    return problems


def prompt_for(problem: dict) -> str:
    return f"{problem['content']}\n\nAnswer with the C++ code only.\n```cpp\n"


def extract_code(generation: str) -> str:
    m = _CODE.search(generation)
    return (m.group(1) if m else generation.split("```")[0]).strip() + "\n"


def _limits(memory_mb: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_solution(solution: str, test_code: str, time_limit_s: float = 10.0, memory_mb: int = 512,
                 compile_timeout_s: float = 60.0) -> tuple[bool, bool, str]:
    """(compiled, passed, reason)."""
    gxx = shutil.which("g++")
    if gxx is None:
        raise RuntimeError("g++ is not installed: the general-code regression needs it")
    with tempfile.TemporaryDirectory(prefix="spark-cpp-") as tmp:
        src = Path(tmp) / "main.cpp"
        src.write_text(solution + "\n" + test_code)
        try:
            build = subprocess.run([gxx, "-std=c++17", "-O1", "-o", str(Path(tmp) / "prog"), str(src)],
                                   capture_output=True, text=True, timeout=compile_timeout_s)
        except subprocess.TimeoutExpired:
            return False, False, "compile timeout"
        if build.returncode != 0:
            lines = [ln for ln in build.stderr.splitlines() if "error" in ln] or build.stderr.splitlines() or [""]
            return False, False, "compile error: " + lines[0].replace(str(src), "main.cpp")[:200]
        try:
            run = subprocess.run([str(Path(tmp) / "prog")], cwd=tmp, env={"PATH": "/usr/bin:/bin"},
                                 capture_output=True, timeout=time_limit_s, preexec_fn=_limits(memory_mb))
        except subprocess.TimeoutExpired:
            return True, False, f"time limit ({time_limit_s:g} s)"
        if run.returncode != 0:
            return True, False, f"exit status {run.returncode}"
        return True, True, "passed"


def evaluate(solve, problems: list[dict], time_limit_s: float = 10.0, memory_mb: int = 512) -> list[Outcome]:
    """``solve(problem) -> code``: a model's answer for one problem."""
    out = []
    for p in problems:
        compiled, passed, reason = run_solution(solve(p), p["test_code"], time_limit_s, memory_mb)
        out.append(Outcome(p.get("id"), p["difficulty"], compiled, passed, reason))
    return out


def summarise(outcomes: list[Outcome]) -> dict:
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups["all"].append(o)
        groups[o.difficulty].append(o)
    return {k: {"problems": len(v), "compile_rate": sum(o.compiled for o in v) / len(v),
                "pass_rate": sum(o.passed for o in v) / len(v)} for k, v in groups.items()}


def code_regression_rows(checkpoint: Path, base_path: Path, key: str, settings, ev, progress=print
                         ) -> tuple[list[dict], dict[str, list[str]], int]:
    """§6.8 for one checkpoint: the base (adapter off) and base+adapter write a solution to every
    problem of ``ev.code_regression``; each is compiled and run. Returns rows per model and
    difficulty (compile and pass rates with Wilson intervals; for the adapter, the paired
    interval of its pass rate minus the base's), the first outcomes per model, and the number
    of problems. ``settings``: the :class:`~spark_pipeline.training.settings.TrainingSettings`
    the checkpoint was trained with; ``ev``: the :class:`~.evaluate.EvalSettings`."""
    import time

    import torch
    from peft import PeftModel

    from spark_pipeline.evaluation import stats
    from spark_pipeline.evaluation.metrics import generate_batch
    from spark_pipeline.records import sha256_file
    from spark_pipeline.tokens.tokenizer import load_tokenizer
    from spark_pipeline.training.model import load_base_model

    cfg = dict(ev.code_regression)
    problems = load_problems(cfg.get("problems") or None)
    lineage = json.loads((checkpoint / "lineage.json").read_text())
    tokenizer = load_tokenizer(lineage.get("tokenizer", settings.tokenizer))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # one copy of the base weights in the training dtype; the base answers with the adapter off
    model = PeftModel.from_pretrained(load_base_model(str(base_path), dtype=getattr(torch, settings.dtype),
                                                      device=device), str(checkpoint)).eval()
    prompts = [tokenizer.encode(prompt_for(p)) for p in problems]
    lineage_sha256 = sha256_file(checkpoint / "lineage.json")
    rows, examples, outcomes_by_model = [], {}, {}
    for name in ("base", f"adapter:{key}"):
        started = time.perf_counter()

        def report(done, name=name, started=started):
            elapsed = time.perf_counter() - started
            progress(f"code regression, {name}: {done}/{len(prompts)} problems generated, {elapsed:.1f} s, "
                     f"~{elapsed / done * (len(prompts) - done):.0f} s left")

        def generate():
            return generate_batch(model, prompts, int(cfg["max_new_tokens"]), tokenizer.eos_id, tokenizer.pad_id,
                                  device, ev.batch_size, report)

        if name == "base":
            with model.disable_adapter():
                answers = generate()
        else:
            answers = generate()
        code = {id(p): extract_code(tokenizer.decode(a)) for p, a in zip(problems, answers, strict=True)}
        outcomes = evaluate(lambda p, code=code: code[id(p)], problems, float(cfg["time_limit_s"]),
                            int(cfg["memory_mb"]))
        outcomes_by_model[name] = outcomes
        examples[name] = [o.reason for o in outcomes][:3]
        for difficulty, summary in sorted(summarise(outcomes).items()):
            group = [o for o in outcomes if difficulty == "all" or o.difficulty == difficulty]
            passed, compiled = sum(o.passed for o in group), sum(o.compiled for o in group)
            row = {"checkpoint": key, "model": name, "difficulty": difficulty, **summary,
                   "lineage_sha256": lineage_sha256}
            row["pass_rate_lo"], row["pass_rate_hi"] = stats.wilson(passed, len(group))
            row["compile_rate_lo"], row["compile_rate_hi"] = stats.wilson(compiled, len(group))
            row["pass_rate_vs_base_lo"], row["pass_rate_vs_base_hi"] = float("nan"), float("nan")
            row["pass_rate_vs_base_degenerate"] = False
            if name != "base":  # paired: the same problems, adapter minus base
                row["pass_rate_vs_base_degenerate"] = stats.degenerate(len(group))
                base_group = [o for o in outcomes_by_model["base"] if difficulty == "all" or o.difficulty == difficulty]
                row["pass_rate_vs_base_lo"], row["pass_rate_vs_base_hi"] = stats.paired(
                    stats.mean_statistic([float(o.passed) for o in group]),
                    stats.mean_statistic([float(o.passed) for o in base_group]), len(group), ev.bootstrap_resamples)
            rows.append(row)
    return rows, examples, len(problems)


def write_code_regression(out: Path, rows: list[dict]) -> None:
    """code_regression.parquet and its Markdown table (code_regression.md) under ``out``."""
    import math

    import pyarrow as pa
    import pyarrow.parquet as pq

    from spark_pipeline.records import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "code_regression.parquet")

    def interval(r, col):
        lo, hi = r.get(f"{col}_lo", float("nan")), r.get(f"{col}_hi", float("nan"))
        return f" [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else ""

    atomic_write_text(out / "code_regression.md", "| model | difficulty | problems | compile rate | pass rate | "
                      "pass rate − base [95% paired] |\n|---|---|---|---|---|---|\n" + "".join(
                          f"| {r['model']} | {r['difficulty']} | {r['problems']} | {r['compile_rate']:.3f}"
                          f"{interval(r, 'compile_rate')} | {r['pass_rate']:.3f}{interval(r, 'pass_rate')} | "
                          f"{interval(r, 'pass_rate_vs_base').strip() or '-'}"
                          f"{' (degenerate: too few problems)' if r.get('pass_rate_vs_base_degenerate') else ''} |\n"
                          for r in rows))
