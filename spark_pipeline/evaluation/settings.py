"""Evaluation settings: the profile's ``evaluation`` section (the paper's values in
``configs/hero.yaml``, §6.4–6.8), checked whole (:mod:`spark_pipeline.schema`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from spark_pipeline.config import load_config, where
from spark_pipeline.llm import LLMConfig
from spark_pipeline.schema import Count, Size, Strict, check, dotted


class ExternalModel(Strict):
    """An external baseline behind a chat API (§6.6)."""

    name: Annotated[str, Field(min_length=1)]
    provider: Literal["openai", "anthropic"]
    """``openai``: the OpenAI chat protocol (vLLM serves it); ``anthropic``: Anthropic's messages API."""
    model: Annotated[str, Field(min_length=1)]
    base_url: str = ""
    api_key_env: str = ""
    """The environment variable that holds the API key (never the key itself)."""
    max_retries: Size = 5
    backoff_s: Annotated[int | float, Field(ge=0)] = 1.0

    def config(self, max_tokens: int) -> LLMConfig:
        return LLMConfig(provider=self.provider, model=self.model, base_url=self.base_url,
                         api_key_env=self.api_key_env, max_tokens=max_tokens, max_retries=self.max_retries,
                         backoff_s=self.backoff_s)


class CodeRegression(Strict):
    """§6.8: general C++ problems (FullStackBench AutoEval JSONL); empty ``problems``: the bundled ones."""

    problems: str = ""
    max_new_tokens: Count = 512
    time_limit_s: Annotated[int | float, Field(gt=0)] = 10
    memory_mb: Count = 1024


class SpecConditioned(Strict):
    """Spec-conditioned completion (beyond the paper): each item of the held-out pairs'
    ``spec_conditioned`` split generated with and without its datasheet section."""

    items_per_category: Size = 200
    """At most this many items per category are generated (four generations each: base and
    adapter, with and without the section); 0: none (the evaluation is skipped)."""
    max_section_tokens: Count = 1024
    """The section's text is cut to its first this-many tokens."""
    max_prefix_tokens: Count = 512
    """The code prefix keeps its last this-many tokens (those nearest the continuation)."""


class EvalSettings(Strict):
    split_fraction: Annotated[int | float, Field(gt=0, lt=1)]
    """The prefix's share of a sample; the rest is scored (paper: 0.75)."""
    max_new_tokens: Count
    max_samples_per_category: Size
    """0: every evaluation sample (perplexity, teacher forcing)."""
    generation_samples_per_category: Size
    batch_size: Count
    outlier_factor: Annotated[int | float, Field(gt=1)]
    """The smallest departure of a checkpoint's perplexity from its run's robust trend (a
    ratio, either way) that the artifact check reports (:mod:`spark_pipeline.evaluation.outliers`)."""
    outlier_z: Annotated[int | float, Field(gt=0)] = 3.5
    """...and in robust standard deviations of the run's noise (1.4826 × MAD); a generative
    score or the training loss counts as moved beyond as many of its own."""
    min_samples_per_category: Size = 200
    bootstrap_resamples: Count = 1000
    external_models: tuple[ExternalModel, ...] = ()
    code_regression: CodeRegression = CodeRegression()
    spec_conditioned: SpecConditioned = SpecConditioned()

    @classmethod
    def load(cls, profile: str | None = None, overrides: dict | None = None) -> EvalSettings:
        values = {**load_config(profile)["evaluation"], **(overrides or {})}
        values["external_models"] = tuple(values.get("external_models") or ())
        return check(cls, values, "evaluation settings", where(profile), dotted("evaluation"))
