"""The one Definitions object: every asset, check, sensor, job and resource of the pipeline."""

from __future__ import annotations

import dagster as dg

from spark_pipeline.defs.corpus import eval_sets, quality_samples, section_chunks, training_mixture
from spark_pipeline.defs.evaluation import (
    checkpoint_eval,
    checkpoints,
    code_regression,
    evaluation_report,
    external_baselines,
    new_checkpoints_sensor,
    reevaluation_schedule,
)
from spark_pipeline.defs.pairs import (
    new_pairs_sensor,
    pairs_partitions,
    repo_datasheet_pairs,
    spark_automation_sensor,
)
from spark_pipeline.defs.resources import SparkConfig, SparkStorage, SpecMapJudge
from spark_pipeline.defs.specmap import specmap_mappings
from spark_pipeline.defs.training import tokenized_cache, train_hero

specmap_job = dg.define_asset_job(
    "specmap_job", selection=[specmap_mappings], partitions_def=pairs_partitions,
    description="SpecMap for one pair partition.",
)
pair_job = dg.define_asset_job(
    "pair_job", selection=[specmap_mappings, section_chunks, quality_samples], partitions_def=pairs_partitions,
    description="Everything per pair: SpecMap, chunks and quality samples for one pair partition.",
)

defs = dg.Definitions(
    assets=[repo_datasheet_pairs, specmap_mappings, section_chunks, quality_samples, eval_sets, training_mixture,
            tokenized_cache, train_hero, checkpoints, checkpoint_eval, code_regression, external_baselines,
            evaluation_report],
    jobs=[specmap_job, pair_job],
    sensors=[new_pairs_sensor, new_checkpoints_sensor, spark_automation_sensor],
    schedules=[reevaluation_schedule],
    resources={"storage": SparkStorage(), "judge": SpecMapJudge(), "spark_config": SparkConfig(),
               "pipes_subprocess_client": dg.PipesSubprocessClient()},
)
