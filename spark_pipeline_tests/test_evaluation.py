"""Evaluation metrics against independent computations, the sanity checks, the outlier rule."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spark_pipeline.evaluation.metrics import (
    bleu4,
    exact_match,
    perplexity,
    score_samples,
    split_at,
    token_accuracy,
)
from spark_pipeline.evaluation.outliers import perplexity_outliers
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


HEALTHY = [1.5, 1.4, 1.32, 1.27, 1.24, 1.22, 1.2, 1.19]  # a run's in-domain perplexity, every 500 steps


def _run(perplexities, train_exp=3.0, accuracy=True, order=None):
    """One run's points: a training loss whose exp is ``train_exp`` times the healthy trend's
    shape (None: none), and smooth generative scores with 95% intervals (unless ``accuracy``
    is False); handed over in ``order`` when given (evaluated out of order)."""
    points = []
    for i, p in enumerate(perplexities):
        point = {"checkpoint": f"c{i}", "step": 500 * (i + 1), "perplexity": p}
        if train_exp is not None:
            point["train_loss"] = math.log(train_exp * HEALTHY[min(i, len(HEALTHY) - 1)] / HEALTHY[-1])
        if accuracy:
            acc, bleu = 0.50 + 0.01 * i, 30.0 + 0.5 * i
            point.update(gen_token_accuracy=acc, gen_token_accuracy_lo=acc - 0.03, gen_token_accuracy_hi=acc + 0.03,
                         bleu4=bleu, bleu4_lo=bleu - 2.0, bleu4_hi=bleu + 2.0)
        points.append(point)
    return [points[i] for i in order] if order else points


def _bad(*at, value=5.6):
    return [value if i in at else p for i, p in enumerate(HEALTHY)]


# the paper's artifact (~1.2 -> ~5.6 between healthy neighbours); every case here failed the
# rule it replaced (a checkpoint departing from both neighbours and from exp(training loss)
# by the factor): it flagged the healthy checkpoints, or missed the bad ones
ARTIFACTS = {
    "middle, three checkpoints": ([1.2, 5.6, 1.2], None, {1}),
    "middle, training loss exp 3.0": ([1.2, 5.6, 1.2], 3.0, {1}),
    "first of three": ([5.6, 1.2, 1.2], 3.0, {0}),
    "last of three": ([1.2, 1.2, 5.6], 3.0, {2}),
    "first": (_bad(0), 3.0, {0}),
    "last": (_bad(7), 3.0, {7}),
    "middle": (_bad(4), 3.0, {4}),
    "two in a row, middle": (_bad(3, 4), 3.0, {3, 4}),
    "two in a row, second and third": (_bad(1, 2), None, {1, 2}),
    "two in a row, start": (_bad(0, 1), None, {0, 1}),
    "two in a row, end": (_bad(6, 7), None, {6, 7}),
    "a collapse to a lower perplexity": (_bad(4, value=0.3), 3.0, {4}),
}


@pytest.mark.parametrize("accuracy", [True, False], ids=["with generative scores", "perplexity and training loss"])
@pytest.mark.parametrize("name", list(ARTIFACTS))
def test_the_artifact_check_flags_the_paper_s_jump_wherever_it_is(name, accuracy):
    perplexities, train_exp, expected = ARTIFACTS[name]
    flagged = perplexity_outliers(_run(perplexities, train_exp, accuracy), 2.0, 3.5)
    assert {int(f["checkpoint"][1:]) for f in flagged} == expected
    for f in flagged:
        assert f["outlier"] and (f["ratio"] > 2.0 or f["ratio"] < 0.5)
        if accuracy:
            assert f["verdict"] == "artifact" and "artifact signature" in f["evidence"]
            assert f["cross_checks"] == {"gen_token_accuracy": "smooth", "bleu4": "smooth"}
        elif train_exp is not None:
            assert f["verdict"] == "unconfirmed" and "training loss smooth" in f["evidence"]
        else:
            assert "perplexity alone" in f["evidence"]


def test_checkpoints_evaluated_out_of_order_are_judged_in_step_order():
    order = [5, 0, 7, 3, 1, 6, 4, 2]
    for perplexities, expected in ((_bad(4), {4}), (_bad(0), {0}), (_bad(3, 4), {3, 4}), (HEALTHY, set())):
        flagged = perplexity_outliers(_run(perplexities, order=order), 2.0, 3.5)
        assert {int(f["checkpoint"][1:]) for f in flagged} == expected, perplexities


def _trend(n, start, end, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    steps = np.arange(1, n + 1)
    shape = (steps ** -0.7 - n ** -0.7) / (1 - n ** -0.7)  # 1 at the first checkpoint, 0 at the last
    return list(np.exp(math.log(end) + (math.log(start) - math.log(end)) * shape + noise * rng.standard_normal(n)))


@pytest.mark.parametrize("perplexities", [
    HEALTHY, _trend(30, 3.0, 1.2), _trend(30, 3.5, 1.2, noise=0.03, seed=1), _trend(8, 3.0, 1.2, noise=0.03, seed=2),
    list(np.linspace(1.2, 1.6, 30)),  # slowly rising (over-fitting): genuine
    [1.2, 1.15, 1.1, 1.8, 1.75, 1.7, 1.65],  # a lasting step: a trend change, not a jump
    _trend(30, 1.2, 1.2, noise=0.03, seed=3), _trend(30, 1.2, 1.2, noise=0.1, seed=4), [3.0, 2.2, 1.6],
], ids=["healthy", "steep start", "steep start, noise", "short, noise", "slow rise", "step", "noise 0.03",
        "noise 0.1", "three, falling"])
@pytest.mark.parametrize("accuracy", [True, False], ids=["with generative scores", "perplexity alone"])
def test_a_genuine_trend_and_noise_are_not_flagged(perplexities, accuracy):
    points = _run([float(p) for p in perplexities], None, accuracy)
    if accuracy:  # the generative scores follow the perplexity, as a real model's do
        for p in points:
            acc = 0.9 - 0.3 * math.log(p["perplexity"])
            p.update(gen_token_accuracy=acc, gen_token_accuracy_lo=acc - 0.03, gen_token_accuracy_hi=acc + 0.03)
    assert perplexity_outliers(points, 2.0, 3.5) == []


def test_a_jump_that_independent_metrics_moved_with_is_kept_as_real():
    from spark_pipeline.evaluation.outliers import perplexity_jumps

    points = _run(_bad(4))
    points[4].update(gen_token_accuracy=0.2, gen_token_accuracy_lo=0.17, gen_token_accuracy_hi=0.23)
    [jump] = perplexity_jumps(points, 2.0, 3.5)
    assert not jump["outlier"] and jump["verdict"] == "corroborated"
    assert jump["cross_checks"] == {"gen_token_accuracy": "moved with it", "bleu4": "smooth"}
    assert perplexity_outliers(points, 2.0, 3.5) == []
    points = _run(_bad(4), accuracy=False)  # no generative scores: the training loss decides
    points[4]["train_loss"] += math.log(4.0)
    [jump] = perplexity_jumps(points, 2.0, 3.5)
    assert jump["verdict"] == "corroborated" and jump["cross_checks"] == {"train_loss": "moved with it"}
    points[4]["train_loss"] -= 2 * math.log(4.0)  # the training loss fell while the perplexity rose
    assert perplexity_outliers(points, 2.0, 3.5)[0]["cross_checks"] == {"train_loss": "moved against it"}
    # generative scores decide over the training loss when the run has them
    points = _run(_bad(4))
    points[4]["train_loss"] += math.log(4.0)
    assert perplexity_outliers(points, 2.0, 3.5)[0]["verdict"] == "artifact"


def test_what_the_artifact_check_cannot_decide_and_what_it_always_flags():
    # half the run bad: which half is wrong cannot be told from the series; the old rule
    # flagged the two healthy ends, this one flags nothing
    assert perplexity_outliers(_run([1.2, 5.6, 5.6, 1.2]), 2.0, 3.5) == []
    assert perplexity_outliers(_run([1.2, 5.6]), 2.0, 3.5) == [], "two checkpoints: nothing to compare with"
    # below the factor: not reported, however clear
    assert perplexity_outliers(_run(_bad(4, value=1.24 * 1.9)), 2.0, 3.5) == []
    assert [f["checkpoint"] for f in perplexity_outliers(_run(_bad(4, value=1.24 * 1.9)), 1.5, 3.5)] == ["c4"]
    # a perplexity that is not a number is always flagged
    [f] = perplexity_outliers(_run(_bad(4, value=float("inf"))), 2.0, 3.5)
    assert f["checkpoint"] == "c4" and "not a finite number" in f["evidence"]


# hypothesis/reference sets on which unsmoothed BLEU and sacrebleu's default (exp smoothing)
# differ: no matching 4-gram, too short for a 4-gram, an empty hypothesis, a perfect match
BLEU_SETS = [
    (["x = y + z ;"], ["x = y - z ;"]),
    (["static int counter ; counter ++ ;"], ["static int count ; count ++ ; return count ;"]),
    (["int a ;", "GPIOA -> MODER |= 1 ;"], ["int a ;", "GPIOA -> ODR |= 1 ;"]),
    (["", "return 0 ;", "REG->CTRL = 0;"], ["return 0 ;", "return 1 ;", "REG->CTRL = 0;"]),
    (["int main ( void ) { return 0 ; }", "GPIOA -> MODER |= 1 ;", "x = y + z ;", "while (1) { }"],
     ["int main ( void ) { return 0 ; }", "GPIOA -> ODR |= 1 ;", "x = y - z ;", "for (;;) { }"]),
]


@pytest.mark.parametrize("hyps,refs", BLEU_SETS)
def test_bleu_is_sacrebleus_default_corpus_and_sentence_bleu(hyps, refs):
    """Before: the bootstrapped BLEU was scored unsmoothed (0 where sacrebleu's corpus BLEU
    gives 38.0) and a sample's BLEU was a one-sentence corpus BLEU (0 where sentence_bleu
    gives 100 for a three-token exact match)."""
    import numpy as np
    import sacrebleu

    from spark_pipeline.evaluation import stats

    table = stats.bleu_statistics(hyps, refs)
    assert stats.corpus_bleu_from(table) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    for h, r, row in zip(hyps, refs, table, strict=True):
        assert stats.sentence_bleu_from(row) == pytest.approx(sacrebleu.sentence_bleu(h, [r]).score, abs=1e-9)
    # the bootstrap scores each resample the same way: the identity resample is the corpus BLEU
    identity = np.arange(len(hyps))[None, :]
    assert stats.bleu_statistic(table)(identity)[0] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score,
                                                                     abs=1e-9)


def test_bleu_signatures_are_sacrebleus_defaults():
    import sacrebleu

    from spark_pipeline.evaluation import stats

    version = sacrebleu.__version__
    assert stats.bleu_signature() == f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{version}"
    assert stats.sentence_bleu_signature() == f"nrefs:1|case:mixed|eff:yes|tok:13a|smooth:exp|version:{version}"
    corpus = sacrebleu.BLEU()
    corpus.corpus_score(["a b"], [["a b"]])
    assert stats.bleu_signature() == str(corpus.get_signature())


def _eval_samples(tok):
    texts = ["static int counter;\nint bump(void)\n{\n    counter++;\n    return 0;\n}\n",
             "void reset(void)\n{\n    REG->CTRL = 0;\n    return;\n}\n"]
    return [{"split": "in_domain", "category": "general", "ids": tok.encode(t)} for t in texts] + \
           [{"split": "held_out", "category": "crypto", "ids": tok.encode(texts[0])}]


def test_external_models_over_both_protocols_with_cache(tmp_path):
    import sacrebleu

    from spark_pipeline.evaluation import stats
    from spark_pipeline.evaluation.external import ExternalModel, evaluate_external
    from spark_pipeline.tokens.tokenizer import load_tokenizer
    from spark_pipeline_tests.fake_llm import FakeLLM

    tok = load_tokenizer()
    samples = _eval_samples(tok)
    with FakeLLM() as server:
        for spec in (ExternalModel(name="qwen", provider="openai", model="qwen3-coder", base_url=f"{server.url}/v1"),
                     ExternalModel(name="claude", provider="anthropic", model="claude-opus", base_url=server.url)):
            rows, records, usage = evaluate_external(spec, samples, tok, 16, 5, 0.75, tmp_path / spec.name)
            by = {(r["split"], r["category"]): r for r in rows}
            assert set(by) == {("in_domain", "general"), ("in_domain", "all"), ("held_out", "crypto"),
                               ("held_out", "all")}
            assert all(r["model"] == f"external:{spec.name}" for r in rows)
            assert by[("in_domain", "all")]["gen_samples"] == 2 and math.isnan(by[("in_domain", "all")]["perplexity"])
            assert 0 <= by[("in_domain", "all")]["gen_token_accuracy"] <= 1
            assert usage["calls"] == 2 and usage["cached_calls"] == 1 and usage["tokens"] > 0  # two prompts repeat
            assert len(records) == 3 and all(r["generation"] is not None and r["prompt_sha256"] for r in records)
            acc = [r["token_accuracy"] for r in records if r["split"] == "in_domain"]
            assert by[("in_domain", "all")]["gen_token_accuracy"] == pytest.approx(sum(acc) / len(acc))
            # BLEU as sacrebleu computes it on the stored texts: sentence BLEU per sample, corpus BLEU per row
            hyps = [tok.decode(r["generation_ids"][:len(r["reference_ids"])]) for r in records]
            for r, h in zip(records, hyps, strict=True):
                assert r["bleu4"] == pytest.approx(sacrebleu.sentence_bleu(h, [r["reference"]]).score, abs=1e-9)
                assert r["bleu4_signature"] == stats.sentence_bleu_signature()
            in_domain = [(h, r["reference"]) for h, r in zip(hyps, records, strict=True) if r["split"] == "in_domain"]
            assert by[("in_domain", "all")]["bleu4"] == pytest.approx(sacrebleu.corpus_bleu(
                [h for h, _ in in_domain], [[ref for _, ref in in_domain]]).score, abs=1e-9)
            assert by[("in_domain", "all")]["bleu4_signature"] == stats.bleu_signature()
        seen = len(server.requests)
        qwen = ExternalModel(name="qwen", provider="openai", model="qwen3-coder", base_url=f"{server.url}/v1")
        _, _, again = evaluate_external(qwen, samples, tok, 16, 5, 0.75, tmp_path / "qwen")
        assert len(server.requests) == seen and again["cached_calls"] == 3, "re-runs cost nothing"
    assert server.requests[0]["body"]["messages"][0]["role"] == "system"


def test_external_model_errors_are_counted_per_request(tmp_path):
    from spark_pipeline.evaluation.external import ExternalModel, evaluate_external
    from spark_pipeline.tokens.tokenizer import load_tokenizer
    from spark_pipeline_tests.fake_llm import FakeLLM

    tok = load_tokenizer()
    with FakeLLM(mode="server_error") as server:
        spec = ExternalModel(name="down", provider="openai", model="m", base_url=f"{server.url}/v1", max_retries=1,
                             backoff_s=0.01)
        rows, records, usage = evaluate_external(spec, _eval_samples(tok), tok, 16, 5, 0.75, tmp_path)
    by = {(r["split"], r["category"]): r for r in rows}
    assert by[("in_domain", "all")]["gen_errors"] == 2 and by[("in_domain", "all")]["gen_samples"] == 0
    assert math.isnan(by[("in_domain", "all")]["gen_token_accuracy"]) and usage["retries"] == 3 and records == []


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


def _records(model, category, accuracies, step=-1):
    return [{"model": model, "split": "in_domain", "category": category, "sample_id": f"s{i}", "generated": True,
             "token_accuracy": a, "step": step} for i, a in enumerate(accuracies)]


def _row(model, category, records, step=-1, split="in_domain", checkpoint=""):
    acc = [r["token_accuracy"] for r in records]
    return {"model": model, "category": category, "split": split, "step": step, "checkpoint": checkpoint,
            "gen_token_accuracy": sum(acc) / len(acc) if acc else float("nan")}


def test_category_winner_needs_a_difference_outside_the_interval():
    """Old behaviour: every accuracy 0.0 and the adapter named winner everywhere (ties went to
    the first name). A tie is a tie; a winner beats the runner-up outside the paired 95%
    interval; only the newest run's latest checkpoint competes; NaN never wins."""
    from spark_pipeline.evaluation.report import category_winners

    key = "hero.20261122-093015-a3f1--checkpoint-{}"
    clear = {"base": [0.1, 0.2, 0.1, 0.15, 0.2, 0.1, 0.12, 0.18], "claude": [0.8, 0.9, 0.85, 0.7, 0.95, 0.9, 0.8, 0.88],
             "old": [1.0] * 8, "new": [0.5, 0.6, 0.55, 0.4, 0.5, 0.6, 0.45, 0.5]}
    records = (_records("base", "crypto", clear["base"]) + _records("external:claude", "crypto", clear["claude"])
               + _records("adapter:" + key.format(2), "crypto", clear["old"], 2)
               + _records("adapter:" + key.format(4), "crypto", clear["new"], 4))
    zeros = {m: _records(m, "usb_stack", [0.0] * 8) for m in ("base", "adapter:" + key.format(4))}
    close = {"base": _records("base", "gpio", [0.50, 0.40, 0.60, 0.55, 0.45, 0.50]),
             "adapter:" + key.format(4): _records("adapter:" + key.format(4), "gpio", [0.52, 0.38, 0.61, 0.57, 0.44, 0.53])}
    records += [r for recs in (*zeros.values(), *close.values()) for r in recs]
    rows = [_row("base", "crypto", _records("base", "crypto", clear["base"])),
            _row("external:claude", "crypto", _records("x", "crypto", clear["claude"])),
            _row("adapter:" + key.format(2), "crypto", _records("x", "crypto", clear["old"]), 2, checkpoint=key.format(2)),
            _row("adapter:" + key.format(4), "crypto", _records("x", "crypto", clear["new"]), 4, checkpoint=key.format(4)),
            *[_row(m, "usb_stack", recs, 4 if m != "base" else -1, checkpoint=key.format(4) if m != "base" else "")
              for m, recs in zeros.items()],
            *[_row(m, "gpio", recs, 4 if m != "base" else -1, checkpoint=key.format(4) if m != "base" else "")
              for m, recs in close.items()],
            {"model": "external:claude", "category": "gpio", "split": "in_domain", "step": -1, "checkpoint": "",
             "gen_token_accuracy": float("nan")},
            {"model": "external:claude", "category": "crypto", "split": "held_out", "step": -1, "checkpoint": "",
             "gen_token_accuracy": 0.99}]
    winners = category_winners(rows, records, resamples=500)
    assert {c: w["winner"] for c, w in winners.items()} == {"crypto": "external:claude", "usb_stack": None, "gpio": None}
    assert [m for m, _ in winners["crypto"]["contenders"]] == ["external:claude", "adapter:" + key.format(4), "base"], \
        "only the latest checkpoint competes; held-out rows do not count"
    lo, hi = winners["crypto"]["interval"]
    assert 0 < lo < winners["crypto"]["difference"] < hi
    assert not winners["crypto"]["degenerate"] and winners["crypto"]["paired_samples"] == 8, "eight samples suffice"
    lo, hi = winners["gpio"]["interval"]
    assert lo < 0 < hi, "a 1.5-point difference on six samples is inside the interval: a tie"


