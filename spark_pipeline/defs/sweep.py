"""``sweep_trials`` and ``sweep_analysis``: the hyperparameter sweep of paper §5 on the same
training program and tokenized cache as ``train_hero``."""


import datetime
import json
import math
from collections import Counter

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from spark_pipeline.config import write_resolved
from spark_pipeline.defs.resources import (
    SparkConfig,
    SparkStorage,
    parquet_table_metadata,
    stage_asset,
    table_metadata,
)
from spark_pipeline.defs.training import launch_training, training_inputs
from spark_pipeline.plots import embed_png, sparkline_markdown, sweep_plots
from spark_pipeline.records import atomic_write_json, atomic_write_text, read_json
from spark_pipeline.sweep.settings import SweepError, SweepSettings, cell_name, effective_scale
from spark_pipeline.training.launch import base_model_folder
from spark_pipeline.training.reporter import read_metrics
from spark_pipeline.training.settings import SettingsError, TrainingSettings


class SweepConfig(dg.Config):
    sweep: str | None = Field(default=None, description="a YAML file overlaying configs/sweep.yaml (and the "
                              "profile's sweep section); unset: those alone")
    max_trials: int | None = Field(default=None, ge=1, description="stop after this many trials in this run "
                                   "(unset: until the study is done); the next materialization continues")


def _settings(spark_config: SparkConfig, config_file: str | None) -> SweepSettings:
    try:
        return SweepSettings.load(spark_config.name(), config_file or "")
    except SweepError as exc:
        raise dg.Failure(str(exc)) from exc


RUN_COLUMNS = ("trial", "state", "configuration", "seed", "value", "init_loss", "final_loss", "min_loss", "reduction",
               "peak_grad_norm", "mean_grad_norm", "grad_norm_spikes", "loss_spikes", "non_finite", "diverged",
               "tokens_per_sec", "steps", "run_dir", "pruned_reason")


def study_runs(study, settings: SweepSettings) -> list[dict]:
    """One record per training run (a trial's configuration at one seed), from the study."""
    out = []
    for t in study.get_trials(deepcopy=False):
        params = t.params or t.user_attrs.get("configuration", {})
        if not params:
            continue
        for run in t.user_attrs.get("runs", []) or [{"seed": None}]:
            value = run.get(settings.objective)
            out.append({"trial": t.number, "state": t.state.name, "params": params,
                        "configuration": cell_name(params),
                        "value": value if isinstance(value, float) and math.isfinite(value) else None,
                        "pruned_reason": t.user_attrs.get("pruned_reason", ""),
                        **{k: run[k] for k in RUN_COLUMNS if k in run}})
    return out


