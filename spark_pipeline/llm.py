"""A chat client for OpenAI-compatible endpoints (any: vLLM, ...) and Anthropic's Messages
API: token counting, an on-disk answer cache (a re-run costs nothing), retries with
exponential backoff on rate limits, server errors and lost connections, honouring
``Retry-After`` (urllib3's ``Retry`` under the requests session: no wait after the last
attempt). Used by the SpecMap LLM judge and by the external-model baselines of the evaluation."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from spark_pipeline.records import atomic_write_json


@dataclass
class Usage:
    calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens": self.tokens}


class JudgeError(RuntimeError):
    """The endpoint refused or kept failing."""


@dataclass
class LLMConfig:
    provider: str = "openai"  # openai | anthropic
    model: str = ""
    base_url: str = ""
    """OpenAI protocol: the ``.../v1`` root (vLLM: ``http://host:8000/v1``). Anthropic: the API root."""
    api_key_env: str = ""
    """Name of the environment variable holding the key (never the key itself)."""
    max_tokens: int = 1024
    timeout_s: float = 120.0
    max_retries: int = 5
    """Retries after the first attempt (rate limits, 5xx, connection errors, read timeouts)."""
    backoff_s: float = 2.0
    """The first retry's wait; each next one doubles, at most ``max_backoff_s`` (a
    ``Retry-After`` header wins)."""
    max_backoff_s: float = 60.0
    max_candidates: int = 30
    """Candidates shown per question (the lexical ranking's best)."""
    max_prompt_chars: int = 12000
    """Adaptive chunking: longer section text is cut into pieces of this size."""


class ChatClient:
    """A minimal chat client for the two protocols, with an on-disk answer cache."""

    def __init__(self, config: LLMConfig, cache_dir: Path, usage: Usage,
                 session: requests.Session | None = None):
        if config.provider not in ("openai", "anthropic"):
            raise JudgeError(f"unknown LLM provider {config.provider!r} (expected openai or anthropic)")
        if not config.model:
            raise JudgeError("the LLM judge needs a model name")
        self.config = config
        self.cache_dir = Path(cache_dir)
        self.usage = usage
        self.session = session or requests.Session()
        retry = Retry(total=config.max_retries, backoff_factor=config.backoff_s, backoff_max=config.max_backoff_s,
                      status_forcelist=(429, *range(500, 600)), allowed_methods=None,
                      respect_retry_after_header=True, raise_on_status=False)
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, HTTPAdapter(max_retries=retry))
        default = "https://api.openai.com/v1" if config.provider == "openai" else "https://api.anthropic.com"
        self.base_url = (config.base_url or default).rstrip("/")
        self.api_key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""

    def _key(self, system: str, user: str) -> str:
        blob = json.dumps([self.config.provider, self.config.model, system, user, self.config.max_tokens])
        return hashlib.sha256(blob.encode()).hexdigest()

    def complete(self, system: str, user: str) -> str:
        key = self._key(system, user)
        cached = self.cache_dir / key[:2] / f"{key}.json"
        if cached.exists():
            self.usage.cached_calls += 1
            return json.loads(cached.read_text())["text"]
        text, prompt_tokens, completion_tokens = self._request(system, user)
        self.usage.calls += 1
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens
        atomic_write_json(cached, {"text": text, "model": self.config.model,
                                   "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens})
        return text

    def _request(self, system: str, user: str) -> tuple[str, int, int]:
        cfg = self.config
        if cfg.provider == "openai":
            url = f"{self.base_url}/chat/completions"
            headers = {"Content-Type": "application/json"}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            body = {"model": cfg.model, "temperature": 0, "max_tokens": cfg.max_tokens,
                    "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        else:
            url = f"{self.base_url}/v1/messages"
            headers = {"Content-Type": "application/json", "anthropic-version": "2023-06-01"}
            if self.api_key:
                headers["x-api-key"] = self.api_key
            body = {"model": cfg.model, "max_tokens": cfg.max_tokens, "temperature": 0, "system": system,
                    "messages": [{"role": "user", "content": user}]}
        attempts = f"{cfg.max_retries + 1} attempts"
        try:
            resp = self.session.post(url, json=body, headers=headers, timeout=cfg.timeout_s)
        except requests.RequestException as exc:
            raise JudgeError(f"{url} failed after {attempts}: {type(exc).__name__}: {exc}") from exc
        history = getattr(getattr(resp.raw, "retries", None), "history", ()) or ()
        self.usage.retries += len(history)
        if resp.status_code == 429 or resp.status_code >= 500:
            raise JudgeError(f"{url} failed after {attempts}: HTTP {resp.status_code}: {resp.text[:200]}")
        if resp.status_code >= 400:
            raise JudgeError(f"{url} refused the request: HTTP {resp.status_code}: {resp.text[:300]}")
        data = resp.json()
        if cfg.provider == "openai":
            text = data["choices"][0]["message"]["content"] or ""
            usage = data.get("usage") or {}
            return text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        text = "".join(part.get("text", "") for part in data.get("content", []) if part.get("type") == "text")
        usage = data.get("usage") or {}
        return text, int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