def test_intervals_wilson_bleu_and_paired_bootstrap():
    import numpy as np
    import sacrebleu

    from spark_pipeline.evaluation import stats

    assert stats.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert stats.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert stats.wilson(107, 107)[1] == 1.0 and stats.wilson(107, 107)[0] < 1.0
    hyps = ["int main ( void ) { return 0 ; }", "GPIOA -> MODER |= 1 ;", "x = y + z ;"]
    refs = ["int main ( void ) { return 0 ; }", "GPIOA -> ODR |= 1 ;", "x = y - z ;"]
    assert stats.corpus_bleu_from(stats.bleu_statistics(hyps, refs)) == \
        pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score), "BLEU from summed sentence statistics"
    rng = np.random.default_rng(3)
    values = rng.normal(0.5, 0.1, 400)
    lo, hi = stats.bootstrap(stats.mean_statistic(values), len(values))
    assert lo < values.mean() < hi and hi - lo < 0.03
    small_lo, small_hi = stats.bootstrap(stats.mean_statistic(values[:20]), 20)
    assert small_hi - small_lo > 2 * (hi - lo), "fewer samples, wider interval"
    # paired: a constant shift of 0.01 on every sample is real; independent noise of the same size is not
    assert stats.excludes_zero(stats.paired(stats.mean_statistic(values + 0.01), stats.mean_statistic(values), 400))
    noise = values + rng.normal(0, 0.1, 400) * 0 + rng.normal(0.0, 0.2, 400)
    assert not stats.excludes_zero(stats.paired(stats.mean_statistic(noise - noise.mean() + values.mean()),
                                                stats.mean_statistic(values), 400))


