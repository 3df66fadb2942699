"""Time to the first step after resuming at step 10 versus step 1,000: resume is by index
(rows consumed), so it must not grow with the step.

    python benchmarks/resume_bench.py [--runs 3]

A small OLMo-3-shaped model (hidden 32, 2 layers, OLMo-3's 100,278-id vocabulary) trains on
a tokenized cache of generated C-like text with 64-token rows, one row per step, once to
step 10 and once to step 1,000; each checkpoint is then resumed for one more step, ``--runs``
times, through torchrun like a real run. Printed: the medians of the launch-to-first-step
time and of the checkpoint-loading time, and their ratio (1,000 over 10).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark_pipeline.corpus.parquet import MIXTURE_SCHEMA, write_table  # noqa: E402
from spark_pipeline.records import atomic_write_json  # noqa: E402
from spark_pipeline.tokens.cache import build_cache  # noqa: E402
from spark_pipeline.training.launch import base_model_folder, prepare_run, torchrun_command  # noqa: E402
from spark_pipeline.training.settings import TrainingSettings  # noqa: E402

WORK = Path(tempfile.gettempdir()) / "spark_resume_bench"
SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 2, "vocab_size": 100278, "max_position_embeddings": 256, "sliding_window": 64,
         "full_attention_every": 2, "rope_theta": 500000.0, "pad_token_id": 100277, "eos_token_id": 100257}


def run(run_dir: Path, cache: Path, settings: TrainingSettings, resume: str = "", max_steps: int = 0) -> dict:
    base = base_model_folder(settings, WORK / "storage")
    settings_file, lineage_file = prepare_run(run_dir, settings, {"mixture_hash": "bench"}, resume)
    cmd = torchrun_command(1, run_dir, cache, base, settings_file, lineage_file, resume, max_steps)
    env = dict(os.environ, WANDB_DISABLED="true", OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stdout[-2000:] + out.stderr[-2000:])
    return json.loads((run_dir / "result.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "mix").mkdir(parents=True)
    texts = [f"int f{i}(int x) {{ return x + {i}; }} /* {i} */" * 3 + "<|endoftext|>" for i in range(400)]
    rows = [{"seq": i, "text": t, "category": "general", "source": "domain", "pair_id": "b", "section_id": "s",
             "chunk_index": i, "sample_hash": str(i), "truncated": False} for i, t in enumerate(texts)]
    write_table(WORK / "mix" / "shard-00000.parquet", rows, MIXTURE_SCHEMA)
    atomic_write_json(WORK / "mix" / "manifest.json", {"mixture_hash": "bench", "shards": [
        {"file": "shard-00000.parquet", "rows": len(rows)}]})
    cache = Path(build_cache(WORK / "mix", WORK / "tokens", max_length=64).path)
    results = {}
    for target in (10, 1000):
        settings = TrainingSettings.load("demo", {"shape": SHAPE, "max_length": 64, "per_device_batch_size": 1,
                                                  "gradient_accumulation": 1, "max_steps": target + 1,
                                                  "save_every_steps": target, "lora_r": 4, "lora_alpha": 8})
        trained = run(WORK / f"to-{target}", cache, settings, max_steps=target)
        assert trained["steps"] == target, trained
        firsts, loads = [], []
        for i in range(args.runs):
            resumed = run(WORK / f"resume-{target}-{i}", cache, settings,
                          resume=str(WORK / f"to-{target}" / "checkpoints" / f"checkpoint-{target}"),
                          max_steps=target + 1)
            assert resumed["steps"] == target + 1
            firsts.append(resumed["seconds_to_first_step"])
            loads.append(resumed["resume_load_seconds"])
        results[target] = (statistics.median(firsts), statistics.median(loads))
        print(f"resume at step {target:5d}: first step done {results[target][0]:.3f} s after the program started, "
              f"checkpoint loaded in {results[target][1]:.3f} s (medians of {args.runs})")
    print(f"ratio step 1000 / step 10: first step {results[1000][0] / results[10][0]:.2f}x, "
          f"load {results[1000][1] / results[10][1]:.2f}x (1.0 means no growth with the step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
