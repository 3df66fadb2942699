"""Relevance judges for SpecMap's four phases.

A judge answers two questions: which candidates (folders in M1, files in M2, symbols in
M3) are relevant to a datasheet section, and (M4) whether the section is implemented.
The pipeline computes lexical scores for every candidate first; a judge decides from them.

* :class:`LexicalJudge` (default, offline): files are kept by the fitted file model's
  decision (:mod:`.model`); symbols scoring a share of the best in their file; the verdict is
  the pipeline's evidence-based one.
* :class:`LLMJudge`: asks a chat model, through the OpenAI chat-completions protocol (any
  endpoint, e.g. vLLM) or Anthropic's Messages API. It counts tokens, caches every answer on
  disk (a re-run costs nothing), retries rate limits and server errors with backoff, and
  checks every path and symbol it returns against the real tree: what does not exist is
  dropped and counted. A malformed answer falls back to the lexical decision, also counted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from spark_pipeline.llm import ChatClient, JudgeError, LLMConfig, Usage  # noqa: F401 - JudgeError re-exported

STATUSES = ("implemented", "partial", "not_implemented", "not_applicable")
#: Statuses whose section carries code in the mapping file.
WITH_CODE = ("implemented", "partial")


@dataclass
class Candidate:
    key: str            # folder path, file path or symbol name
    score: float        # lexical relevance, 0..1 relative to the best candidate
    raw: float = 0.0    # the unnormalised score
    evidence: list[str] = field(default_factory=list)
    preview: str = ""   # what an LLM judge is shown besides the key


@dataclass
class Choice:
    key: str
    score: float
    reason: str = ""


@dataclass
class Verdict:
    status: str
    evidence: list[str] = field(default_factory=list)
    judged_by: str = "lexical"


@dataclass
class JudgeUsage(Usage):
    dropped_paths: int = 0
    dropped_symbols: int = 0
    invalid_answers: int = 0


@dataclass
class SelectionRule:
    """How the offline judge keeps symbols (files: the file model's fitted decision)."""

    min_raw: float = 0.0
    """Absolute floor on a symbol's unnormalised score."""
    symbol_rel_cut: float = 0.4
    """Keep symbols scoring at least this share of the best one in their file."""


class LexicalJudge:
    name = "lexical"

    def __init__(self, rule: SelectionRule | None = None):
        self.rule = rule or SelectionRule()
        self.usage = JudgeUsage()

    def pick(self, stage: str, section_title: str, query: str, candidates: list[Candidate],
             exists: Callable[[str], bool], limit: int) -> list[Choice]:
        cut = self.rule.symbol_rel_cut if stage == "symbols" else 0.0
        kept = [c for c in candidates if c.raw >= self.rule.min_raw and c.score >= cut]
        kept.sort(key=lambda c: (-c.score, c.key))
        return [Choice(c.key, round(c.score, 4), ", ".join(c.evidence[:5])) for c in kept[:limit]]

    def validate(self, section_title: str, query: str, summary: dict, context: list[str],
                 lexical: Verdict) -> Verdict:
        return lexical


# ------------------------------------------------------------------------------ LLM



_SYSTEM = ("You map hardware datasheet sections to the repository code that implements them. "
           "Answer with JSON only, no prose.")

_WHAT = {"folders": "repository folders", "files": "source files", "symbols": "code symbols"}


def _json_block(text: str):
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fenced:
        text = fenced.group(1)
    start = min([i for i in (text.find("{"), text.find("[")) if i >= 0], default=-1)
    if start < 0:
        raise ValueError("no JSON in answer")
    return json.JSONDecoder().raw_decode(text[start:])[0]


class LLMJudge:
    name = "llm"

    def __init__(self, config: LLMConfig, cache_dir: Path, session: requests.Session | None = None):
        self.config = config
        self.usage = JudgeUsage()
        self.client = ChatClient(config, cache_dir, self.usage, session)
        self.name = f"llm:{config.provider}:{config.model}"

    def _chunks(self, query: str) -> list[str]:
        size = self.config.max_prompt_chars
        return [query[i:i + size] for i in range(0, max(len(query), 1), size)] or [""]

    def pick(self, stage: str, section_title: str, query: str, candidates: list[Candidate],
             exists: Callable[[str], bool], limit: int) -> list[Choice]:
        if not candidates:
            return []
        shown = sorted(candidates, key=lambda c: -c.score)[: self.config.max_candidates]
        listing = "\n".join(f"- {c.key}" + (f"  ({c.preview})" if c.preview else "") for c in shown)
        best: dict[str, Choice] = {}
        for piece in self._chunks(query):
            user = (f"Datasheet section: {section_title}\n\n{piece}\n\n"
                    f"Candidate {_WHAT.get(stage, stage)}:\n{listing}\n\n"
                    f"Choose at most {limit} that implement or directly support this section. Reply as "
                    '{"selected": [{"name": "<exactly as listed>", "score": <0..1>, "reason": "<short>"}]}')
            try:
                answer = _json_block(self.client.complete(_SYSTEM, user))
                items = answer.get("selected", []) if isinstance(answer, dict) else answer
                parsed = [(str(i["name"]), float(i.get("score", 0.5)), str(i.get("reason", ""))) for i in items]
            except (ValueError, KeyError, TypeError, AttributeError):
                self.usage.invalid_answers += 1
                return LexicalJudge().pick(stage, section_title, query, candidates, exists, limit)
            for name, score, reason in parsed:
                if not exists(name):
                    if stage == "symbols":
                        self.usage.dropped_symbols += 1
                    else:
                        self.usage.dropped_paths += 1
                    continue
                if name not in best or best[name].score < score:
                    best[name] = Choice(name, max(0.0, min(score, 1.0)), reason)
        return sorted(best.values(), key=lambda c: (-c.score, c.key))[:limit]

    def validate(self, section_title: str, query: str, summary: dict, context: list[str],
                 lexical: Verdict) -> Verdict:
        user = (f"Datasheet section: {section_title}\n\n{query[: self.config.max_prompt_chars]}\n\n"
                f"Mapped code:\n{json.dumps(summary, indent=1)[:6000]}\n\n"
                f"Lexical evidence (status {lexical.status}):\n" + "\n".join(lexical.evidence[:8]) + "\n\n"
                "Earlier sections and their status (context):\n" + "\n".join(context[-10:]) + "\n\n"
                "Is this section implemented by the mapped code? 'implemented' needs code that defines or "
                "programs this section's own registers, fields or functions, not code that merely shares "
                "generic words with it; 'not_applicable' is for sections no program implements (electrical, "
                'package, ordering, revision history). Reply as {"status": '
                '"implemented" | "partial" | "not_implemented" | "not_applicable", "evidence": ["<short>", ...]}')
        try:
            answer = _json_block(self.client.complete(_SYSTEM, user))
            status = str(answer["status"]).strip().lower().replace(" ", "_")
            evidence = [str(e) for e in answer.get("evidence", [])][:10]
        except (ValueError, KeyError, TypeError, AttributeError):
            self.usage.invalid_answers += 1
            return lexical
        if status not in STATUSES:
            self.usage.invalid_answers += 1
            return lexical
        return Verdict(status, evidence, self.name)


def make_judge(kind: str, cache_dir: Path, llm: LLMConfig | None = None,
               rule: SelectionRule | None = None):
    """``lexical`` (default) or ``llm`` (needs an :class:`LLMConfig`)."""
    if kind == "lexical":
        return LexicalJudge(rule)
    if kind == "llm":
        if llm is None:
            raise JudgeError("judge 'llm' needs its settings (provider, model, base_url, api_key_env)")
        return LLMJudge(llm, cache_dir)
    raise JudgeError(f"unknown judge {kind!r} (expected 'lexical' or 'llm')")