def test_summary_rows_carry_intervals_and_flag_a_regression_against_the_base():
    from spark_pipeline.evaluation.evaluate import EvalSettings, summarise

    settings = EvalSettings(split_fraction=0.75, max_new_tokens=8, max_samples_per_category=0,
                            generation_samples_per_category=2, batch_size=4, outlier_factor=2.0,
                            min_samples_per_category=10, bootstrap_resamples=300)

    def recs(model, nll_per_token):
        return [{"model": model, "split": "in_domain", "category": "crypto", "sample_id": f"s{i}", "tokens": 50,
                 "nll_sum": 50 * (nll_per_token + 0.05 * (i % 5)), "suffix_tokens": 12, "suffix_nll_sum": 12.0,
                 "top1": 6, "top5": 9, "generated": False} for i in range(30)]

    base = recs("base", 2.0)
    for adapter_nll, flag in ((2.3, "regression"), (1.7, ""), (2.0, "")):
        rows = summarise(base + recs("adapter:x", adapter_nll), settings, base)
        row = next(r for r in rows if r["model"] == "adapter:x" and r["category"] == "crypto")
        assert row["flag"] == flag, (adapter_nll, row["ppl_reduction_vs_base_lo"], row["ppl_reduction_vs_base_hi"])
        assert row["perplexity_lo"] <= row["perplexity"] <= row["perplexity_hi"]
        assert row["samples"] == 30 and row["few_samples"] is False
        assert row["paired_samples"] == 30 and not row["ppl_reduction_vs_base_degenerate"]
    assert all(r["few_samples"] for r in summarise(base[:5], settings)), "fewer than min_samples_per_category"


