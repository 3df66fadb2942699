"""Resources shared by the stages: the storage root and the SpecMap judge."""


from pathlib import Path

import dagster as dg
from pydantic import Field

from spark_pipeline import settings
from spark_pipeline.specmap.judge import LLMConfig, SelectionRule, make_judge


class SparkStorage(dg.ConfigurableResource):
    """The storage root every artifact lives under (``$SPARK_STORAGE``, else ``.spark_storage/``)."""

    root: str = Field(default="", description="Folder for all artifacts; empty means $SPARK_STORAGE or "
                      "the checkout's .spark_storage/.")

    def path(self, *parts: str) -> Path:
        base = Path(self.root).expanduser().resolve() if self.root else settings.storage_root()
        return base.joinpath(*parts)


class SparkConfig(dg.ConfigurableResource):
    """The configuration profile the stages read: ``hero`` (the paper's values), ``demo`` (the
    embedded default) or the path of a YAML file overlaying ``hero``."""

    profile: str = Field(default="", description="empty means $SPARK_PROFILE, else demo")

    def name(self) -> str:
        from spark_pipeline.config import active_profile

        return self.profile or active_profile()


class SpecMapJudge(dg.ConfigurableResource):
    """Which relevance judge SpecMap uses. ``lexical`` runs offline; ``llm`` calls a chat model."""

    kind: str = Field(default="lexical", description="lexical | llm")
    provider: str = Field(default="openai", description="llm only: openai (any compatible endpoint, "
                          "e.g. vLLM) | anthropic")
    model: str = Field(default="", description="llm only: model name")
    base_url: str = Field(default="", description="llm only: API root, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = Field(default="", description="llm only: name of the environment variable "
                             "holding the API key")
    file_model: str = Field(default="", description="a file model fitted by benchmarks/specmap_bench.py --fit "
                            "(JSON); empty: the one SpecMap ships, fitted on the benchmark's development pairs")
    semantic: bool = Field(default=False, description="add sentence-embedding relevance to M1/M2 (needs the "
                           "'semantic' extra or semantic_model; measured: file F1 0.62 -> 0.65)")
    semantic_model: str = Field(default="", description="local transformers model folder for semantic "
                                "relevance; empty: the one the 'semantic' extra installs")

    def build_semantic(self):
        """A :class:`~spark_pipeline.specmap.semantic.SemanticScorer`, or None when off."""
        if not self.semantic:
            return None
        from spark_pipeline.specmap.semantic import SemanticScorer

        return SemanticScorer(self.semantic_model or None)

    def build(self, cache_dir: Path):
        llm = None
        if self.kind == "llm":
            llm = LLMConfig(provider=self.provider, model=self.model, base_url=self.base_url,
                            api_key_env=self.api_key_env)
        return make_judge(self.kind, cache_dir, llm, SelectionRule())

    def build_model(self):
        """The file model SpecMap decides with (:mod:`spark_pipeline.specmap.model`)."""
        from spark_pipeline.specmap.model import load

        return load(Path(self.file_model) if self.file_model else None)


#: Declarative automation for the assets that gather every pair or every checkpoint: run when
#: an upstream partition was updated (a new pair's samples, a new checkpoint's table) and
#: nothing upstream is in progress. Unlike plain ``eager``, a pair whose samples are missing
#: (its SpecMap failed) does not hold the mixture back: the stages leave such pairs out and say so.
AFTER_UPSTREAM = dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing()).with_label(
    "after an upstream update")

#: Who answers for the assets (shown in the UI's asset pages and catalog).
OWNERS = ["team:spark-pipeline"]


def stage_asset(stage: str, kinds: set[str], **kwargs):
    """``@dg.asset`` as every asset of the pipeline is declared: owned by the team, tagged and
    grouped by its stage (specmap, corpus, training, sweep, evaluation, release), with the
    kinds the UI shows; everything else (partitions, deps, checks, ...) as given."""
    return dg.asset(kinds=set(kinds), owners=OWNERS, tags={"stage": stage}, group_name=stage, **kwargs)


def parquet_table_metadata(*paths, descriptions: dict[str, str] | None = None) -> dict:
    """The row count and column schema of Parquet files (one table, possibly in shards) as the
    UI shows them: ``dagster/row_count`` and ``dagster/column_schema`` (with ``descriptions``
    of the columns where given)."""
    import pyarrow.parquet as pq

    files = [Path(p) for p in paths if Path(p).exists()]
    if not files:
        return {}
    schema = pq.read_schema(files[0])
    return {"dagster/row_count": sum(pq.ParquetFile(f).metadata.num_rows for f in files),
            "dagster/column_schema": dg.TableSchema(columns=[
                dg.TableColumn(f.name, str(f.type), description=(descriptions or {}).get(f.name)) for f in schema])}


def table_metadata(records: list[dict], columns, descriptions: dict[str, str] | None = None) -> dg.MetadataValue:
    """Rows as a Dagster table, which the asset page shows inline: NaN as empty, floats to six
    significant digits, anything that is not a scalar as text; each column typed from its values
    and described (``descriptions``) where a description is given."""
    import math

    def cell(v):
        if isinstance(v, float):
            return None if math.isnan(v) else float(f"{v:.6g}")
        return v if isinstance(v, int | str | bool) or v is None else str(v)

    rows = [{c: cell(r.get(c)) for c in columns} for r in records]

    def kind(column):
        value = next((r[column] for r in rows if r[column] is not None), "")
        return {bool: "bool", int: "int", float: "float"}.get(type(value), "string")

    return dg.MetadataValue.table(records=[dg.TableRecord(r) for r in rows],
                                  schema=dg.TableSchema(columns=[
                                      dg.TableColumn(c, kind(c), description=(descriptions or {}).get(c))
                                      for c in columns]))
