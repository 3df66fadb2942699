"""The training program: adapters, optimizer, health, checkpoints, signals, resume, torchrun."""

import copy
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
from spark_pipeline.training.model import LoraSettings, add_adapters, build_base_model, split_parameter_groups
from spark_pipeline.training.schedule import schedule_horizon, warmup_cosine
from spark_pipeline.training.settings import SettingsError, TrainingSettings
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


def _start(tmp_path, cache, run_name, settings, nproc=1, resume="", extra=None, env=None):
    storage = tmp_path / "storage"
    base = base_model_folder(settings, storage)
    run_dir = tmp_path / run_name
    settings_file, lineage_file = prepare_run(run_dir, settings, {"mixture_hash": "m123", "pairs": {"p": "v1"}},
                                              resume=resume)
    cmd = torchrun_command(nproc, run_dir, cache, base, settings_file, lineage_file, resume=resume, extra=extra,
                           grace_s=settings.termination_grace_s)
    # W&B disabled (its offline service costs seconds per run) unless a test is about W&B
    env = dict(os.environ, **{"WANDB_MODE": "disabled", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", **(env or {})})
    env.pop("DAGSTER_PIPES_CONTEXT", None)
    for key in [k for k, v in env.items() if v is None]:
        env.pop(key)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    return run_dir, proc


def _finish(proc, timeout, expect_rc=0) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        import psutil

        for child in psutil.Process(proc.pid).children(recursive=True):  # torchrun's workers too
            child.kill()
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError("training did not finish:\n" + out[-3000:]) from None
    if expect_rc is not None:
        assert proc.returncode == expect_rc, out[-3000:]
    return out


def _run(tmp_path, cache, run_name, settings, nproc=1, resume="", extra=None, timeout=240, env=None, expect_rc=0):
    run_dir, proc = _start(tmp_path, cache, run_name, settings, nproc, resume, extra, env)
    out = _finish(proc, timeout, expect_rc)
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
    f = multipliers(100, 0.10, 130)
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[55] == pytest.approx(0.5, abs=0.01) and f[100] == pytest.approx(0.0)
    assert all(f[i] >= f[i + 1] for i in range(10, 129))
    assert max(f[100:]) == 0.0, "past the horizon the rate stays at zero (a bare cosine would rise again)"


def multipliers(horizon: int, warmup_ratio: float, steps: int) -> list[float]:
    """The schedule's multiplier of the initial rate at each step, for both parameter groups."""
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW([{"params": [params[0]], "lr": 2e-4}, {"params": [params[1]], "lr": 1e-4}])
    sched = warmup_cosine(opt, horizon, warmup_ratio)
    out = []
    for _ in range(steps):
        main, embed = (g["lr"] / g["initial_lr"] for g in opt.param_groups)
        assert main == pytest.approx(embed, abs=1e-15), "both groups follow one multiplier"
        out.append(main)
        opt.step()
        sched.step()
    return out


def closed_form(horizon: int, warmup_ratio: float, step: int) -> float:
    warmup = max(1, round(horizon * warmup_ratio))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, horizon - warmup))))


@pytest.mark.parametrize("horizon,ratio", [(100, 0.1), (1000, 0.03), (7, 0.5), (3, 0.1), (1, 0.1)])
def test_schedule_is_warmup_then_cosine_to_zero(horizon, ratio):
    got = multipliers(horizon, ratio, horizon + 20)
    assert got == pytest.approx([closed_form(horizon, ratio, s) for s in range(horizon + 20)], abs=1e-12)


def test_schedule_resumes_bit_for_bit_from_its_state():
    def run(stop_at=None, state=None):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=1e-3)
        sched = warmup_cosine(opt, 50, 0.1)
        start = 0
        if state:
            opt.load_state_dict(state[0])
            sched.load_state_dict(state[1])
            start = state[2]
        rates = []
        for step in range(start, 60):
            if step == stop_at:
                return copy.deepcopy((opt.state_dict(), sched.state_dict(), step))
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return rates

    full = run()
    for stop in (0, 3, 4, 5, 30, 50, 55):
        assert run(state=run(stop_at=stop)) == full[stop:], f"resumed at step {stop}"


