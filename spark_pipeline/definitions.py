"""The one Definitions object: every asset, check, sensor, job and resource of the pipeline."""

from __future__ import annotations

import dagster as dg

from spark_pipeline.defs.pairs import new_pairs_sensor, pairs_partitions, repo_datasheet_pairs
from spark_pipeline.defs.resources import SparkStorage, SpecMapJudge
from spark_pipeline.defs.specmap import specmap_mappings

specmap_job = dg.define_asset_job(
    "specmap_job", selection=[specmap_mappings], partitions_def=pairs_partitions,
    description="SpecMap for one pair partition.",
)

defs = dg.Definitions(
    assets=[repo_datasheet_pairs, specmap_mappings],
    jobs=[specmap_job],
    sensors=[new_pairs_sensor],
    resources={"storage": SparkStorage(), "judge": SpecMapJudge()},
)