def test_batched_generation_gives_the_single_sample_answers():
    from spark_pipeline.evaluation.metrics import generate_batch

    model = build_base_model(SHAPE, seed=2).eval()
    prefixes = [list(range(100, 130)), [7, 8, 9], list(range(2000, 2011)), [42] * 17, [5, 6, 7, 8, 9]]
    alone = [generate_batch(model, [p], 12, 100257, 100277, "cpu", 1)[0] for p in prefixes]
    batched = generate_batch(model, prefixes, 12, 100257, 100277, "cpu", 3)
    assert batched == alone, "left padding and batching change no greedy answer"
    assert all(len(a) == 12 for a in alone)


def test_outliers_are_marked_and_left_out_of_winners_and_trends(tmp_path):
    from spark_pipeline.evaluation.report import category_winners, mark_outliers
    from spark_pipeline.evaluation.series import latest as _latest

    key = "hero.20261122-093015-a3f1--checkpoint-{}"
    rows = [{"model": f"adapter:{key.format(s)}", "checkpoint": key.format(s), "step": s, "split": "in_domain",
             "category": "all", "perplexity": p, "gen_token_accuracy": 0.5} for s, p in ((2, 1.6), (4, 5.6), (6, 1.5))]
    rows[2]["perplexity"] = 240345.0  # the last checkpoint blew up
    mark_outliers(rows, [{"checkpoint": key.format(6)}])
    assert [r["flag"] if "flag" in r else "" for r in rows] == ["", "", "outlier"]
    assert _latest(rows) == ("hero.20261122-093015-a3f1", 4), "the latest checkpoint that is not an outlier"
    crypto = [dict(r, category="crypto") for r in rows]
    records = [{"model": r["model"], "split": "in_domain", "category": "crypto", "sample_id": "a", "generated": True,
                "token_accuracy": 0.5} for r in crypto]
    assert [m for m, _ in category_winners(crypto, records)["crypto"]["contenders"]] == [f"adapter:{key.format(4)}"]


