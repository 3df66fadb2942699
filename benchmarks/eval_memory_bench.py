"""Peak memory of loading a checkpoint for evaluation: one copy of the base model in the
training dtype with the adapter switched on and off (what ``checkpoint_eval`` and
``code_regression`` do now) against two fp32 copies, one plain and one under the adapter
(what they did before), in the same run.

    python benchmarks/eval_memory_bench.py [--runs 3] [--hidden 512] [--layers 4]

An OLMo-3-shaped model (OLMo-3's 100,278-id vocabulary, ``--hidden`` wide, ``--layers``
deep) is saved with a LoRA adapter (r=8 on all nine module types); each variant loads it in
its own process and runs one forward pass of 256 tokens through the base and the adapted
model. Printed: the median peak RSS above the interpreter with torch imported, per variant,
and the ratio. At OLMo-3-7B the same arithmetic gives 2 × 29.2 GB (fp32) against 14.6 GB
(bf16) of base weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def worker(variant: str, folder: Path) -> dict:
    import torch
    from peft import PeftModel

    from spark_pipeline.training.model import load_base_model

    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    ids = torch.randint(0, 100000, (1, 256), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if variant == "two-fp32-copies":
            base = load_base_model(str(folder / "base")).eval()
            adapted = PeftModel.from_pretrained(load_base_model(str(folder / "base")), str(folder / "adapter")).eval()
            base_logits = base(input_ids=ids, use_cache=False).logits.float()
        else:
            adapted = PeftModel.from_pretrained(load_base_model(str(folder / "base"), dtype=torch.bfloat16),
                                                str(folder / "adapter")).eval()
            with adapted.disable_adapter():
                base_logits = adapted(input_ids=ids, use_cache=False).logits.float()
        adapted_logits = adapted(input_ids=ids, use_cache=False).logits.float()
    return {"variant": variant, "peak_mib": (_status_kb("VmHWM") - before) / 1024,
            "held_mib": (_status_kb("VmRSS") - before) / 1024,
            "adapter_changes_logits": bool((adapted_logits - base_logits).abs().max() > 0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(worker(args.variant, args.folder)))
        return 0

    import torch

    from spark_pipeline.training.model import LoraSettings, add_adapters, build_base_model

    shape = {"hidden_size": args.hidden, "intermediate_size": args.hidden * 11 // 4, "num_hidden_layers": args.layers,
             "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 100278,
             "max_position_embeddings": 4096, "sliding_window": 4096, "full_attention_every": 4,
             "rope_theta": 500000.0, "pad_token_id": 100277, "eos_token_id": 100257}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = build_base_model(shape, seed=0)
        params = sum(p.numel() for p in base.parameters())
        base.save_pretrained(folder / "base")
        adapted = add_adapters(build_base_model(shape, seed=0), LoraSettings(8, 16, 0.0, True))
        with torch.no_grad():
            for p in adapted.parameters():
                if p.requires_grad:
                    p.normal_(0.0, 0.02)
        adapted.save_pretrained(folder / "adapter", save_embedding_layers=False)
        del base, adapted
        results: dict[str, list[dict]] = {"two-fp32-copies": [], "one-bf16-copy": []}
        for _ in range(args.runs):
            for variant in results:
                out = subprocess.run([sys.executable, __file__, "--variant", variant, "--folder", str(folder)],
                                     capture_output=True, text=True)
                if out.returncode:
                    sys.exit(out.stderr[-3000:])
                results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"OLMo-3-shaped model, {params / 1e6:.0f} M parameters (hidden {args.hidden}, {args.layers} layers, "
          f"100,278-id vocabulary), LoRA r=8 on all nine module types; medians of {args.runs} processes")
    med = {v: statistics.median(r["peak_mib"] for r in rows) for v, rows in results.items()}
    held = {v: statistics.median(r["held_mib"] for r in rows) for v, rows in results.items()}
    for variant, peak in med.items():
        ok = all(r["adapter_changes_logits"] for r in results[variant])
        print(f"  {variant:16} peak RSS {peak:8,.0f} MiB, held after the forward passes {held[variant]:8,.0f} MiB "
              f"above torch (adapter changes the logits: {ok})")
    print(f"ratio two fp32 copies / one bf16 copy: peak {med['two-fp32-copies'] / med['one-bf16-copy']:.2f}x, "
          f"held {held['two-fp32-copies'] / held['one-bf16-copy']:.2f}x (the weights alone: 4x; the peak includes "
          "the fp32 file read and cast to bf16, and both variants' fp32 logits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