def test_the_trainers_parts_work_one_by_one_in_process(tmp_path, cache, monkeypatch):
    """Set-up, a step, a checkpoint, an interrupted step and close, each called on its own; a
    second Trainer resumed from the checkpoint takes the same next step as the first one."""
    from spark_pipeline.training.trainer import Trainer

    monkeypatch.setenv("WANDB_DISABLED", "true")
    monkeypatch.delenv("DAGSTER_PIPES_CONTEXT", raising=False)
    settings = _settings()
    base = base_model_folder(settings, tmp_path / "storage")

    def trainer(run, resume=""):
        return Trainer(settings, run_dir=tmp_path / run, cache=cache, base_model=base, lineage={"mixture_hash": "m"},
                       resume=resume)

    first = trainer("a")
    assert (first.step, first.rows_consumed, first.rows_per_step) == (0, 0, 2)
    assert first.horizon == len(first.data) // 2 and first.max_steps == 6
    one = first.train_step()
    assert not one.interrupted and first.step == 1 and first.rows_consumed == 2
    assert math.isfinite(one.metrics["train/loss"]) and one.metrics["train/grad_norm"] > 0
    assert one.metrics["train/learning_rate"] == pytest.approx(5e-3 * closed_form(first.horizon, 0.1, 1))
    folder = first.checkpoint()
    assert folder.name == "checkpoint-1" and json.loads((folder / "trainer_state.json").read_text())["step"] == 1
    assert json.loads((folder / "lineage.json").read_text())["mixture_hash"] == "m"
    two = first.train_step()
    first.stop_signal = "SIGTERM"
    dropped = first.train_step()
    assert dropped.interrupted and first.step == 2, "a step cut by a signal is not counted"
    assert all(p.grad is None for p in first.trainable_params), "and its gradients are gone"
    assert first.close("SIGTERM") == 0
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["steps"] == 2 and result["exit"] == "SIGTERM" and result["final_checkpoint"] == str(folder)

    second = trainer("b", resume=str(folder))
    assert (second.step, second.rows_consumed, second.resumed_from) == (1, 2, str(folder))
    again = second.train_step()
    assert again.metrics["train/loss"] == two.metrics["train/loss"]
    assert again.metrics["train/learning_rate"] == two.metrics["train/learning_rate"]
    assert second.close("finished") == 0


def test_an_emergency_save_right_after_resuming_keeps_the_checkpoint_it_resumed_from(tmp_path, cache, monkeypatch):
    """A run stopped at step 1, resumed with ``latest`` and stopped again before it finished a
    step saves ``emergency-1`` once more: the same state, so the folder is kept as it was."""
    from spark_pipeline.training.trainer import Trainer

    monkeypatch.setenv("WANDB_DISABLED", "true")
    monkeypatch.delenv("DAGSTER_PIPES_CONTEXT", raising=False)
    settings = _settings()
    base = base_model_folder(settings, tmp_path / "storage")

    def stopped_run(resume=""):
        trainer = Trainer(settings, run_dir=tmp_path / "run", cache=cache, base_model=base, resume=resume)
        if not resume:
            assert not trainer.train_step().interrupted
        trainer.stop_signal = "SIGTERM"
        assert trainer.train_step().interrupted
        folder = trainer.checkpoint("emergency")
        assert trainer.close("SIGTERM") == 0
        return trainer, folder

    _, folder = stopped_run()
    assert folder.name == "emergency-1"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}
    resumed, again = stopped_run(resume="latest")
    assert resumed.resumed_from == str(folder) and again == folder
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()} == before


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
    emergency = run_dir / "checkpoints" / "emergency-2"
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