def test_the_outlier_check_blocks_and_a_regression_warns():
    from spark_pipeline.defs.evaluation import evaluation_report

    specs = {s.name: s for s in evaluation_report.check_specs}
    assert specs["no_perplexity_outliers"].blocking and "no_regression_vs_base" in specs


def test_sparkline_is_short_enough_to_show_inline_and_keeps_the_ends():
    import base64
    import re

    from spark_pipeline.plots import INLINE_MARKDOWN_LIMIT, sparkline_markdown

    values = [5.0 - 4.0 * i / 9999 for i in range(10_000)]  # a long, falling curve
    markdown = sparkline_markdown(values, "loss")
    assert len(markdown) < INLINE_MARKDOWN_LIMIT
    svg = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)\)", markdown).group(1)).decode()
    ys = [int(p.split(",")[1]) for p in re.search(r'points="([^"]+)"', svg).group(1).split()]
    assert ys[0] == 2 and ys[-1] == 46, "the first (highest) value at the top, the last (lowest) at the bottom"
    assert "loss: 5 → 1 (min 1, max 5, 10000 points)" in markdown
    assert sparkline_markdown([float("nan")], "loss") == "loss: no finite values"


def test_bleu_note_states_the_signature_and_names_tables_under_another_bleu():
    from spark_pipeline.evaluation import stats
    from spark_pipeline.evaluation.report import bleu_note

    rows = [{"model": "adapter:new", "checkpoint": "new", "bleu4": 12.0, "bleu4_signature": stats.bleu_signature()},
            {"model": "adapter:old", "checkpoint": "old", "bleu4": 11.0},
            {"model": "base", "checkpoint": "new", "bleu4": float("nan")}]
    note = bleu_note(rows)
    assert f"`{stats.bleu_signature()}`" in note and f"`{stats.sentence_bleu_signature()}`" in note
    assert "old (no signature: unsmoothed)" in note and "new (" not in note
    assert "another BLEU" not in bleu_note(rows[:1])


