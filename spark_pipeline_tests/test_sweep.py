"""The sweep of paper §5: its settings, the analysis against the paper's own Table 7 -> Table 8,
pruning, and a sweep killed mid-trial that resumes on a real SQLite-backed Optuna study."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from spark_pipeline.sweep.analysis import analyse, to_markdown
from spark_pipeline.sweep.settings import SweepError, SweepSettings, cell_name, effective_scale

# Table 7 of the paper: (rank, target, learning rate, final loss) of its ten runs.
TABLE_7 = [(512, "full", 3.45e-5, 1.015), (512, "attention", 3.45e-5, 1.034), (256, "full", 5.0e-5, 1.068),
           (256, "attention", 5.0e-5, 1.078), (256, "full", 3.45e-5, 1.095), (256, "attention", 3.45e-5, 1.109),
           (128, "full", 5.0e-5, 1.162), (128, "attention", 5.0e-5, 1.163), (128, "full", 3.45e-5, 1.184),
           (128, "attention", 3.45e-5, 1.192)]
# Table 8 of the paper: mean final loss per level, to three decimals.
TABLE_8 = {("lora_r", 128): 1.175, ("lora_r", 256): 1.087, ("lora_r", 512): 1.025,
           ("targets", "attention"): 1.115, ("targets", "full"): 1.105,
           ("learning_rate", 3.45e-5): 1.105, ("learning_rate", 5.0e-5): 1.118}
SPACE = {"lora_r": [128, 256, 512], "targets": ["attention", "full"], "learning_rate": [3.45e-5, 5.0e-5]}


def _table7_runs():
    return [{"trial": i, "params": {"lora_r": r, "targets": t, "learning_rate": lr}, "state": "COMPLETE", "value": v,
             "seed": 0} for i, (r, t, lr, v) in enumerate(TABLE_7)]


def _study(runs):
    import optuna
    from optuna.distributions import CategoricalDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    for r in runs:
        study.add_trial(optuna.trial.create_trial(
            params=r["params"], distributions={k: CategoricalDistribution(v) for k, v in SPACE.items()},
            value=r["value"]))
    return study


def test_table_7_reproduces_table_8_and_the_matched_cells_reverse_the_learning_rate():
    runs = _table7_runs()
    result = analyse(runs, SPACE, alpha_per_rank=2, study=_study(runs))
    means = {(m["factor"], m["level"]): m["mean"] for m in result["marginal_means"]}
    assert set(means) == set(TABLE_8)
    for key, paper in TABLE_8.items():
        assert abs(means[key] - paper) <= 0.0005 + 1e-12, (key, means[key], paper)  # the paper's three decimals
    assert result["marginal_range"]["lora_r"] == pytest.approx(0.150, abs=0.001)  # Table 8's Δ 128 -> 512

    # the two missing cells are both rank 512 at the higher rate: the design is unbalanced ...
    assert result["design"]["missing"] == ["r512-attention-lr5e-05", "r512-full-lr5e-05"]
    # ... so the marginal means favour 3.45e-5, while every matched cell favours 5e-5
    [lr] = [c for c in result["matched"] if c["factor"] == "learning_rate"]
    assert (lr["a"], lr["b"], lr["cells"], lr["b_better_in"]) == (3.45e-5, 5.0e-5, 4, 4)
    assert lr["mean_diff"] == pytest.approx(((1.068 - 1.095) + (1.078 - 1.109) + (1.162 - 1.184) + (1.163 - 1.192)) / 4)
    assert lr["hi"] < 0, "the 95% interval over the matched cells excludes zero"
    warnings = " ".join(result["warnings"])
    assert "unbalanced design" in warnings
    assert "learning_rate: the marginal means favour 3.45e-05" in warnings and "5e-05 is better" in warnings
    # least squares says the same as the matched cells, with an interval
    effect = next(e for e in result["main_effects"]["effects"] if e["factor"] == "learning_rate")
    assert effect["level"] == 5.0e-5 and effect["hi"] < 0 and result["main_effects"]["df"] == 5
    rank512 = next(e for e in result["main_effects"]["effects"] if e["level"] == 512)
    assert rank512["hi"] < -0.1, "rank dominates, held-fixed too"
    # the rank/target comparisons agree with the marginal means: no warning for them
    assert "lora_r:" not in warnings and "targets:" not in warnings
    fanova = result["importances"]["fanova"]
    assert max(fanova, key=fanova.get) == "lora_r"
    assert set(result["importances"]["ped_anova"]) == set(SPACE) or "error" in result["importances"]["ped_anova"]
    markdown = to_markdown(result)
    assert "Matched comparisons" in markdown and "**Warning.**" in markdown
    # the effective adapter scale beside each learning rate: lr x 2 sqrt(r)
    assert effective_scale({"learning_rate": 3.45e-5, "lora_r": 512}, 2) == pytest.approx(3.45e-5 * 2 * 512 ** 0.5)
    assert "r512: 0.00156" in markdown


def test_table_9_lists_r128_full_5e5_twice_the_duplicate_is_named_and_dropped():
    """The paper's Table 9 has 11 rows for 10 configurations: r128-full-5e-5 twice (peak / mean
    gradient norm 4.37 / 2.14, then 2.09 / 1.61). Fed as runs (seed 0, as in the paper; the
    repeat's loss is the one Table 7 gives that configuration), the analysis used to count it
    twice: Table 8's means shifted and it only said the cells had different numbers of seeds."""
    runs = _table7_runs()
    first = next(r for r in runs if r["params"] == {"lora_r": 128, "targets": "full", "learning_rate": 5.0e-5})
    first.update(peak_grad_norm=4.37, mean_grad_norm=2.14)
    runs.append({**first, "trial": len(runs), "peak_grad_norm": 2.09, "mean_grad_norm": 1.61})
    assert len(runs) == 11
    result = analyse(runs, SPACE, alpha_per_rank=2)
    assert result["duplicate_runs"] == [{"configuration": "r128-full-lr5e-05", "seed": 0, "trial": 10,
                                         "kept_trial": first["trial"], "state": "COMPLETE", "value": 1.162}]
    assert result["runs"] == result["completed_runs"] == 10
    warnings = " ".join(result["warnings"])
    assert "duplicate run(s)" in warnings and "r128-full-lr5e-05 seed 0 (trial 10, a repeat of trial 6)" in warnings
    assert "different numbers of seeds" not in warnings and result["design"]["seeds_per_cell"] == [1]
    means = {(m["factor"], m["level"]): m["mean"] for m in result["marginal_means"]}
    for key, paper in TABLE_8.items():
        assert abs(means[key] - paper) <= 0.0005 + 1e-12, (key, means[key], paper)  # Table 8 as without the repeat
    row = next(s for s in result["stability"] if s["configuration"] == "r128-full-lr5e-05")
    assert (row["runs"], row["peak_grad_norm"], row["mean_grad_norm"]) == (1, 4.37, 2.14), "the first row is kept"
    assert "r128-full-lr5e-05 seed 0 (trial 10" in to_markdown(result)


def test_a_balanced_design_with_consistent_effects_has_no_warnings():
    runs = [{"trial": i, "params": {"lora_r": r, "targets": t}, "state": "COMPLETE", "seed": s,
             "value": 1.2 - 0.1 * (r == 512) - 0.01 * (t == "full") + 0.001 * s}
            for i, (r, t, s) in enumerate((r, t, s) for r in (128, 512) for t in ("attention", "full") for s in (0, 1))]
    result = analyse(runs, {"lora_r": [128, 512], "targets": ["attention", "full"]})
    assert result["warnings"] == [] and result["design"]["balanced"]
    effects = {e["factor"]: e for e in result["main_effects"]["effects"]}
    assert effects["lora_r"]["effect"] == pytest.approx(-0.1) and effects["targets"]["effect"] == pytest.approx(-0.01)


def test_sweep_settings_overlay_and_errors_name_the_key_and_file(tmp_path):
    hero = SweepSettings.load("hero")
    assert len(hero.cells()) == 12 and hero.seeds == [0, 1] and hero.max_steps == 150
    over = hero.training_overrides({"lora_r": 256, "targets": "attention", "learning_rate": 5e-5}, seed=1)
    assert over["lora_alpha"] == 512 and over["lora_target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert over["seed"] == 1 and over["max_steps"] == 150 and over["schedule_horizon"] == 150
    assert over["per_device_batch_size"] * over["gradient_accumulation"] == 128  # Table 6's effective batch
    assert cell_name({"lora_r": 512, "targets": "full", "learning_rate": 3.45e-5}) == "r512-full-lr3.45e-05"

    bad = tmp_path / "my-sweep.yaml"
    bad.write_text(yaml.safe_dump({"sampler": "bayes", "space": {"targets": ["mlp"], "lora_r": {"low": 8}},
                                   "training": {"warmup": 0.1}}))
    with pytest.raises(SweepError) as err:
        SweepSettings.load("hero", str(bad))
    text = str(err.value)
    assert str(bad) in text and "sampler" in text and "'mlp' is not in target_sets" in text
    assert "space.lora_r" in text and "training.warmup: unknown key (did you mean warmup_ratio?)" in text


def _grid_settings(tmp_path, **extra) -> SweepSettings:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"study": "resume-test", "seeds": [0, 1], "max_steps": 1,
                                    "space": {"lora_r": [4, 8], "targets": ["attention", "full"],
                                              "learning_rate": [1e-3]}, **extra}))
    return SweepSettings.load("demo", str(path))