def _files(folder: Path) -> dict:
    """Every file under ``folder`` with its modification time and bytes."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


def _program(run_dir, cache, base, settings_file, *args, timeout=240):
    """The training program on its own (one process, no torchrun), as a shell would run it."""
    import sys

    env = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true", OMP_NUM_THREADS="1")
    env.pop("DAGSTER_PIPES_CONTEXT", None)
    return subprocess.run([sys.executable, "-m", "spark_pipeline.training", "--run-dir", str(run_dir), "--cache",
                           str(cache), "--base-model", str(base), "--settings", str(settings_file), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_a_run_folder_belongs_to_one_run(tmp_path, cache):
    """A second run started into a finished run's folder (the program's own command line, no
    --resume) used to finish with status 0, keep the first run's checkpoints as its own and
    overwrite its result.json. Now the program refuses before anything is written: without
    --resume, with other settings, from another folder's checkpoint, from an earlier checkpoint
    of the folder, and with --resume latest when there is nothing to continue from. The same
    for the preparation of a launch (settings.json, lineage_input.json)."""
    import shutil

    from spark_pipeline.training.runs import RunFolderError

    settings = _settings(max_steps=2, save_every_steps=1)
    run_dir, first, _ = _run(tmp_path, cache, "run", settings)
    assert first["steps"] == 2
    base = base_model_folder(settings, tmp_path / "storage")
    before = _files(run_dir)

    # the same command again, through torchrun, without --resume
    cmd = torchrun_command(1, run_dir, cache, base, run_dir / "settings.json", run_dir / "lineage_input.json",
                           grace_s=settings.termination_grace_s)
    env = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true", OMP_NUM_THREADS="1")
    env.pop("DAGSTER_PIPES_CONTEXT", None)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert again.returncode != 0, again.stdout[-2000:]
    assert (f"error: run folder {run_dir} already holds a run (checkpoints checkpoint-1, checkpoint-2; result.json "
            f"(exit finished at step 2); metrics.jsonl); refusing to write into it without resuming that run. "
            f"Resume it (--resume latest), or give this run a new folder") in again.stderr, again.stderr[-3000:]
    assert _files(run_dir) == before, "nothing was written or overwritten"

    other = tmp_path / "other-settings.json"
    other.write_text(json.dumps({**settings.to_dict(), "learning_rate": 1e-3}))
    refused = _program(run_dir, cache, base, other, "--resume", "latest")
    assert refused.returncode == 2 and (
        f"error: run folder {run_dir} holds another run: its settings.json differs from this run's settings "
        f"(learning_rate 0.005 there, 0.001 here)") in refused.stderr, refused.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere" / "checkpoint-1"
    shutil.copytree(run_dir / "checkpoints" / "checkpoint-1", elsewhere)
    refused = _program(run_dir, cache, base, run_dir / "settings.json", "--resume", str(elsewhere))
    assert refused.returncode == 2 and f"and {elsewhere} is not one of its checkpoints" in refused.stderr, \
        refused.stderr[-3000:]

    earlier = run_dir / "checkpoints" / "checkpoint-1"
    refused = _program(run_dir, cache, base, run_dir / "settings.json", "--resume", str(earlier))
    assert refused.returncode == 2 and (
        f"error: run folder {run_dir} holds checkpoints after step 1 (checkpoint-2); resuming from {earlier} would "
        "train those steps again over them") in refused.stderr, refused.stderr[-3000:]
    assert _files(run_dir) == before

    # the run's checkpoints went to the bucket and were deleted here: latest finds none without --upload
    gone = tmp_path / "gone"
    gone.mkdir()
    for name in ("settings.json", "lineage_input.json", "result.json"):
        shutil.copy2(run_dir / name, gone / name)
    gone_before = _files(gone)
    refused = _program(gone, cache, base, gone / "settings.json", "--resume", "latest")
    assert refused.returncode == 2 and (
        f"error: run folder {gone} already holds a run (result.json (exit finished at step 2)), but --resume latest "
        "found no healthy checkpoint of it to continue from (without --upload the bucket was not searched)"
    ) in refused.stderr, refused.stderr[-3000:]
    assert _files(gone) == gone_before

    lineage = json.loads((run_dir / "lineage_input.json").read_text())
    with pytest.raises(RunFolderError, match="its settings.json differs from this run's settings"):
        prepare_run(run_dir, _settings(max_steps=3, save_every_steps=1), lineage, resume="latest")
    with pytest.raises(RunFolderError, match="refusing to write into it without resuming that run"):
        prepare_run(run_dir, settings, lineage)
    with pytest.raises(RunFolderError, match=r"its lineage_input.json names other data \(mixture_hash 'm123' there, "
                                             r"'m456' here\)"):
        prepare_run(run_dir, settings, {**lineage, "mixture_hash": "m456"}, resume="latest")
    assert _files(run_dir) == before, "nothing was written or overwritten"
    prepare_run(run_dir, settings, {**lineage, "dagster_run_id": "next"}, resume="latest")  # a resume: fine
    assert json.loads((run_dir / "lineage_input.json").read_text())["dagster_run_id"] == "next"


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
    assert (run_dir / "checkpoints" / "emergency-1" / "adapter_model.safetensors").exists()


def test_a_signal_on_one_rank_stops_both_after_they_agree(tmp_path, cache):
    run_dir, result, _ = _run(tmp_path, cache, "ddp-signal", _settings(max_steps=4, save_every_steps=100), nproc=2,
                              extra=["--stop-after", "1"])  # only rank 0 receives SIGTERM
    assert result["exit"] == "SIGTERM" and result["steps"] == 1 and result["ranks_in_sync"]
    emergency = run_dir / "checkpoints" / "emergency-1"
    assert (emergency / "rng_state_0.pt").exists() and (emergency / "rng_state_1.pt").exists(), \
        "both ranks saved: they agreed to stop at the same step"


def _load_state(base_folder, folder, settings):
    """Load a checkpoint the way the program resumes: adapters, optimizer, schedule, RNG."""
    from spark_pipeline.training.checkpoint import load_checkpoint
    from spark_pipeline.training.model import load_base_model

    model = add_adapters(load_base_model(str(base_folder)),
                         LoraSettings(settings.lora_r, settings.lora_alpha, settings.lora_dropout, settings.use_rslora))
    embed, main = split_parameter_groups(model)
    opt = torch.optim.AdamW([{"params": main}, {"params": embed}], lr=1e-3)
    sched = warmup_cosine(opt, 10, 0.1)
    return load_checkpoint(folder, model, opt, sched, rank=1)


def test_sigterm_from_outside_mid_step_saves_within_the_grace_period(tmp_path, cache):
    """A scheduler's SIGTERM reaches torchrun, which gives the workers ``termination_grace_s``
    (20 s here) before SIGKILL. A step here takes 4 x 8 s = 32 s, longer than that and than
    torchrun's own 30 s default; the ranks agree after the micro-batch in flight, drop the
    unfinished step and write a loadable emergency checkpoint in time."""
    import threading
    import time

    settings = _settings(max_steps=3, gradient_accumulation=4, termination_grace_s=20, save_every_steps=100)
    run_dir, proc = _start(tmp_path, cache, "outside", settings, nproc=2, extra=["--slow-micro-batch-s", "8"])
    lines: list[str] = []
    started = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "starting at step 0" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(180), "".join(lines)[-3000:]
        time.sleep(2)  # into the first micro-batch of step 1
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # to torchrun only, as to a pod's first process
        proc.wait(timeout=90)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(10)
    out = "".join(lines)
    assert elapsed < settings.termination_grace_s, f"{elapsed:.1f} s: the workers were killed\n{out[-3000:]}"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["exit"] == "SIGTERM" and result["steps"] == 0, "the unfinished step was dropped"
    emergency = run_dir / "checkpoints" / "emergency-0"
    assert (emergency / "rng_state_0.pt").exists() and (emergency / "rng_state_1.pt").exists()
    state = _load_state(base_model_folder(settings, tmp_path / "storage"), emergency, settings)
    assert state["step"] == 0 and state["rows_consumed"] == 0
    assert "SIGTERM during step 1: emergency checkpoint of step 0" in out


_LAUNCHER = """
import json, sys
from pathlib import Path

