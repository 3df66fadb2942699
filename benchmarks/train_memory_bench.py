"""Peak memory and time of one training forward+backward: the chunked causal-LM loss of the
training loop against the plain Hugging Face loss path (full logits), in the same run.

    python benchmarks/train_memory_bench.py [--runs 3] [--seq 2048] [--hidden 256] [--layers 2]
                                            [--chunk 512] [--steps 3] [--bf16]

A narrow OLMo-3-shaped model (OLMo-3's architecture and its real 100,278-id vocabulary, few
and narrow layers so that the vocabulary dominates as it does per token at 7B) with LoRA on
all nine module types takes one row of ``--seq`` tokens. Each variant runs in its own process
(so one variant's allocations cannot hide another's), ``--runs`` times:

* ``plain``: ``model(input_ids, labels=...)``, Hugging Face's own loss over the full logits;
* ``chunked``: :class:`spark_pipeline.training.loss.CausalLMLoss`, the loop's loss, ``--chunk``
  tokens of logits at a time under checkpointing.

Measured per process: the peak memory of the step above what the process held before it
(CPU: peak RSS, reset through ``/proc/self/clear_refs`` before the step, Linux; CUDA:
``torch.cuda.max_memory_allocated``), and the median time per step after one warm-up step.
Printed: each variant's medians over the runs, and the ratios plain / chunked. ``--bf16`` adds
the two variants again under bf16 autocast (the hero setting; slow on CPUs without bf16 units).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE = {"intermediate_size": 0, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 100278,
         "max_position_embeddings": 4096, "sliding_window": 4096, "full_attention_every": 4,
         "rope_theta": 500000.0, "pad_token_id": 100277, "eos_token_id": 100257}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(args) -> dict:
    """One variant in this process: build, warm up, measure."""
    import contextlib

    import torch

    from spark_pipeline.training.loss import CausalLMLoss
    from spark_pipeline.training.model import LoraSettings, add_adapters, build_base_model

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    shape = {**SHAPE, "hidden_size": args.hidden, "intermediate_size": args.hidden * 11 // 4,
             "num_hidden_layers": args.layers}
    model = add_adapters(build_base_model(shape, seed=0).to(device), LoraSettings(8, 16, 0.0, True))
    torch.manual_seed(1)  # adapters off their zero init (LoRA B, embedding A), alike in every variant,
    with torch.no_grad():  # so that every adapter matrix of lm_head and embed_tokens gets a gradient
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0.0, 0.02)
    forward = CausalLMLoss(model, args.chunk if args.variant.startswith("chunked") else 0)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.variant.endswith("bf16") \
        else contextlib.nullcontext
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape["vocab_size"] - 1, (1, args.seq), generator=gen).to(device)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        with autocast():
            loss = forward(ids, ids)
        loss.backward()
        return float(loss.detach())

    step()  # warm-up: allocator pools, lazy initialisations
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        if not _reset_peak_rss():
            raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs); run on Linux")
        before = _status_kb("VmRSS") * 1024
    loss = step()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _status_kb("VmHWM") * 1024 - before
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    grads = {n: p.grad.float().norm().item() for n, p in model.named_parameters()
             if p.grad is not None and ("lm_head" in n or "embed_tokens" in n)}
    return {"variant": args.variant, "device": str(device), "peak_bytes": peak, "loss": loss,
            "step_s": statistics.median(times), "head_grad_norms": grads}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process after the measured one")
    parser.add_argument("--bf16", action="store_true", help="also run both variants under bf16 autocast")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return 0

    variants = ["plain", "chunked"] + (["plain-bf16", "chunked-bf16"] if args.bf16 else [])
    common = ["--seq", str(args.seq), "--hidden", str(args.hidden), "--layers", str(args.layers),
              "--chunk", str(args.chunk), "--steps", str(args.steps)]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for run in range(args.runs):
        for variant in variants:  # interleaved, so drift in the machine hits both alike
            out = subprocess.run([sys.executable, __file__, "--variant", variant, *common],
                                 capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
            if out.returncode:
                sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)

    logits_mb = args.seq * SHAPE["vocab_size"] * 4 / 2**20
    device = results["plain"][0]["device"]
    print(f"one forward+backward, {args.seq} tokens x {SHAPE['vocab_size']:,}-id vocabulary, hidden {args.hidden}, "
          f"{args.layers} layers, LoRA r=8 on all nine module types, on {device}; medians of {args.runs} processes")
    print(f"(the full fp32 logits of one row: {logits_mb:,.0f} MiB)")
    med = {}
    for variant, rows in results.items():
        med[variant] = (statistics.median(r["peak_bytes"] for r in rows) / 2**20,
                        statistics.median(r["step_s"] for r in rows),
                        statistics.median(r["loss"] for r in rows))
        peak, secs, loss = med[variant]
        print(f"  {variant:13} peak {peak:8,.0f} MiB above the model ({peak / logits_mb:4.2f}x the logits)  "
              f"step {secs:6.3f} s  loss {loss:.4f}")
    for suffix in ("", "-bf16"):
        if f"plain{suffix}" in med:
            p, c = med[f"plain{suffix}"], med[f"chunked{suffix}"]
            print(f"ratio plain/chunked{suffix}: peak memory {p[0] / c[0]:.2f}x, time per step {p[1] / c[1]:.2f}x "
                  f"(time > 1: chunked is faster)")
    plain_g, chunk_g = results["plain"][0]["head_grad_norms"], results["chunked"][0]["head_grad_norms"]
    assert all(v > 0 for v in plain_g.values()), plain_g
    worst = max(abs(plain_g[k] - chunk_g[k]) / plain_g[k] for k in plain_g)
    print(f"lm_head / embed_tokens adapter gradient norms, chunked vs plain: {len(plain_g)} tensors, "
          f"largest relative difference {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
