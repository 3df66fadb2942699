"""The one Definitions object: every asset, check, sensor, job and resource of the pipeline."""

from __future__ import annotations

import dagster as dg

from spark_pipeline.defs.corpus import eval_sets, quality_samples, section_chunks, training_mixture
from spark_pipeline.defs.evaluation import (
    checkpoint_eval,
    checkpoint_partitions,
    checkpoints,
    code_regression,
    evaluation_report,
    external_baselines,
    new_checkpoints_sensor,
    reevaluation_schedule,
)
from spark_pipeline.defs.monitoring import dead_runs_sensor
from spark_pipeline.defs.pairs import (
    new_pairs_sensor,
    pairs_partitions,
    repo_datasheet_pairs,
    spark_automation_sensor,
)
from spark_pipeline.defs.release import release
from spark_pipeline.defs.resources import SparkConfig, SparkStorage, SpecMapJudge
from spark_pipeline.defs.specmap import specmap_mappings
from spark_pipeline.defs.sweep import sweep_analysis, sweep_trials
from spark_pipeline.defs.training import tokenized_cache, train_hero

specmap_job = dg.define_asset_job(
    "specmap_job", selection=[specmap_mappings], partitions_def=pairs_partitions,
    description="SpecMap for one pair partition.",
)
pair_job = dg.define_asset_job(
    "pair_job", selection=[specmap_mappings, section_chunks, quality_samples], partitions_def=pairs_partitions,
    description="Everything per pair: SpecMap, chunks and quality samples for one pair partition.",
)

# The demo's steps as named jobs (the UI lists its runs under these names, not an ephemeral job).
pairs_job = dg.define_asset_job("pairs_job", selection=[repo_datasheet_pairs],
                                description="Read the pairs manifest and register the pair partitions.")
eval_sets_job = dg.define_asset_job("eval_sets_job", selection=[eval_sets], description="The evaluation sets.")
mixture_job = dg.define_asset_job("mixture_job", selection=[training_mixture], description="The training mixture.")
tokenize_job = dg.define_asset_job("tokenize_job", selection=[tokenized_cache], description="The tokenized cache.")
train_job = dg.define_asset_job("train_job", selection=[train_hero], description="LoRA training (torchrun).")
checkpoint_eval_job = dg.define_asset_job(
    "checkpoint_eval_job", selection=[checkpoints, checkpoint_eval, code_regression],
    partitions_def=checkpoint_partitions, description="Evaluate one checkpoint partition.")
report_job = dg.define_asset_job("report_job", selection=[external_baselines, evaluation_report],
                                 description="External baselines and the evaluation report.")
release_job = dg.define_asset_job(
    "release_job", selection=[release], partitions_def=checkpoint_partitions,
    description="The release folder of one evaluated checkpoint: model card, merged weights, adapters.")
sweep_job = dg.define_asset_job("sweep_job", selection=[sweep_trials, sweep_analysis],
                                description="Run or continue the hyperparameter sweep (configs/sweep.yaml), then "
                                "analyse it.")
DEMO_JOBS = {("repo_datasheet_pairs",): "pairs_job", ("specmap_mappings", "section_chunks", "quality_samples"): "pair_job",
             ("eval_sets",): "eval_sets_job", ("training_mixture",): "mixture_job",
             ("tokenized_cache",): "tokenize_job", ("train_hero",): "train_job",
             ("checkpoints", "checkpoint_eval", "code_regression"): "checkpoint_eval_job",
             ("external_baselines", "evaluation_report"): "report_job",
             ("sweep_trials", "sweep_analysis"): "sweep_job", ("release",): "release_job"}

defs = dg.Definitions(
    assets=[repo_datasheet_pairs, specmap_mappings, section_chunks, quality_samples, eval_sets, training_mixture,
            tokenized_cache, train_hero, checkpoints, checkpoint_eval, code_regression, external_baselines,
            evaluation_report, release, sweep_trials, sweep_analysis],
    jobs=[specmap_job, pair_job, pairs_job, eval_sets_job, mixture_job, tokenize_job, train_job,
          checkpoint_eval_job, report_job, release_job, sweep_job],
    sensors=[new_pairs_sensor, new_checkpoints_sensor, spark_automation_sensor, dead_runs_sensor],
    schedules=[reevaluation_schedule],
    resources={"storage": SparkStorage(), "judge": SpecMapJudge(), "spark_config": SparkConfig(),
               "pipes_subprocess_client": dg.PipesSubprocessClient()},
)