_WORKER = """
import json, sys, time
from pathlib import Path
from spark_pipeline.sweep.settings import SweepSettings
from spark_pipeline.sweep.study import open_study, run_study
settings = SweepSettings.load("demo", sys.argv[1])
calls = Path(sys.argv[3])
def train(params, seed, number):
    with calls.open("a") as f:
        f.write(json.dumps({"params": params, "seed": seed, "trial": number}) + "\\n")
    if number == 2 and seed == 1:
        time.sleep(600)  # killed here, in the middle of the third configuration
    return {"seed": seed, "final_loss": 1.0 + params["lora_r"] / 100 + seed / 1000, "min_loss": 1.0}
run_study(open_study(settings, sys.argv[2]), settings, train, log=lambda m: None)
"""


def test_a_killed_sweep_resumes_without_running_finished_trials_again(tmp_path):
    from optuna.trial import TrialState

    from spark_pipeline.sweep.study import open_study, run_study

    settings = _grid_settings(tmp_path)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    calls = tmp_path / "calls.jsonl"
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path / "grid.yaml"), url, str(calls)],
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.time() + 120
        while not (calls.exists() and len(calls.read_text().splitlines()) >= 6):
            assert worker.poll() is None and time.time() < deadline, "the worker never reached the third trial"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    first = [json.loads(line) for line in calls.read_text().splitlines()]
    study = open_study(settings, url)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING], "killed mid-trial"

    resumed = []

    def train(params, seed, number):
        resumed.append((json.dumps(params, sort_keys=True), seed))
        return {"seed": seed, "final_loss": 1.0 + params["lora_r"] / 100 + seed / 1000, "min_loss": 1.0}

    logs = []
    run_study(study, settings, train, log=logs.append)
    assert any("worker that died" in m for m in logs)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL,
                                         TrialState.COMPLETE, TrialState.COMPLETE]
    done_before = {json.dumps(c["params"], sort_keys=True) for c in first[:4]}
    assert not done_before & {p for p, _ in resumed}, "no finished configuration was trained again"
    assert len(resumed) == 4, "the killed configuration and the last one, at both seeds"
    assert trials[3].params == trials[2].params, "the killed configuration ran again first"
    assert sorted(json.dumps(t.params, sort_keys=True) for t in trials if t.state == TrialState.COMPLETE) == \
        sorted(json.dumps(c, sort_keys=True) for c in settings.cells())
    run_study(study, settings, train)
    assert len(study.trials) == 5, "a finished study runs nothing"


