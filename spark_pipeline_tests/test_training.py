"""The training program: adapters, optimizer, health, checkpoints, signals, resume, torchrun."""

import json
import math
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spark_pipeline.tokens.cache import build_cache
from spark_pipeline.tokens.tokenizer import DOLMA2_EOS, DOLMA2_PAD, DOLMA2_VOCAB
from spark_pipeline.training.health import HealthMonitor
from spark_pipeline.training.launch import base_model_folder, prepare_run, torchrun_command
from spark_pipeline.training.loop import lr_lambda
from spark_pipeline.training.model import LoraSettings, add_adapters, build_base_model, split_parameter_groups
from spark_pipeline.training.settings import TrainingSettings
from spark_pipeline_tests.test_tokens import _mixture

SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 2, "vocab_size": DOLMA2_VOCAB, "max_position_embeddings": 512, "sliding_window": 64,
         "full_attention_every": 2, "rope_theta": 500000.0, "pad_token_id": DOLMA2_PAD, "eos_token_id": DOLMA2_EOS}


def _settings(**overrides) -> TrainingSettings:
    values = {"base_model": "", "shape": SHAPE, "max_length": 128, "per_device_batch_size": 1,
              "gradient_accumulation": 2, "max_steps": 6, "save_every_steps": 3, "lora_r": 4, "lora_alpha": 8,
              "learning_rate": 5e-3, "dtype": "float32", "attn_implementation": "sdpa"}
    values.update(overrides)
    return TrainingSettings.load("demo", values)


@pytest.fixture
def cache(tmp_path):
    texts = [f"int function_{i}(int x) {{ return x * {i} + {i * i}; }} /* helper number {i} */" * (1 + i % 3)
             for i in range(24)]
    (tmp_path / "mix").mkdir()
    return Path(build_cache(_mixture(tmp_path / "mix", texts), tmp_path / "tokens", max_length=128).path)


def _run(tmp_path, cache, run_name, settings, nproc=1, resume="", extra=None, timeout=240):
    storage = tmp_path / "storage"
    base = base_model_folder(settings, storage)
    run_dir = tmp_path / run_name
    settings_file, lineage_file = prepare_run(run_dir, settings, {"mixture_hash": "m123", "pairs": {"p": "v1"}})
    cmd = torchrun_command(nproc, run_dir, cache, base, settings_file, lineage_file, resume=resume, extra=extra)
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1")
    env.pop("DAGSTER_PIPES_CONTEXT", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        import psutil

        for child in psutil.Process(proc.pid).children(recursive=True):  # torchrun's workers too
            child.kill()
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError("training did not finish:\n" + out[-3000:]) from None
    assert proc.returncode == 0, out[-3000:]
    return run_dir, json.loads((run_dir / "result.json").read_text()), out


def test_embedding_and_lm_head_adapters_change_after_a_step():
    model = add_adapters(build_base_model(SHAPE, seed=0), LoraSettings(4, 8, 0.0, True))
    embed, main = split_parameter_groups(model)
    names = {n for n, p in model.named_parameters() if p.requires_grad and ("embed_tokens" in n or "lm_head" in n)}
    assert names and len(embed) == len(names)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    opt = torch.optim.AdamW([{"params": main, "lr": 1e-2}, {"params": embed, "lr": 5e-3}])
    ids = torch.randint(0, 1000, (1, 32))
    for _ in range(2):  # LoRA B starts at zero: A moves on the first step, B and so the output on the next
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if n in names and not torch.equal(p, before[n])}
    assert changed == names, f"unchanged: {names - changed}"


def test_dual_learning_rates_and_cosine_schedule():
    settings = TrainingSettings.load("hero")
    assert settings.embedding_lr_ratio == 0.5 and settings.max_grad_norm == 5.0 and settings.seed == 3407
    assert (settings.per_device_batch_size, settings.gradient_accumulation, settings.gpus) == (4, 8, 8)
    f = lr_lambda(100, 0.10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5, abs=0.01) and f(100) == pytest.approx(0.0)
    assert all(f(i) >= f(i + 1) for i in range(10, 100))


def test_health_monitor_nan_and_spikes():
    h = HealthMonitor()
    for i in range(20):
        assert not h.check(i, 2.0, 1.0)["events"]
    spike = h.check(21, 3.5, 1.0)
    assert [e["kind"] for e in spike["events"]] == ["loss_spike"]
    assert [e["kind"] for e in h.check(22, 2.0, 2.5)["events"]] == ["grad_norm_spike"]
    first = h.check(23, float("nan"), 1.0, "ids [1, 2, 3]")
    assert first["skip_step"] and not first["emergency"] and first["events"][0]["batch_preview"] == "ids [1, 2, 3]"
    assert not h.check(24, float("inf"), 1.0)["emergency"]
    assert h.check(25, 2.0, float("nan"))["emergency"], "three non-finite steps in a row"
    assert h.nan_count == 3 and h.anomaly_count == 5
    assert not h.check(26, 2.0, 1.0)["skip_step"] and h.nan_streak == 0