import dagster as dg

from spark_pipeline.defs.training import launch_training
from spark_pipeline.training.settings import TrainingSettings

settings = TrainingSettings.from_dict(json.loads(Path(sys.argv[1]).read_text()))
run_dir, cache, base = (Path(a) for a in sys.argv[2:5])


@dg.asset
def training(context: dg.AssetExecutionContext, pipes_subprocess_client: dg.PipesSubprocessClient):
    launch_training(context, pipes_subprocess_client, settings, run_dir, cache, base, {"mixture_hash": "m"}, nproc=2)


dg.materialize([training], resources={"pipes_subprocess_client": dg.PipesSubprocessClient()})
"""


def _alive(procs) -> list:
    import psutil

    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def _alive_after(procs, seconds: float) -> list:
    """The processes still running (zombies count as gone) after at most ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(0.5)
    return _alive(procs)


def _wait_for_steps(run_dir: Path, seconds: float, what) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().strip():
            return
        time.sleep(0.5)
    raise AssertionError(f"no step within {seconds} s:\n{what()}")


@pytest.mark.parametrize("killed", ["launcher", "torchrun"])
def test_training_processes_die_with_the_process_that_launched_them(tmp_path, cache, killed):
    """SIGKILL mid-run of the process that launched training the way the pipeline does
    (launch_training through Dagster Pipes: the Dagster step, the sweep's command), or of torchrun
    itself: no torchrun and no worker of it is left running. torchrun gets SIGTERM when its
    launcher dies and stops its workers as a scheduler's SIGTERM does; a worker gets SIGTERM when
    torchrun dies. Either way the workers save an emergency checkpoint and exit. (Before: both
    went on training, orphans, until the end of the run.)"""
    import sys

    import psutil

    settings = _settings(max_steps=400, save_every_steps=400, termination_grace_s=20)
    base = base_model_folder(settings, tmp_path / "storage")
    run_dir = tmp_path / "run"
    log = tmp_path / "launcher.log"
    env = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true", OMP_NUM_THREADS="1")
    env.pop("DAGSTER_PIPES_CONTEXT", None)
    if killed == "launcher":
        (tmp_path / "settings.json").write_text(json.dumps(settings.to_dict()))
        with log.open("w") as out:
            launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(tmp_path / "settings.json"),
                                         str(run_dir), str(cache), str(base)], env=env, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
    else:
        run_dir, launcher = _start(tmp_path, cache, "run", settings, nproc=2, extra=["--slow-micro-batch-s", "0.5"])
        lines: list[str] = []
        import threading

        threading.Thread(target=lambda: lines.extend(launcher.stdout), daemon=True).start()
    tree: list = []
    try:
        _wait_for_steps(run_dir, 300, lambda: log.read_text()[-3000:] if killed == "launcher" else "".join(lines))
        tree = psutil.Process(launcher.pid).children(recursive=True)
        if killed == "torchrun":
            tree.append(psutil.Process(launcher.pid))
        workers = [p for p in tree if "spark_pipeline.training" in " ".join(p.cmdline()) and "--run-dir" in p.cmdline()
                   and "torch.distributed.run" not in " ".join(p.cmdline()) and "torchrun" not in p.cmdline()[1]]
        assert len(workers) == 2, [p.cmdline() for p in tree]
        launcher.kill()  # SIGKILL: no handler runs in the killed process
        launcher.wait()
        left = _alive_after(tree, 90)
        assert not left, f"still running 90 s after the {killed} was killed: {left}"
    finally:  # whatever happened: nothing of this run is left behind
        mine = [p for p in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(p.info["cmdline"] or [])]
        for p in _alive(tree + mine):
            p.kill()
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait()
    emergency = sorted((run_dir / "checkpoints").glob("emergency-*"))
    assert emergency and (emergency[0] / "rng_state_0.pt").exists() and (emergency[0] / "rng_state_1.pt").exists(), \
        "both workers saved the state of their last finished step"
    assert json.loads((run_dir / "result.json").read_text())["exit"] == "SIGTERM"