def test_unstable_configurations_are_pruned_with_their_reason_and_the_analysis_says_a_cell_is_missing(tmp_path):
    from optuna.trial import TrialState

    from spark_pipeline.defs.sweep import study_runs
    from spark_pipeline.sweep.study import open_study, run_study

    settings = _grid_settings(tmp_path, prune={"non_finite": True, "max_grad_norm_spikes": 1})

    def train(params, seed, number):
        spikes = 3 if params["lora_r"] == 8 and params["targets"] == "full" else 0
        nan = 1 if params["lora_r"] == 8 and params["targets"] == "attention" and seed == 1 else 0
        return {"seed": seed, "final_loss": 1.0 - params["lora_r"] / 100, "min_loss": 0.9,
                "grad_norm_spikes": spikes, "non_finite": nan, "peak_grad_norm": 9.0 if spikes else 1.0}

    study = open_study(settings, f"sqlite:///{tmp_path / 'optuna.db'}")
    run_study(study, settings, train)
    by_config = {cell_name(t.params): t for t in study.trials}
    assert by_config["r8-full-lr0.001"].state == TrialState.PRUNED
    assert "3 grad-norm spikes" in by_config["r8-full-lr0.001"].user_attrs["pruned_reason"]
    assert by_config["r8-attention-lr0.001"].state == TrialState.PRUNED
    assert "seed 1: 1 non-finite" in by_config["r8-attention-lr0.001"].user_attrs["pruned_reason"]
    runs = study_runs(study, settings)
    result = analyse(runs, settings.space, study=study)
    assert result["pruned_runs"] == 3 and "unbalanced design" in " ".join(result["warnings"])
    stab = {s["configuration"]: s for s in result["stability"]}
    assert stab["r8-full-lr0.001"]["state"] == "PRUNED" and stab["r8-full-lr0.001"]["grad_norm_spikes"] == 3


