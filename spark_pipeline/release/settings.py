"""Release settings: the profile's ``release`` section, checked whole (:mod:`spark_pipeline.schema`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from spark_pipeline.config import load_config, where
from spark_pipeline.schema import Count, Size, Strict, check, dotted

Dtype = Literal["bfloat16", "float16", "float32"]


class ReleaseSettings(Strict):
    dtype: Dtype = "bfloat16"
    """The merged weights' dtype (the base model's own)."""
    merge_dtype: Dtype = "float32"
    """Base + adapter are added in this dtype, then cast: at 7B, 28 GB of host memory."""
    max_shard_size: Annotated[str, Field(pattern=r"^\d+(\.\d+)?\s*[KMG]i?B$")] = "5GB"
    license: str = "apache-2.0"
    """OLMo-3's licence; a release of it carries the same."""
    model_name: Annotated[str, Field(min_length=1)] = "spark-cpt"
    verify_samples: Count = 8
    """Evaluation samples whose logits compare merged with base + adapter."""
    serving_ppl_samples: Size = 64
    """In-domain samples for the cost of leaving out the embedding adapters."""
    serving_max_tokens: Annotated[int, Field(ge=16)] = 2048
    """Each of those samples cut to this many tokens."""
    upload: Annotated[str, Field(pattern=r"^(gs://.+)?$")] = ""
    """gs://bucket/prefix to copy the release to; empty: nothing is uploaded."""

    @classmethod
    def load(cls, profile: str | None = None) -> ReleaseSettings:
        return check(cls, load_config(profile).get("release") or {}, "release settings", where(profile), dotted("release"))
