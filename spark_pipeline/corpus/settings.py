"""Settings of the corpus stages. Values come from a configuration profile
(``configs/hero.yaml`` holds the paper's; ``demo.yaml`` overlays the embedded default)."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field

from spark_pipeline.config import load_config, where
from spark_pipeline.schema import Count, Positive, Share, Size, Strict, check, dotted

#: Text per worker below which another process does not pay (corpus_bench: chunking runs at
#: about 75 MB/s, cleaning at about 20 MB/s per core; a process pool costs about a second).
BYTES_PER_WORKER = 16 * 1024 * 1024




class ChunkingSettings(Strict):
    workers: Count
    """Parallel chunking workers (paper: 16), capped by the machine's cores."""
    max_chars: Count
    """Largest sample in characters (paper: 7,500, "about 2,048 tokens at 3.5 chars/token")."""
    min_chars: Size
    """Chunks shorter than this are dropped with a reason (paper: 50)."""

    def effective_workers(self) -> int:
        return max(1, min(self.workers, os.cpu_count() or 1))

    def workers_for(self, work_bytes: int) -> int:
        """Workers worth starting for ``work_bytes`` of text: one per ``BYTES_PER_WORKER``, up
        to the cores. Starting processes and moving text to them costs more than chunking or
        cleaning a small partition (2 workers were 1.6-4.6x slower than 1 on a pair's mapping
        file of a few MB), so small work runs in-process."""
        return max(1, min(self.effective_workers(), work_bytes // BYTES_PER_WORKER))


class CleaningSettings(Strict):
    separator_min_run: Count
    """A line that is only a run of ``- = * _`` this long or longer is a separator (paper: 10)."""
    repeat_min_run: Annotated[int, Field(ge=2)]
    """A character repeated this many times or more ... (paper: 10)"""
    repeat_keep: Count
    """... is reduced to this many (paper: 3)."""
    tab_width: Count
    """Tabs become this many spaces (paper: 4)."""
    max_garbage_ratio: Share
    """Reject a sample whose garbage share after cleaning exceeds this (paper: 0.70)."""
    min_prose_words: Size
    """A sample without code indicators is kept only with this many words of prose (paper: 20)."""


class MixtureSettings(Strict):
    max_tokens: Count
    """Each sample is cut to this many tokens (paper: 2,048) ..."""
    chars_per_token: Positive
    """... counted at this many characters per token (paper: 4)."""
    estimate_chars_per_token: Positive
    """Characters per token for the token estimates in the statistics (paper: 3.5)."""
    eos: Annotated[str, Field(min_length=1)]
    """Appended to every sample (paper: ``<|endoftext|>``)."""
    recipe: Literal["domain_only", "domain_general"]
    """``domain_only`` (the paper's final run) or ``domain_general`` (the mixture sweep)."""
    general_fraction: Share
    """Share of general C samples in a ``domain_general`` mixture (sweep: 0.10–0.50)."""
    shard_rows: Count
    """Rows per Parquet shard of the mixture."""

    @property
    def max_chars(self) -> int:
        return int(self.max_tokens * self.chars_per_token)


class SpecConditionedSettings(Strict):
    """The spec-conditioned split (beyond the paper; :mod:`spark_pipeline.corpus.specitems`)."""

    max_items_per_pair: Size = 200
    """At most this many items per held-out pair (a deterministic draw ordered by hash)."""
    prefix_fraction: Annotated[int | float, Field(gt=0, lt=1)] = 0.5
    """Share of the code's lines in the prompt; the rest is the reference."""
    min_code_lines: Annotated[int, Field(ge=2)] = 4
    """A section needs this many non-blank lines of code to make an item."""
    min_text_words: Size = 5
    """... and this many words of datasheet text."""


class EvalSettings(Strict):
    in_domain_samples: Size
    """Size of the in-domain set, stratified over categories (paper: 2,270)."""
    tail_shards: Count
    """Drawn from the last this-many Parquet shards of each category (paper: 2)."""
    category_shard_rows: Count
    """Rows of one per-category shard, which fixes what "the last two shards" are."""
    max_fraction: Share
    """At most this share of a category goes to evaluation."""
    minhash_threshold: Annotated[int | float, Field(gt=0, le=1)]
    """Jaccard similarity (5-word shingles) above which a training sample is a near-duplicate."""
    minhash_permutations: Count
    drop_contaminated: bool
    """Drop training samples that duplicate an evaluation sample (exactly or nearly)."""
    spec_conditioned: SpecConditionedSettings = SpecConditionedSettings()
    """Items of the spec-conditioned split, from the held-out pairs' mapping files."""


class CorpusSettings(Strict):
    chunking: ChunkingSettings
    cleaning: CleaningSettings
    mixture: MixtureSettings
    eval: EvalSettings

    @classmethod
    def load(cls, profile: str | None = None, overrides: dict | None = None) -> CorpusSettings:
        """The profile's ``corpus`` section, with ``overrides`` ({section: {key: value}}) on top."""
        cfg = load_config(profile)["corpus"]
        for section, values in (overrides or {}).items():
            cfg.setdefault(section, {}).update(values)
        return check(cls, cfg, "corpus settings", where(profile), dotted("corpus"))
