"""Settings of the corpus stages. Values come from a configuration profile
(``configs/hero.yaml`` holds the paper's; ``demo.yaml`` overlays the embedded default)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from spark_pipeline.config import load_config

#: Text per worker below which another process does not pay (corpus_bench: chunking runs at
#: about 75 MB/s, cleaning at about 20 MB/s per core; a process pool costs about a second).
BYTES_PER_WORKER = 16 * 1024 * 1024


def _build(cls, values: dict):
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown setting(s) {sorted(unknown)}")
    return cls(**values)


@dataclass(frozen=True)
class ChunkingSettings:
    workers: int
    """Parallel chunking workers (paper: 16), capped by the machine's cores."""
    max_chars: int
    """Largest sample in characters (paper: 7,500, "about 2,048 tokens at 3.5 chars/token")."""
    min_chars: int
    """Chunks shorter than this are dropped with a reason (paper: 50)."""

    def effective_workers(self) -> int:
        return max(1, min(self.workers, os.cpu_count() or 1))

    def workers_for(self, work_bytes: int) -> int:
        """Workers worth starting for ``work_bytes`` of text: one per ``BYTES_PER_WORKER``, up
        to the cores. Starting processes and moving text to them costs more than chunking or
        cleaning a small partition (2 workers were 1.6-4.6x slower than 1 on a pair's mapping
        file of a few MB), so small work runs in-process."""
        return max(1, min(self.effective_workers(), work_bytes // BYTES_PER_WORKER))


@dataclass(frozen=True)
class CleaningSettings:
    separator_min_run: int
    """A line that is only a run of ``- = * _`` this long or longer is a separator (paper: 10)."""
    repeat_min_run: int
    """A character repeated this many times or more ... (paper: 10)"""
    repeat_keep: int
    """... is reduced to this many (paper: 3)."""
    tab_width: int
    """Tabs become this many spaces (paper: 4)."""
    max_garbage_ratio: float
    """Reject a sample whose garbage share after cleaning exceeds this (paper: 0.70)."""
    min_prose_words: int
    """A sample without code indicators is kept only with this many words of prose (paper: 20)."""


@dataclass(frozen=True)
class MixtureSettings:
    max_tokens: int
    """Each sample is cut to this many tokens (paper: 2,048) ..."""
    chars_per_token: float
    """... counted at this many characters per token (paper: 4)."""
    estimate_chars_per_token: float
    """Characters per token for the token estimates in the statistics (paper: 3.5)."""
    eos: str
    """Appended to every sample (paper: ``<|endoftext|>``)."""
    recipe: str
    """``domain_only`` (the paper's final run) or ``domain_general`` (the mixture sweep)."""
    general_fraction: float
    """Share of general C samples in a ``domain_general`` mixture (sweep: 0.10–0.50)."""
    shard_rows: int
    """Rows per Parquet shard of the mixture."""

    @property
    def max_chars(self) -> int:
        return int(self.max_tokens * self.chars_per_token)


@dataclass(frozen=True)
class EvalSettings:
    in_domain_samples: int
    """Size of the in-domain set, stratified over categories (paper: 2,270)."""
    tail_shards: int
    """Drawn from the last this-many Parquet shards of each category (paper: 2)."""
    category_shard_rows: int
    """Rows of one per-category shard, which fixes what "the last two shards" are."""
    max_fraction: float
    """At most this share of a category goes to evaluation."""
    minhash_threshold: float
    """Jaccard similarity (5-word shingles) above which a training sample is a near-duplicate."""
    minhash_permutations: int
    drop_contaminated: bool
    """Drop training samples that duplicate an evaluation sample (exactly or nearly)."""


@dataclass(frozen=True)
class CorpusSettings:
    chunking: ChunkingSettings
    cleaning: CleaningSettings
    mixture: MixtureSettings
    eval: EvalSettings

    @classmethod
    def load(cls, profile: str | None = None, overrides: dict | None = None) -> CorpusSettings:
        cfg = load_config(profile)["corpus"]
        for section, values in (overrides or {}).items():
            cfg[section].update(values)
        return cls(_build(ChunkingSettings, cfg["chunking"]), _build(CleaningSettings, cfg["cleaning"]),
                   _build(MixtureSettings, cfg["mixture"]), _build(EvalSettings, cfg["eval"]))