def test_sigterm_then_resume_matches_a_straight_run(tmp_path, cache):
    settings = _settings()
    straight_dir, straight, _ = _run(tmp_path, cache, "straight", settings)
    assert straight["steps"] == 6 and straight["exit"] == "finished"
    logged = set(straight["logged_keys"])
    assert {"train/loss", "train/learning_rate", "train/grad_norm_post_clip", "train/throughput_tokens_per_sec",
            "train/step_time_sec", "train/anomaly_count", "train/nan_count"} <= logged

    run_dir, stopped, _ = _run(tmp_path, cache, "stopped", settings, extra=["--stop-after", "2"])
    assert stopped["exit"] == "SIGTERM" and stopped["steps"] == 2
    emergency = run_dir / "emergency_checkpoint"
    state = json.loads((emergency / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["rows_consumed"] == 4
    _, resumed, out = _run(tmp_path, cache, "stopped", settings, resume="latest")
    assert "starting at step 2" in out and resumed["steps"] == 6
    assert resumed["wandb_run_id"] == stopped["wandb_run_id"], "the resumed run continues the same W&B run"

    a = load_file(str(straight_dir / "checkpoints" / "checkpoint-6" / "adapter_model.safetensors"))
    b = load_file(str(run_dir / "checkpoints" / "checkpoint-6" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lineage = json.loads((run_dir / "checkpoints" / "checkpoint-6" / "lineage.json").read_text())
    assert lineage["mixture_hash"] == "m123" and lineage["pairs"] == {"p": "v1"} and lineage["step"] == 6
    assert lineage["wandb_run_id"] == stopped["wandb_run_id"] and lineage["config_hash"] == settings.fingerprint()


def test_checkpoint_is_a_standard_peft_adapter_without_the_base_embeddings(tmp_path, cache):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    settings = _settings(max_steps=3)
    run_dir, result, _ = _run(tmp_path, cache, "peft", settings)
    ckpt = Path(result["final_checkpoint"])
    weights = load_file(str(ckpt / "adapter_model.safetensors"))
    assert all("lora" in k for k in weights), "no full embed_tokens / lm_head matrices saved"
    base = AutoModelForCausalLM.from_pretrained(str(base_model_folder(settings, tmp_path / "storage")))
    model = PeftModel.from_pretrained(base, str(ckpt))
    loaded = {n: p for n, p in model.named_parameters() if "lora" in n}
    assert len(loaded) == len(weights)
    assert math.isfinite(result["final_loss"])


def test_two_processes_with_gloo_stay_in_sync(tmp_path, cache):
    settings = _settings(max_steps=3)
    run_dir, result, out = _run(tmp_path, cache, "ddp", settings, nproc=2)
    assert result["world_size"] == 2 and result["ranks_in_sync"]
    assert len(result["rank_checksums"]) == 2 and result["rank_checksums"][0] == result["rank_checksums"][1]
    ckpt = Path(result["final_checkpoint"])
    assert (ckpt / "rng_state_0.pt").exists() and (ckpt / "rng_state_1.pt").exists()
    assert out.count("trainable parameters") == 1, "only rank 0 reports"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["rows_consumed"] == 3 * 2 * 2


@pytest.mark.parametrize("sig", ["SIGINT", "SIGHUP"])
def test_other_signals_save_an_emergency_checkpoint(tmp_path, cache, sig):
    run_dir, result, _ = _run(tmp_path, cache, f"sig-{sig}", _settings(max_steps=4, save_every_steps=100),
                              extra=["--stop-after", "1", "--stop-signal", sig])
    assert result["exit"] == sig and result["steps"] == 1
    assert (run_dir / "emergency_checkpoint" / "adapter_model.safetensors").exists()


def test_checkpoints_upload_to_gcs_and_resume_from_gs(tmp_path, cache, monkeypatch):
    from spark_pipeline_tests.gcs_emulator import Emulator

    emu = Emulator().start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.host)
        settings = _settings(max_steps=3, save_every_steps=3)
        run_dir, result, out = _run(tmp_path, cache, "gcs", settings, extra=["--upload", "gs://spark-test/runs/gcs"])
        assert [u["state"] for u in result["uploads"]] == ["uploaded"]
        assert result["final_checkpoint_url"] == "gs://spark-test/runs/gcs/checkpoint-3"
        assert not (run_dir / "checkpoints" / "checkpoint-3").exists(), "deleted locally after the verified upload"
        _, resumed, out = _run(tmp_path, cache, "gcs-resume", _settings(max_steps=5, save_every_steps=5),
                               resume="gs://spark-test/runs/gcs/checkpoint-3")
        assert "starting at step 3" in out and resumed["steps"] == 5
    finally:
        emu.stop()


def test_a_signal_on_one_rank_stops_both_after_they_agree(tmp_path, cache):
    run_dir, result, _ = _run(tmp_path, cache, "ddp-signal", _settings(max_steps=4, save_every_steps=100), nproc=2,
                              extra=["--stop-after", "1"])  # only rank 0 receives SIGTERM
    assert result["exit"] == "SIGTERM" and result["steps"] == 1 and result["ranks_in_sync"]
    emergency = run_dir / "emergency_checkpoint"
    assert (emergency / "rng_state_0.pt").exists() and (emergency / "rng_state_1.pt").exists(), \
        "both ranks saved: they agreed to stop at the same step"