@stage_asset(
    "sweep",
    kinds={"optuna", "pytorch"},
    deps=["tokenized_cache"],
    pool="gpu",
    code_version="1",
    description="§5: the hyperparameter sweep as an Optuna study (configs/sweep.yaml: rank x target modules x "
    "learning rate, seeds, grid/TPE/GP). Each configuration is trained at every seed by the training program of "
    "train_hero, launched the same way; unstable ones are recorded pruned. The study lives in a database (SQLite "
    "under {storage}/sweep/ or the instance's Postgres), so a killed sweep resumes where it stopped. Writes "
    "{storage}/sweep/{study}/runs.parquet.",
)
def sweep_trials(context: dg.AssetExecutionContext, config: SweepConfig, storage: SparkStorage,
                 spark_config: SparkConfig, pipes_subprocess_client: dg.PipesSubprocessClient):
    from spark_pipeline.sweep.study import (
        display_url,
        next_configuration,
        open_study,
        run_study,
        storage_url,
        summarize,
    )

    sweep = _settings(spark_config, config.sweep)
    base_settings = TrainingSettings.load(spark_config.name())
    cache, lineage = training_inputs(context, storage, base_settings)
    base = base_model_folder(base_settings, storage.path())
    folder = storage.path("sweep", sweep.study)
    url = storage_url(storage.path(), context.instance)
    shown_url = display_url(url)
    study = open_study(sweep, url)
    context.log.info(f"study {sweep.study} ({sweep.sampler}, seeds {sweep.seeds}) in {shown_url}; "
                     f"{len(study.trials)} trials so far")

    def train(params: dict, seed: int, trial_number: int) -> dict:
        name = f"{cell_name(params)}-s{seed}"
        run_dir = folder / "runs" / name
        summary_file = run_dir / "summary.json"
        if summary_file.exists():  # trained before a crash: not run again
            context.log.info(f"trial {trial_number}: {name} already trained, reusing {summary_file}")
            return json.loads(summary_file.read_text())
        if run_dir.exists():  # a run cut short: kept aside, never overwritten
            aside = run_dir.with_name(f"{name}.incomplete-{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%S%f}")
            run_dir.rename(aside)
            context.log.warning(f"trial {trial_number}: an unfinished {name} moved to {aside.name}; training it again")
        try:
            settings = TrainingSettings.load(spark_config.name(), sweep.training_overrides(params, seed))
        except SettingsError as exc:
            raise dg.Failure(f"sweep configuration {name}: {exc}") from exc
        context.log.info(f"trial {trial_number}: training {name} ({sweep.max_steps} steps)")
        trial_lineage = {**lineage, "sweep": {"study": sweep.study, "trial": trial_number, "params": params,
                                              "seed": seed, "storage": shown_url}}
        try:
            launch_training(context, pipes_subprocess_client, settings, run_dir, cache, base, trial_lineage, nproc=1,
                            max_steps=sweep.max_steps, wandb_group=f"sweep-{sweep.study}",
                            profile=spark_config.name())
        except dg.Failure:
            diverged = (run_dir / "result.json").exists() and \
                json.loads((run_dir / "result.json").read_text()).get("exit") == "diverged"
            if not diverged:
                raise  # a crash, not instability: the trial fails and the sweep stops here
            context.log.warning(f"trial {trial_number}: {name} diverged")
        result = read_json(run_dir / "result.json")
        steps = read_metrics(run_dir)
        summary = {**summarize(steps, sweep, seed, result), "run_dir": str(run_dir), "configuration": name}
        atomic_write_json(summary_file, summary)
        return summary

    finished = run_study(study, sweep, train, max_trials=config.max_trials or 0, log=context.log.info,
                         warn=context.log.warning)
    runs = study_runs(study, sweep)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{**{k: r.get(k) for k in RUN_COLUMNS},
             **{f"param_{k}": (v if not isinstance(v, list) else json.dumps(v)) for k, v in r["params"].items()},
             "effective_scale": effective_scale(r["params"], sweep.alpha_per_rank)} for r in runs]
    if rows:
        pq.write_table(pa.Table.from_pylist(rows), folder / "runs.parquet")
    write_resolved(folder, spark_config.name())
    atomic_write_json(folder / "study.json", {"study": sweep.study, "storage": shown_url,
                                              "sampler": sweep.sampler, "space": sweep.space_as_data(), "seeds": sweep.seeds,
                                              "objective": sweep.objective, "sources": sweep.sources,
                                              "alpha_per_rank": sweep.alpha_per_rank})
    states = dict(Counter(t.state.name for t in study.get_trials(deepcopy=False)))
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    best = min(complete, key=lambda t: t.value) if complete else None
    table = table_metadata(
        [{"trial": r["trial"], "configuration": r["configuration"], "seed": r.get("seed"), "state": r["state"],
          sweep.objective: r["value"], "peak_grad_norm": r.get("peak_grad_norm"), "tokens_per_sec": r.get("tokens_per_sec"),
          "anomalies": (r.get("grad_norm_spikes") or 0) + (r.get("loss_spikes") or 0) + (r.get("non_finite") or 0)}
         for r in runs],
        ("trial", "configuration", "seed", "state", sweep.objective, "peak_grad_norm", "tokens_per_sec", "anomalies"))
    done = next_configuration(study, sweep) is None
    return dg.MaterializeResult(metadata={
        **parquet_table_metadata(folder / "runs.parquet"), "study": sweep.study, "sampler": sweep.sampler,
        "storage": shown_url, "trials_by_state": dg.MetadataValue.json(states),
        "trials_this_run": dg.MetadataValue.json(finished), "study_finished": done, "runs": table,
        "best": dg.MetadataValue.json({"configuration": cell_name(best.params), "value": best.value} if best else None),
        "objective_inline": dg.MetadataValue.md(sparkline_markdown(
            [t.value for t in sorted(complete, key=lambda t: t.number)], f"{sweep.objective} per completed trial")),
        "path": dg.MetadataValue.path(str(folder))})