@pytest.mark.skipif(not os.uname().sysname == "Linux", reason="the parent-death signal is Linux's")
def test_the_lifeline_ties_torchrun_to_its_launcher_and_stops_when_the_launcher_is_already_gone():
    """``python -m spark_pipeline.training.lifeline CMD`` runs CMD in its own process with the
    parent-death signal set (it survives exec) and its pid recorded for the workers; a launcher
    that died before the call (the process already has another parent) stops it at once."""
    import sys

    env = dict(os.environ, SPARK_LAUNCHER_PID=str(os.getpid()))
    probe = ("import ctypes, os; s = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(s), 0, 0, 0); "
             "print(s.value, os.environ['SPARK_TORCHRUN_PID'] == str(os.getpid()))")
    tied = subprocess.run([sys.executable, "-m", "spark_pipeline.training.lifeline", sys.executable, "-c", probe],
                          env=env, capture_output=True, text=True, timeout=120)
    assert tied.returncode == 0 and tied.stdout.split() == [str(int(signal.SIGTERM)), "True"], tied.stderr
    gone = subprocess.Popen(["true"])
    gone.wait()
    env["SPARK_LAUNCHER_PID"] = str(gone.pid)
    late = subprocess.run([sys.executable, "-m", "spark_pipeline.training.lifeline", "sleep", "60"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert late.returncode == -signal.SIGTERM and f"its parent {gone.pid} is gone; stopping" in late.stderr


def test_resume_latest_reads_the_bucket_and_never_overwrites_a_checkpoint(tmp_path, cache, monkeypatch):
    """Checkpoints go to the GCS emulator (real client), verified, then deleted locally; a run
    resumed with ``latest`` finds the newest one in the bucket, downloads it (the gs:// resume
    path) and adds its own checkpoints without writing anything in the bucket again."""
    from spark_pipeline.training.gcs import make_client
    from spark_pipeline_tests.gcs_emulator import Emulator

    emu = Emulator().start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.host)
        settings = _settings(max_steps=4, save_every_steps=2)
        url = "gs://spark-test/runs/hero/20261122-093015-a3f1"
        run_dir, first, _ = _run(tmp_path, cache, "run", settings, extra=["--upload", url, "--stop-after", "3"])
        assert first["exit"] == "SIGTERM" and [u["state"] for u in first["uploads"]] == ["uploaded", "uploaded"]
        assert not list((run_dir / "checkpoints").glob("*-*")), "local copies deleted after the verified uploads"

        def blobs():
            return {b.name: (b.md5_hash, b.size, b.updated) for b in make_client().list_blobs("spark-test")}

        before = blobs()
        _, resumed, out = _run(tmp_path, cache, "run", settings, resume="latest", extra=["--upload", url])
        assert f"starting at step 3 from {tmp_path / 'run' / 'downloaded' / 'emergency-3'}" in out
        assert resumed["steps"] == 4 and resumed["wandb_run_id"] == first["wandb_run_id"]
        assert resumed["final_checkpoint_url"] == f"{url}/checkpoint-4"
        assert not (tmp_path / "run" / "checkpoints" / "checkpoint-4").exists(), "deleted after the verified upload"
        after = blobs()
        assert all(after[name] == before[name] for name in before), "nothing in the bucket was written again"
        assert {n.split("/")[-2] for n in set(after) - set(before)} == {"checkpoint-4"}
    finally:
        emu.stop()


def test_a_diverging_run_fails_and_its_checkpoints_are_marked_unhealthy(tmp_path, cache):
    """A huge learning rate: the first step's loss is finite, its update wrecks the weights.
    The parameter-norm check stops the run, the program exits non-zero, and the checkpoints
    written after the last healthy step carry the UNHEALTHY marker."""
    from spark_pipeline.training.trainer import latest_checkpoint

    settings = _settings(max_steps=6, save_every_steps=1, learning_rate=1e3)
    run_dir, proc = _start(tmp_path, cache, "diverged", settings)
    out = _finish(proc, 240, expect_rc=None)
    assert proc.returncode != 0, out[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["exit"] == "diverged" and "adapter norm" in result["diverged"]
    assert result["steps"] == 1 and result["last_healthy_step"] == 0 and math.isfinite(result["final_loss"])
    marked = {Path(p).name for p in result["unhealthy_checkpoints"]}
    assert marked == {"checkpoint-1", "emergency-1"}
    assert all((run_dir / "checkpoints" / name / "UNHEALTHY").exists() for name in marked)
    assert latest_checkpoint(run_dir) is None, "resume never picks an unhealthy checkpoint"


def test_bad_settings_stop_the_program_before_the_model_loads(tmp_path):
    import sys

    bad = {**_settings().to_dict(), "learning_rate": "1e-4"}
    (tmp_path / "settings.json").write_text(json.dumps(bad))
    proc = subprocess.run([sys.executable, "-m", "spark_pipeline.training", "--run-dir", str(tmp_path / "r"),
                           "--cache", str(tmp_path / "none"), "--base-model", str(tmp_path / "none"),
                           "--settings", str(tmp_path / "settings.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "learning_rate" in proc.stderr and "'1e-4'" in proc.stderr and "settings.json" in proc.stderr


def test_wandb_that_cannot_start_online_falls_back_to_offline(tmp_path, cache):
    from spark_pipeline_tests.gcs_emulator import free_port

    env = {"WANDB_MODE": None, "WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{free_port()}",
           "SPARK_WANDB_INIT_TIMEOUT": "5", "WANDB_DISABLED": None}
    run_dir, result, out = _run(tmp_path, cache, "wandb", _settings(max_steps=2, save_every_steps=2), env=env)
    assert "W&B could not start in online mode" in out and "logging offline instead" in out
    assert result["steps"] == 2 and result["exit"] == "finished"
    assert list((run_dir / "wandb").glob("offline-run-*")), "the metrics went to an offline W&B run"


def test_a_hanging_bucket_holds_a_finished_run_no_longer_than_the_deadline(tmp_path, cache, monkeypatch, capsys):
    from spark_pipeline.cli import main as spark
    from spark_pipeline.training.gcs import MARKER, make_client
    from spark_pipeline_tests.gcs_emulator import Emulator

    emu = Emulator().start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.host)
        emu.freeze()  # accepts connections, never answers
        url = "gs://spark-test/runs/hero/20261122-093015-a3f1"
        settings = _settings(max_steps=2, save_every_steps=2, upload_deadline_s=3)
        run_dir, result, out = _run(tmp_path, cache, "hang", settings, extra=["--upload", url], timeout=150)
        assert [u["state"] for u in result["uploads"]] == ["pending"]
        assert "upload deadline" in result["uploads"][0]["error"]
        assert (run_dir / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").exists(), "local copy kept"
        assert f"python -m spark_pipeline upload {run_dir} --to {url}" in out
        emu.thaw()
        assert spark(["upload", str(run_dir), "--to", url]) == 0
        assert "uploaded" in capsys.readouterr().out
        names = {b.name for b in make_client().list_blobs("spark-test")}
        assert f"runs/hero/20261122-093015-a3f1/checkpoint-2/{MARKER}" in names
    finally:
        emu.stop()


def test_bf16_autocast_runs_the_adapter_matmuls_in_bf16_and_agrees_with_fp32():
    """Stated tolerance: loss within 2% and every adapter gradient with cosine similarity
    above 0.99 to the fp32 one, on a small OLMo-3-shaped model with rsLoRA on all nine modules."""
    from spark_pipeline.training.loss import CausalLMLoss

    shape = {**SHAPE, "vocab_size": 512, "pad_token_id": 511, "eos_token_id": 510}
    model = add_adapters(build_base_model(shape, seed=0), LoraSettings(8, 16, 0.0, True))
    with torch.no_grad():  # B starts at zero; give it values so every adapter matmul matters
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_embedding_A" in name:
                p.normal_(0, 0.02)
    forward = CausalLMLoss(model, chunk_tokens=16)
    ids = torch.randint(0, 510, (2, 48), generator=torch.Generator().manual_seed(1))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def loss_and_grads(autocast: bool):
        model.zero_grad()
        dtypes = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
                 for n, m in model.named_modules() if n.endswith(("lora_A.default", "lora_B.default"))]
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
        with ctx:
            loss = forward(ids, ids.clone())
        loss.backward()
        for h in hooks:
            h.remove()
        return float(loss.detach()), {n: p.grad.detach().clone() for n, p in trainable.items()}, dtypes

    loss32, grads32, dtypes32 = loss_and_grads(False)
    loss16, grads16, dtypes16 = loss_and_grads(True)
    assert dtypes16 and set(dtypes16) == {torch.bfloat16}, "every adapter matmul ran in bf16"
    assert set(dtypes32) == {torch.float32}
    assert all(p.dtype == torch.float32 for p in trainable.values()), "master weights stay fp32"
    assert abs(loss16 - loss32) / loss32 < 0.02
    for name, g in grads32.items():
        cos = torch.nn.functional.cosine_similarity(g.flatten(), grads16[name].flatten(), dim=0)
        assert cos > 0.99, f"{name}: cosine {cos:.4f}"


def test_chunked_loss_gives_the_plain_loss_and_gradients_incl_lm_head_and_embedding_adapters():
    from spark_pipeline.training.loss import CausalLMLoss

    shape = {**SHAPE, "vocab_size": 700, "pad_token_id": 699, "eos_token_id": 698}
    model = add_adapters(build_base_model(shape, seed=0), LoraSettings(4, 8, 0.0, True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_embedding_A" in name:
                p.normal_(0, 0.02)
    ids = torch.randint(0, 698, (2, 40), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[0, :7] = -100  # unlabelled tokens are left out the same way
    results = []
    for chunk in (0, 13):  # 0: the model's own loss over full logits
        model.zero_grad()
        loss = CausalLMLoss(model, chunk)(ids, labels)
        loss.backward()
        results.append((float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (plain, g_plain), (chunked, g_chunked) = results
    assert chunked == pytest.approx(plain, rel=1e-5)
    special = [n for n in g_plain if "lm_head" in n or "embed_tokens" in n]
    assert len(special) == 4 and all(g_plain[n].abs().sum() > 0 for n in special)
    for name in g_plain:
        assert torch.allclose(g_chunked[name], g_plain[name], rtol=1e-4, atol=1e-6), name


def test_schedule_horizon_is_an_epoch_and_max_steps_only_stops():
    hero = TrainingSettings.load("hero")
    rows_per_step = hero.per_device_batch_size * hero.gradient_accumulation * hero.gpus
    epoch_rows = 40_000 * rows_per_step  # an epoch four times longer than the stop step
    horizon = schedule_horizon(hero, epoch_rows, rows_per_step)
    assert horizon == 40_000 and hero.max_steps < horizon
    assert closed_form(horizon, hero.warmup_ratio, hero.max_steps) > 0.7, \
        "the learning rate at the stop step is not forced towards zero"
    assert multipliers(horizon, hero.warmup_ratio, 6)[5] == pytest.approx(closed_form(horizon, hero.warmup_ratio, 5))
    assert closed_form(hero.max_steps, hero.warmup_ratio, hero.max_steps) == pytest.approx(0.0)
    fixed = TrainingSettings.load("hero", {"schedule_horizon": 12_345})
    assert schedule_horizon(fixed, epoch_rows, rows_per_step) == 12_345


def test_flops_per_token_for_the_hero_model():
    from spark_pipeline.training.trainer import flops_per_token

    hero = TrainingSettings.load("hero")
    assert flops_per_token(hero.shape, hero.max_length, hero.lora_r) / 1e9 == pytest.approx(37.2, abs=0.05)


def test_a_complete_checkpoint_is_never_written_again_and_a_different_one_is_an_error(tmp_path):
    """The same state again (an emergency save right after resuming from that checkpoint) keeps
    the folder as it is; other adapter weights, rows consumed or data under the same name are an
    error that names what differs, and nothing in the folder changes."""
    from spark_pipeline.training.checkpoint import CheckpointExistsError, save_checkpoint

    model = add_adapters(build_base_model({**SHAPE, "vocab_size": 300, "pad_token_id": 299, "eos_token_id": 298},
                                          seed=0), LoraSettings(4, 8, 0.0, True))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    sched = warmup_cosine(opt, 10, 0.1)
    state = {"step": 4, "rows_consumed": 8, "data_fingerprint": "d1"}
    folder = save_checkpoint(tmp_path / "emergency-4", model, opt, sched, state, {}, 0, 1)

    def snapshot():
        return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}

    before = snapshot()
    assert save_checkpoint(folder, model, opt, sched, dict(state), {}, 0, 1) == folder, "the same state: kept"
    assert snapshot() == before
    for other, what in (({**state, "rows_consumed": 10}, "rows_consumed 8 there, 10 here"),
                        ({**state, "data_fingerprint": "d2"}, "data_fingerprint 'd1' there, 'd2' here")):
        with pytest.raises(CheckpointExistsError, match=what):
            save_checkpoint(folder, model, opt, sched, other, {}, 0, 1)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_A" in n).add_(1.0)
    with pytest.raises(CheckpointExistsError, match=r"emergency-4 already holds a checkpoint of step 4 with other "
                                                    r"adapter weights \(1 of 32 tensors differ"):
        save_checkpoint(folder, model, opt, sched, dict(state), {}, 0, 1)
    assert snapshot() == before, "nothing was written"
    with pytest.raises(FileExistsError, match="immutable"):
        save_checkpoint(folder, model, opt, sched, {**state, "step": 5}, {}, 0, 1)


def test_a_checkpoint_saved_with_the_old_lambda_schedule_resumes_on_the_chain(tmp_path):
    """Checkpoints written before the schedule became torch's chain of schedulers hold one
    LambdaLR's state; resuming one replays its steps and continues on the same curve."""
    from spark_pipeline.training.checkpoint import load_checkpoint, save_checkpoint

    def model_and_optimizer():
        model = add_adapters(build_base_model({**SHAPE, "vocab_size": 300, "pad_token_id": 299, "eos_token_id": 298},
                                              seed=0), LoraSettings(4, 8, 0.0, True))
        return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    model, opt = model_and_optimizer()
    old = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: closed_form(20, 0.1, step))
    for _ in range(7):
        opt.step()
        old.step()
    folder = save_checkpoint(tmp_path / "checkpoint-7", model, opt, old, {"step": 7}, {}, 0, 1)
    model, opt = model_and_optimizer()
    chain = warmup_cosine(opt, 20, 0.1)
    assert load_checkpoint(folder, model, opt, chain, rank=0)["step"] == 7
    rates = []
    for _ in range(5):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        chain.step()
    assert rates == pytest.approx([1e-3 * closed_form(20, 0.1, s) for s in range(7, 12)], abs=1e-15)


def test_health_parameter_norm_catches_weights_that_blow_up_with_a_finite_loss():
    h = HealthMonitor(param_norm_factor=2.0)
    h.baseline(9.0)  # before the first update
    assert not h.check_params(1, 10.0)["emergency"] and not h.check_params(2, 11.5)["emergency"]
    assert h.last_healthy_step == 2
    verdict = h.check_params(3, 500.0)
    assert verdict["emergency"] and verdict["events"][0]["kind"] == "param_norm_jump"
    assert h.last_healthy_step == 2 and "adapter norm" in h.diverged
    assert HealthMonitor().check_params(1, float("nan"))["emergency"]


def test_settings_of_runs_from_before_target_modules_existed_still_load():
    """A run's settings.json written before `lora_target_modules` existed (found on a real run:
    its release failed with 'lora_target_modules is missing') trained all nine module types."""
    from spark_pipeline.training.model import LORA_TARGETS

    old = TrainingSettings.load("demo").to_dict()
    del old["lora_target_modules"]
    assert TrainingSettings.from_dict(old).lora_target_modules == LORA_TARGETS
    with pytest.raises(SettingsError, match="lora_target_modules"):
        TrainingSettings.from_dict({**old, "lora_target_modules": ["mlp"]})


def test_the_shutdown_watchdog_leaves_with_the_runs_own_exit_code():
    """A diverged run whose shutdown hangs must still exit 3 (the watchdog used to exit 0)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from spark_pipeline.training.trainer import _exit_after_grace; "
                           "_exit_after_grace(1, 3, 7.0)"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert "rank 1: shutdown did not finish within 7 s" in done.stderr


def test_step_batches_read_the_same_rows_as_the_formula_one_step_ahead_in_the_background():
    import threading

    import numpy as np

    from spark_pipeline.training.batches import StepBatches

    class Rows:
        def __init__(self):
            self.readers = []

        def __len__(self):
            return 10

        def __getitem__(self, i):
            self.readers.append((i, threading.current_thread().name))
            return {"input_ids": np.full(4, i), "labels": np.full(4, i)}

    data = Rows()
    ranks = [StepBatches(data, per_rank=2, accumulation=2, world=2, rank=r) for r in (0, 1)]
    try:
        first = [[b["input_ids"][:, 0].tolist() for b in sb.get(0)] for sb in ranks]
        assert first == [[[0, 1], [4, 5]], [[2, 3], [6, 7]]], "every row of the step once, across ranks"
        second = ranks[0].get(8)
        assert [b["input_ids"][:, 0].tolist() for b in second] == [[8, 9], [2, 3]], "wraps around the rows"
        here = threading.current_thread().name
        assert sorted(i for i, name in data.readers if name == here) == list(range(8)), \
            "only the first step is read by the training thread; the next ones were prefetched"
        # A resumed run (a fresh source at the same rows_consumed) reads the same rows.
        again = StepBatches(data, per_rank=2, accumulation=2, world=2, rank=0)
        assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(again.get(8), second, strict=True))
        again.close()
    finally:
        for sb in ranks:
            sb.close()
