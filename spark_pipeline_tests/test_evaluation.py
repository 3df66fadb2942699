"""Evaluation metrics against independent computations, the sanity checks, the outlier rule."""

import math

import pytest
import torch
import torch.nn.functional as F

from spark_pipeline.evaluation.evaluate import perplexity_outliers
from spark_pipeline.evaluation.metrics import (
    bleu4,
    exact_match,
    perplexity,
    score_samples,
    split_at,
    token_accuracy,
)
from spark_pipeline.training.model import build_base_model
from spark_pipeline_tests.test_training import SHAPE


@pytest.mark.parametrize("n,cut", [(2, 1), (3, 2), (4, 3), (5, 3), (8, 6), (100, 75), (101, 75)])
def test_split_at_75_percent(n, cut):
    assert split_at(n) == cut
    assert 1 <= cut <= n - 1


def test_split_refuses_a_single_token():
    with pytest.raises(ValueError):
        split_at(1)


def test_perplexity_matches_an_independent_nll():
    model = build_base_model(SHAPE, seed=1).eval()
    samples = [list(range(10, 40)), list(range(500, 517)), [7, 8, 9, 10, 11]]
    scores = score_samples(model, samples, batch_size=3, pad_id=100277)  # batched and padded
    total_nll, total_n = 0.0, 0
    for s, sc in zip(samples, scores, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([s]), use_cache=False).logits[0]
        nll = F.cross_entropy(logits[:-1], torch.tensor(s[1:]), reduction="sum").item()
        assert sc.nll_sum == pytest.approx(nll, rel=1e-4) and sc.n_tokens == len(s) - 1
        total_nll += nll
        total_n += len(s) - 1
    assert perplexity(sum(s.nll_sum for s in scores), sum(s.n_tokens for s in scores)) == \
        pytest.approx(math.exp(total_nll / total_n), rel=1e-4), "overall perplexity is token-weighted"


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token ranking is known: at position t, token (t + 1) ranks first,
    then 0, 1, 2, 3 in that order."""

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, 20)
        for t in range(length):
            logits[:, t, 0:4] = torch.tensor([4.0, 3.0, 2.0, 1.0])
            logits[:, t, (t + 1) % 20] = 10.0
        return type("Out", (), {"logits": logits})()


def test_teacher_forced_top1_top5_by_hand():
    # sample: positions 0..7; suffix starts at split_at(8) = 6, so tokens 6 and 7 are scored,
    # predicted at positions 5 and 6. Top-1 there is token 6 and 7; top-5 adds 0, 1, 2, 3.
    sample = [5, 5, 5, 5, 5, 5, 6, 2]
    (sc,) = score_samples(FixedLogits(), [sample], pad_id=0)
    assert sc.suffix_tokens == 2
    assert sc.top1 == 1  # token 6 is predicted first at position 5; token 2 at position 6 is not (7 is)
    assert sc.top5 == 2  # token 2 is in the top five at position 6


def test_token_accuracy_and_exact_match_definitions():
    ref = [1, 2, 3, 4]
    assert token_accuracy([1, 2, 9, 4], ref) == 0.75
    assert token_accuracy([1, 2], ref) == 0.5, "missing tokens count as wrong"
    assert token_accuracy([9, 1, 2, 3, 4], ref) == 0.0, "position by position"
    assert exact_match([1, 2, 3, 4, 5], ref) and not exact_match([1, 2, 3], ref)


def test_bleu_agrees_with_sacrebleu_on_known_pairs():
    import sacrebleu

    hyps = ["int main ( void ) { return 0 ; }", "GPIOA -> MODER |= 1 ;"]
    refs = ["int main ( void ) { return 0 ; }", "GPIOA -> ODR |= 1 ;"]
    assert bleu4(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert bleu4(hyps[:1], refs[:1]) == pytest.approx(100.0)
    assert bleu4(["completely different words here"], ["int x = 0 ; return x ;"]) < 5


def test_outliers_are_flagged_with_their_neighbours():
    healthy = [{"checkpoint": f"c{i}", "step": i, "perplexity": p, "train_loss": math.log(p)}
               for i, p in enumerate([3.0, 2.2, 1.6, 1.3, 1.25, 1.2])]
    assert perplexity_outliers(healthy, 2.0) == []
    broken = [dict(p) for p in healthy]
    broken[3]["perplexity"] = 5.6  # the paper's public evaluation: ~1.2 -> ~5.6 between healthy neighbours
    flagged = perplexity_outliers(broken, 2.0)
    assert [f["checkpoint"] for f in flagged] == ["c3"] and flagged[0]["neighbours"] == [1.6, 1.25]


def _eval_samples(tok):
    texts = ["static int counter;\nint bump(void)\n{\n    counter++;\n    return 0;\n}\n",
             "void reset(void)\n{\n    REG->CTRL = 0;\n    return;\n}\n"]
    return [{"split": "in_domain", "category": "general", "ids": tok.encode(t)} for t in texts] + \
           [{"split": "held_out", "category": "crypto", "ids": tok.encode(texts[0])}]


def test_external_models_over_both_protocols_with_cache(tmp_path):
    from spark_pipeline.evaluation.external import ExternalModel, evaluate_external
    from spark_pipeline.tokens.tokenizer import load_tokenizer
    from spark_pipeline_tests.fake_llm import FakeLLM

    tok = load_tokenizer()
    samples = _eval_samples(tok)
    with FakeLLM() as server:
        for spec in (ExternalModel("qwen", "openai", "qwen3-coder", f"{server.url}/v1"),
                     ExternalModel("claude", "anthropic", "claude-opus", server.url)):
            rows, usage = evaluate_external(spec, samples, tok, 16, 5, 0.75, tmp_path / spec.name)
            by = {(r["split"], r["category"]): r for r in rows}
            assert set(by) == {("in_domain", "general"), ("in_domain", "all"), ("held_out", "crypto"),
                               ("held_out", "all")}
            assert all(r["model"] == f"external:{spec.name}" for r in rows)
            assert by[("in_domain", "all")]["gen_samples"] == 2 and math.isnan(by[("in_domain", "all")]["perplexity"])
            assert 0 <= by[("in_domain", "all")]["gen_token_accuracy"] <= 1
            assert usage["calls"] == 2 and usage["cached_calls"] == 1 and usage["tokens"] > 0  # two prompts repeat
        seen = len(server.requests)
        _, again = evaluate_external(ExternalModel("qwen", "openai", "qwen3-coder", f"{server.url}/v1"), samples, tok,
                                     16, 5, 0.75, tmp_path / "qwen")
        assert len(server.requests) == seen and again["cached_calls"] == 3, "re-runs cost nothing"
    assert server.requests[0]["body"]["messages"][0]["role"] == "system"


def test_external_model_errors_are_counted_per_request(tmp_path):
    from spark_pipeline.evaluation.external import ExternalModel, evaluate_external
    from spark_pipeline.tokens.tokenizer import load_tokenizer
    from spark_pipeline_tests.fake_llm import FakeLLM

    tok = load_tokenizer()
    with FakeLLM(mode="server_error") as server:
        spec = ExternalModel("down", "openai", "m", f"{server.url}/v1", max_retries=1, backoff_s=0.01)
        rows, usage = evaluate_external(spec, _eval_samples(tok), tok, 16, 5, 0.75, tmp_path)
    by = {(r["split"], r["category"]): r for r in rows}
    assert by[("in_domain", "all")]["gen_errors"] == 2 and by[("in_domain", "all")]["gen_samples"] == 0
    assert math.isnan(by[("in_domain", "all")]["gen_token_accuracy"]) and usage["retries"] == 3


def test_compile_check_with_repository_headers(tmp_path):
    from spark_pipeline.evaluation.codecheck import compiler, compiles, header_dirs

    if compiler() is None:
        pytest.skip("no C compiler installed")
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "regs.h").write_text("#define REG_CTRL (*(volatile unsigned *)0x40000000u)\n")
    dirs = header_dirs(tmp_path)
    assert dirs == [str(tmp_path / "inc")]
    good = '#include "regs.h"\nvoid start(void) { REG_CTRL = 1u; }\n'
    assert compiles(good, dirs) is True
    assert compiles(good, []) is False, "the repository's headers are needed"
    assert compiles("void start(void) { REG_CTRL = ; }\n", dirs) is False


def test_memorization_longest_overlap():
    from spark_pipeline.evaluation.codecheck import NgramIndex

    index = NgramIndex([list(range(100)), [500, 501, 502]], n=8)
    assert index.longest_overlap(list(range(10, 40))) == 30
    assert index.longest_overlap([7, 7] + list(range(50, 62)) + [9, 9]) == 12
    assert index.longest_overlap([1, 2, 3, 4, 5, 6, 7, 9, 10]) == 0
    assert index.longest_overlap([1, 2, 3]) == 0


def test_cpp_regression_oracle_wrong_broken_slow_and_greedy_memory():
    from spark_pipeline.evaluation.fullstack import (
        evaluate,
        extract_code,
        load_problems,
        run_solution,
        summarise,
    )

    problems = load_problems()
    assert len(problems) >= 8 and {p["difficulty"] for p in problems} == {"easy", "medium", "hard"}
    oracle = evaluate(lambda p: p["canonical_solution"], problems)
    assert summarise(oracle)["all"] == {"problems": len(problems), "compile_rate": 1.0, "pass_rate": 1.0}
    test = problems[0]["test_code"]
    assert run_solution("int sum_digits(int n) { return n; }", test)[:2] == (True, False), "wrong answer"
    assert run_solution("int sum_digits(int n) { return ; }", test)[:2] == (False, False), "compile error"
    slow = run_solution("int sum_digits(int n) { while (true) {} }", test, time_limit_s=1)
    assert slow[:2] == (True, False) and "time limit" in slow[2]
    hog = run_solution("#include <vector>\nint sum_digits(int n) { std::vector<char> v(1ull << 33, 1); return v[n]; }",
                       test, memory_mb=256)
    assert hog[:2] == (True, False), "the address-space limit stops a memory hog"
    assert extract_code("Sure!\n```cpp\nint f();\n```\nmore") == "int f();\n"
    assert extract_code("int f() { return 1; }\n```") == "int f() { return 1; }\n"


def test_category_winner_across_models():
    from spark_pipeline.defs.evaluation import category_winners

    def row(model, category, acc, step=-1, split="in_domain"):
        return {"model": model, "category": category, "gen_token_accuracy": acc, "step": step, "split": split}

    rows = [row("base", "crypto", 0.2), row("adapter:r--checkpoint-2", "crypto", 0.9, 2),
            row("adapter:r--checkpoint-4", "crypto", 0.5, 4), row("external:claude", "crypto", 0.6),
            row("base", "usb_stack", 0.4), row("adapter:r--checkpoint-4", "usb_stack", 0.3, 4),
            row("external:claude", "usb_stack", float("nan")), row("base", "all", 1.0),
            row("external:claude", "crypto", 0.99, split="held_out")]
    winners = category_winners(rows)
    assert {c: w["model"] for c, w in winners.items()} == {"crypto": "external:claude", "usb_stack": "base"}, \
        "only the latest checkpoint competes; NaN never wins; held-out rows do not count"