@stage_asset(
    "sweep",
    kinds={"optuna", "parquet"},
    deps=["sweep_trials"],
    code_version="1",
    description="§5's tables done carefully: marginal means (Table 8) beside matched-cell comparisons and "
    "least-squares main effects with intervals across seeds, Optuna's fANOVA and PED-ANOVA importances, the "
    "stability table (Table 9) and the effective adapter scale lr x alpha/sqrt(r). Warns when cells are missing "
    "and when the marginal ranking disagrees with the matched one. Writes {storage}/sweep/{study}/analysis.md.",
    check_specs=[dg.AssetCheckSpec("analysis_without_warnings", asset="sweep_analysis",
                                   description="The design is balanced and the marginal means agree with the "
                                   "matched comparisons (a warning otherwise: read the analysis before choosing).")],
)
def sweep_analysis(context: dg.AssetExecutionContext, config: SweepConfig, storage: SparkStorage,
                   spark_config: SparkConfig):
    from spark_pipeline.sweep.analysis import analyse, deduplicate, to_markdown
    from spark_pipeline.sweep.study import open_study, storage_url

    sweep = _settings(spark_config, config.sweep)
    folder = storage.path("sweep", sweep.study)
    if not (folder / "study.json").exists():
        raise dg.Failure(f"no sweep {sweep.study!r} yet: materialize sweep_trials first")
    study = open_study(sweep, storage_url(storage.path(), context.instance))
    runs = study_runs(study, sweep)
    if not runs:
        raise dg.Failure(f"the study {sweep.study!r} has no trials: materialize sweep_trials first")
    result = analyse(runs, sweep.space, sweep.alpha_per_rank, study=study)
    markdown = to_markdown(result, sweep.alpha_per_rank)
    atomic_write_json(folder / "analysis.json", result)
    atomic_write_text(folder / "analysis.md", markdown)
    pq.write_table(pa.Table.from_pylist([{k: (json.dumps(v) if isinstance(v, list | dict) else v)
                                          for k, v in row.items()} for row in result["stability"]]),
                   folder / "stability.parquet")
    plots = sweep_plots(result, deduplicate(runs)[0], sweep, folder)  # the runs the analysis counted
    for w in result["warnings"]:
        context.log.warning(w)
    return dg.MaterializeResult(
        metadata={**parquet_table_metadata(folder / "stability.parquet"),
                  "warnings": dg.MetadataValue.md("\n".join(f"- {w}" for w in result["warnings"]) or "none"),
                  "marginal_means": table_metadata(result["marginal_means"], ("factor", "level", "mean", "lo", "hi", "runs")),
                  "matched_comparisons": table_metadata(result["matched"], ("factor", "a", "b", "cells", "mean_diff", "lo",
                                                                      "hi", "b_better_in")),
                  "main_effects": table_metadata(result["main_effects"]["effects"], ("factor", "level", "reference",
                                                                                "effect", "lo", "hi")),
                  "importances": dg.MetadataValue.json(result["importances"]),
                  "analysis": dg.MetadataValue.path(str(folder / "analysis.md")),
                  **{name: dg.MetadataValue.md(embed_png(p, name)) for name, p in plots.items()}},
        check_results=[dg.AssetCheckResult(check_name="analysis_without_warnings", passed=not result["warnings"],
                                           severity=dg.AssetCheckSeverity.WARN,
                                           metadata={"warnings": dg.MetadataValue.json(result["warnings"])})])


