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
