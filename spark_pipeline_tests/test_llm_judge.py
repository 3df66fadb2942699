"""The LLM judge against a loopback server speaking the real OpenAI and Anthropic protocols."""

import pytest

from spark_pipeline.settings import SAMPLE_MANIFEST
from spark_pipeline.specmap.judge import JudgeError, LLMConfig, LLMJudge, make_judge
from spark_pipeline.specmap.pairs import load_manifest, resolve_pair
from spark_pipeline.specmap.pipeline import run_specmap
from spark_pipeline_tests.fake_llm import FakeLLM


def _imu(storage):
    pair = next(p for p in load_manifest(SAMPLE_MANIFEST) if p.id == "skm6_imu_i2c")
    return resolve_pair(pair, storage)


def test_openai_protocol_counts_tokens_drops_inventions_and_caches(storage, tmp_path):
    resolved = _imu(storage)
    cache = tmp_path / "cache"
    with FakeLLM() as server:
        config = LLMConfig(provider="openai", model="qwen3-coder", base_url=f"{server.url}/v1", backoff_s=0)
        result = run_specmap(resolved, LLMJudge(config, cache))
        first_requests = len(server.requests)
        usage = result.usage
        assert usage["calls"] == first_requests > 0
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] == 7 * first_requests
        assert usage["dropped_paths"] > 0 and usage["dropped_symbols"] > 0
        mapped = {f.path for m in result.sections for f in m.files}
        assert "does/not/exist.c" not in mapped and mapped
        assert all(s.symbol.name != "NOT_A_SYMBOL" for m in result.sections for f in m.files for s in f.symbols)
        assert {m.verdict.judged_by for m in result.sections if m.files} == {"llm:openai:qwen3-coder"}
        body = server.requests[0]["body"]
        assert server.requests[0]["path"] == "/v1/chat/completions"
        assert body["model"] == "qwen3-coder" and body["messages"][0]["role"] == "system"

        again = run_specmap(resolved, LLMJudge(config, cache))
        assert len(server.requests) == first_requests, "a re-run is served from the cache"
        assert again.usage["calls"] == 0 and again.usage["tokens"] == 0
        assert again.usage["cached_calls"] == first_requests
        assert [m.verdict.status for m in again.sections] == [m.verdict.status for m in result.sections]


def test_anthropic_protocol_and_api_key_from_environment(storage, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-test-123")
    with FakeLLM() as server:
        config = LLMConfig(provider="anthropic", model="claude-opus", base_url=server.url,
                           api_key_env="TEST_ANTHROPIC_KEY", backoff_s=0)
        result = run_specmap(_imu(storage), LLMJudge(config, tmp_path / "cache"))
        assert server.requests[0]["path"] == "/v1/messages"
        assert server.headers[0]["x-api-key"] == "sk-test-123"
        assert server.headers[0]["anthropic-version"] == "2023-06-01"
        assert "system" in server.requests[0]["body"]
        assert result.usage["completion_tokens"] == 5 * result.usage["calls"]


def test_rate_limit_is_retried(storage, tmp_path):
    with FakeLLM(mode="rate_limit_first") as server:
        judge = LLMJudge(LLMConfig(model="m", base_url=f"{server.url}/v1", backoff_s=0), tmp_path / "c")
        result = run_specmap(_imu(storage), judge)
        assert result.usage["retries"] == 1
        assert result.usage["calls"] == len(server.requests) - 1


def test_prose_answers_fall_back_to_the_lexical_decision(storage, tmp_path):
    resolved = _imu(storage)
    lexical = run_specmap(resolved)
    with FakeLLM(mode="prose") as server:
        judge = LLMJudge(LLMConfig(model="m", base_url=f"{server.url}/v1", backoff_s=0), tmp_path / "c")
        result = run_specmap(resolved, judge)
    assert result.usage["invalid_answers"] == result.usage["calls"] > 0
    assert [m.verdict.status for m in result.sections] == [m.verdict.status for m in lexical.sections]


def test_unreachable_endpoint_and_bad_settings(tmp_path):
    judge = LLMJudge(LLMConfig(model="m", base_url="http://127.0.0.1:9/v1", max_retries=1, backoff_s=0,
                               timeout_s=2), tmp_path / "c")
    with pytest.raises(JudgeError, match="failed after 2 attempts"):
        judge.client.complete("s", "u")
    with pytest.raises(JudgeError, match="unknown LLM provider"):
        LLMJudge(LLMConfig(provider="cohere", model="m"), tmp_path)
    with pytest.raises(JudgeError, match="needs a model"):
        LLMJudge(LLMConfig(), tmp_path)
    with pytest.raises(JudgeError, match="unknown judge"):
        make_judge("oracle", tmp_path)


def test_server_errors_are_retried_with_backoff_and_no_wait_after_the_last_attempt(tmp_path, monkeypatch):
    import threading
    import time

    waits = []
    here, real_sleep = threading.current_thread(), time.sleep

    def sleep(seconds):  # record this thread's waits; other threads (earlier tests' daemons) sleep as usual
        if threading.current_thread() is here:
            waits.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    with FakeLLM(mode="server_error") as server:
        judge = LLMJudge(LLMConfig(model="m", base_url=f"{server.url}/v1", max_retries=2, backoff_s=2.0,
                                   max_backoff_s=3.0), tmp_path / "c")
        with pytest.raises(JudgeError, match="failed after 3 attempts: HTTP 500"):
            judge.client.complete("s", "u")
        assert len(server.requests) == 3
    assert len(waits) < 3, f"a wait after the last attempt: {waits}"
    assert waits and all(0 < w <= 3.0 for w in waits), waits
    assert judge.usage.retries == 2