def test_two_paired_samples_with_a_constant_difference_name_no_winner_and_no_regression():
    """Before: two samples improved by the same 0.3 gave a paired bootstrap interval of zero
    width, [0.3, 0.3], and the adapter was named winner; two samples with the same perplexity
    ratio were flagged a regression. Now the interval is marked degenerate and nothing is named."""
    from spark_pipeline.evaluation import stats
    from spark_pipeline.evaluation.evaluate import EvalSettings, summarise
    from spark_pipeline.evaluation.report import (
        category_winners,
        degenerate_note,
        table_markdown,
        winners_markdown,
    )

    adapter = "adapter:hero.20261122-093015-a3f1--checkpoint-4"
    records = _records("base", "gpio", [0.2, 0.4]) + _records(adapter, "gpio", [0.5, 0.7], 4)
    rows = [_row("base", "gpio", records[:2]),
            _row(adapter, "gpio", records[2:], 4, checkpoint="hero.20261122-093015-a3f1--checkpoint-4")]
    winners = category_winners(rows, records, resamples=300)
    lo, hi = winners["gpio"]["interval"]
    assert lo == pytest.approx(0.3) and hi == pytest.approx(0.3), "a zero-width interval that excludes 0"
    assert winners["gpio"]["winner"] is None and winners["gpio"]["degenerate"]
    assert winners["gpio"]["paired_samples"] == 2
    assert "none (degenerate interval)" in winners_markdown(winners)

    settings = EvalSettings(split_fraction=0.75, max_new_tokens=8, max_samples_per_category=0,
                            generation_samples_per_category=0, batch_size=4, outlier_factor=2.0,
                            min_samples_per_category=10, bootstrap_resamples=300)

    def recs(model, nll_per_token, n):
        return [{"model": model, "split": "in_domain", "category": "crypto", "sample_id": f"s{i}", "tokens": 50,
                 "nll_sum": 50 * (nll_per_token + 0.05 * i), "suffix_tokens": 12, "suffix_nll_sum": 12.0,
                 "top1": 6, "top5": 9, "generated": False} for i in range(n)]

    base = recs("base", 2.0, 2)
    table = summarise(base + recs(adapter, 2.3, 2), settings, base)
    row = next(r for r in table if r["model"] == adapter and r["category"] == "crypto")
    assert row["ppl_reduction_vs_base_hi"] < 0 and stats.excludes_zero(
        (row["ppl_reduction_vs_base_lo"], row["ppl_reduction_vs_base_hi"])), "the interval alone would say worse"
    assert row["flag"] == "" and row["ppl_reduction_vs_base_degenerate"] and row["paired_samples"] == 2
    assert "(degenerate: 2 paired)" in table_markdown([row])
    note = degenerate_note(table, winners)
    assert note and "fewer than 6 paired samples" in note and "in_domain/crypto (2)" in note and "gpio (2)" in note
    # the same shift over enough samples is named
    base = recs("base", 2.0, 8)
    row = next(r for r in summarise(base + recs(adapter, 2.3, 8), settings, base)
               if r["model"] == adapter and r["category"] == "crypto")
    assert row["flag"] == "regression" and not row["ppl_reduction_vs_base_degenerate"]
    assert stats.degenerate(5) and not stats.degenerate(6)


def test_every_column_of_the_ui_tables_is_described():
    """The UI shows each column's description beside its name: a column added without one is a gap."""
    from spark_pipeline.evaluation import speccond
    from spark_pipeline.evaluation.report import COLUMN_DESCRIPTIONS, TABLE_COLUMNS

    for columns, described in ((TABLE_COLUMNS, COLUMN_DESCRIPTIONS),
                               (speccond.TABLE_COLUMNS, speccond.COLUMN_DESCRIPTIONS)):
        assert [c for c in columns if not described.get(c)] == []