def test_the_study_storage_defaults_to_sqlite_under_the_storage_root(tmp_path, monkeypatch):
    from spark_pipeline.sweep.study import storage_url

    monkeypatch.delenv("SPARK_SWEEP_STORAGE", raising=False)
    assert storage_url(tmp_path) == f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}"
    monkeypatch.setenv("SPARK_SWEEP_STORAGE", "postgresql://u:p@db/optuna")
    assert storage_url(tmp_path) == "postgresql://u:p@db/optuna"


@pytest.mark.parametrize("sampler", ["tpe", "gp"])
def test_tpe_and_gp_samplers_run_the_configured_number_of_trials_over_lists_and_ranges(tmp_path, sampler):
    from optuna.trial import TrialState

    from spark_pipeline.sweep.study import open_study, run_study

    path = tmp_path / "bayes.yaml"
    path.write_text(yaml.safe_dump({"study": f"bayes-{sampler}", "sampler": sampler, "trials": 4, "seeds": [0, 1],
                                    "space": {"lora_r": [4, 8], "targets": ["attention", "full"],
                                              "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}}))
    settings = SweepSettings.load("demo", str(path))
    study = open_study(settings, f"sqlite:///{tmp_path / 'optuna.db'}")
    seen = []

    def train(params, seed, number):
        seen.append((params["lora_r"], params["targets"], params["learning_rate"], seed))
        return {"seed": seed, "final_loss": 1.0 + abs(math.log10(params["learning_rate"]) + 3), "min_loss": 1.0}

    run_study(study, settings, train)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert len(seen) == 8 and all(1e-4 <= lr <= 1e-2 for _, _, lr, _ in seen)
    result = analyse([{"params": t.params, "state": "COMPLETE", "value": t.value, "trial": t.number}
                      for t in study.trials], settings.space, study=study)
    tried = sorted({lr for _, _, lr, _ in seen})
    assert [m["level"] for m in result["marginal_means"] if m["factor"] == "learning_rate"] == tried, \
        "a range's levels are the values the sampler tried"
    assert {m["factor"] for m in result["marginal_means"]} == {"lora_r", "targets", "learning_rate"}


def test_sweep_command_says_what_is_wrong_with_a_settings_file_before_running_anything(tmp_path, capsys):
    """It used to start the job, fail inside it, then crash with a traceback on the same file."""
    from spark_pipeline.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"sampler": "bayes"}))
    assert main(["sweep", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "sampler = 'bayes' (str): expected 'grid', 'tpe' or 'gp'" in err and str(bad) in err
    assert "profile demo's sweep section" in err
    assert not (tmp_path / "storage" / "sweep").exists(), "nothing ran"


def _processes_under(folder) -> list:
    """Live processes whose command line names ``folder`` (the test's storage root)."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(folder) in part for part in p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_a_sweep_killed_mid_trial_restarts_finishes_and_leaves_no_process_behind(tmp_path, isolated_env):
    """`spark sweep` killed with SIGKILL mid-trial used to leave torchrun and its worker training,
    and the restarted sweep waited forever for the `gpu` pool slot the dead run still held."""
    import shutil

    from spark_pipeline.settings import PROJECT_DIR

    storage = isolated_env
    shutil.copy(PROJECT_DIR / "dagster.yaml", Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml")  # pool gpu: 1 slot
    config = tmp_path / "one-cell.yaml"
    config.write_text(yaml.safe_dump({"study": "kill-test", "seeds": [0], "max_steps": 12,
                                      "space": {"lora_r": [4], "targets": ["attention"], "learning_rate": [2.0e-3]}}))
    env = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "spark_pipeline", "sweep", "--config", str(config)]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not any("spark_pipeline.training" in " ".join(p.cmdline()) for p in _processes_under(storage)):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial started"
            time.sleep(0.2)
        time.sleep(1)  # mid-trial
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    deadline = time.monotonic() + 90
    while _processes_under(storage) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [" ".join(p.cmdline())[:120] for p in _processes_under(storage)]
    for p in _processes_under(storage):
        p.kill()
    assert not left, f"processes outlived the killed sweep: {left}"

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "is gone" in second.stdout and "pool slot(s) freed: gpu" in second.stdout, second.stdout[-3000:]
    assert "moved to" in second.stdout + second.stderr or "left running" in second.stdout + second.stderr
    analysis = json.loads((storage / "sweep" / "kill-test" / "analysis.json").read_text())
    assert analysis["completed_runs"] == 1
    assert not _processes_under(storage), "nothing is left running"
