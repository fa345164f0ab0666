"""Tests of llmfoundations.evaluation.harness: the bootstrap interval against
``scipy.stats.bootstrap``, per-example seeding, resuming an interrupted run (same report as
an uninterrupted one), the results file's checks, a model system on a tiny random model,
and the errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.evaluation.harness import (
    ConfidenceInterval,
    Example,
    Task,
    bootstrap_ci,
    evaluate,
    exact_match,
    example_seed,
    model_system,
)
from llmfoundations.evaluation.rouge import rouge_l
from llmfoundations.models import DecoderLM, ModelConfig
from llmfoundations.sampling import SamplingConfig
from llmfoundations.tokenizer import BPETokenizer


def _task(n: int = 6, name: str = "arith") -> Task:
    examples = tuple(Example(f"q{i}", f"{i} + {i} =", str(2 * i)) for i in range(n))
    return Task(name, examples, exact_match)


def _noisy_system(prompt: str, generator: torch.Generator) -> str:
    """Right about half the time, decided by the example's own generator."""
    a = int(prompt.split()[0])
    wrong = torch.rand((), generator=generator).item() < 0.5
    return str(2 * a + (1 if wrong else 0))


# ----------------------------------------------------------------------------- bootstrap


@settings(max_examples=40, deadline=None)
@given(
    scores=st.lists(st.floats(-100, 100), min_size=2, max_size=50),  # scipy wants two
    confidence=st.sampled_from([0.5, 0.9, 0.95, 0.99]),
    seed=st.integers(0, 2**32 - 1),
)
def test_bootstrap_equals_scipy(scores, confidence, seed):
    stats = pytest.importorskip("scipy.stats")
    ours = bootstrap_ci(scores, confidence=confidence, n_resamples=200, seed=seed)
    theirs = stats.bootstrap(
        (np.array(scores),),
        np.mean,
        n_resamples=200,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    assert ours.low == pytest.approx(min(theirs.low, ours.mean), abs=1e-9)
    assert ours.high == pytest.approx(max(theirs.high, ours.mean), abs=1e-9)
    assert ours.mean == pytest.approx(np.mean(scores), abs=1e-12)


def test_bootstrap_interval_narrows_with_more_examples():
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.integers(0, 2, 20))
    large = bootstrap_ci(rng.integers(0, 2, 2000))
    assert large.high - large.low < (small.high - small.low) / 5
    assert bootstrap_ci([0.5]).low == bootstrap_ci([0.5]).high == 0.5


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_scores_every_example_and_summarises():
    report = evaluate(_task(), lambda prompt, g: str(2 * int(prompt.split()[0])))
    assert report.task == "arith" and [r.id for r in report.results] == [f"q{i}" for i in range(6)]
    assert report.scores.tolist() == [1.0] * 6 and report.summary.mean == 1.0
    assert report.outputs[3] == "6" and report.n_resumed == 0


def test_seeding_is_per_example_and_reproducible():
    task = _task(12)
    first = evaluate(task, _noisy_system, seed=3)
    again = evaluate(task, _noisy_system, seed=3)
    assert first.outputs == again.outputs
    reordered = Task(task.name, task.examples[::-1], task.metric)
    backwards = evaluate(reordered, _noisy_system, seed=3)
    assert backwards.outputs[::-1] == first.outputs  # order does not change any output
    assert evaluate(task, _noisy_system, seed=4).outputs != first.outputs
    assert example_seed(3, "q1") != example_seed(3, "q2")


def test_an_interrupted_run_resumes_to_the_same_report(tmp_path):
    task, path = _task(8), tmp_path / "runs" / "arith.jsonl"
    full = evaluate(task, _noisy_system, seed=1)

    calls = []

    def dies_after_three(prompt, generator):
        if len(calls) == 3:
            raise KeyboardInterrupt  # the kernel is stopped mid-run
        calls.append(prompt)
        return _noisy_system(prompt, generator)

    with pytest.raises(KeyboardInterrupt):
        evaluate(task, dies_after_three, seed=1, results_path=path)
    assert len(path.read_text().splitlines()) == 3
    with path.open("a") as f:
        f.write('{"task": "arith", "id": "q3", "outp')  # a line cut off by the crash
    ran = []
    resumed = evaluate(
        task, lambda p, g: ran.append(p) or _noisy_system(p, g), seed=1, results_path=path
    )
    assert len(ran) == 5 and resumed.n_resumed == 3
    assert resumed.outputs == full.outputs and resumed.summary == full.summary
    assert len(path.read_text().splitlines()) == 8
    assert evaluate(task, _noisy_system, seed=1, results_path=path).n_resumed == 8


def test_results_file_refuses_changed_examples_and_other_tasks(tmp_path):
    path = tmp_path / "r.jsonl"
    evaluate(_task(2), _noisy_system, results_path=path)
    changed = Task("arith", (Example("q0", "0 + 0 = ?", "0"),), exact_match)
    with pytest.raises(ValueError, match="another version of example 'q0'"):
        evaluate(changed, _noisy_system, results_path=path)
    with pytest.raises(ValueError, match="results of task 'arith', not 'other'"):
        evaluate(_task(2, name="other"), _noisy_system, results_path=path)
    path.write_text("not json\n")
    with pytest.raises(ValueError, match="line 1 is not a result"):
        evaluate(_task(2), _noisy_system, results_path=path)


def test_any_metric_works_for_example_a_rouge_score():
    task = Task(
        "summaries",
        (Example("s1", "Summarise: the cat sat on the mat.", "the cat sat on the mat"),),
        lambda out, ex: rouge_l(out, ex.reference).fmeasure,
    )
    report = evaluate(task, lambda p, g: "a cat sat on a mat")
    assert report.scores.tolist() == [
        pytest.approx(rouge_l("a cat sat on a mat", "the cat sat on the mat").fmeasure)
    ]
    assert json.dumps(report.summary.mean)  # a plain float


def test_model_system_on_a_tiny_model():
    tokenizer = BPETokenizer(
        {i: bytes([i]) for i in range(256)},
        [],
        special_tokens=["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
    )
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig.llama(tokenizer.vocab_size, d_model=32, max_seq_len=512))
    task = Task(
        "tiny", (Example("a", "Hi"), Example("b", "Bye")), lambda out, ex: float(len(out) > 0)
    )
    greedy = model_system(model, tokenizer, max_new_tokens=4, system_prompt=None)
    sampled = model_system(
        model, tokenizer, chat=False, max_new_tokens=4, sampling=SamplingConfig(temperature=1.0)
    )
    assert evaluate(task, greedy).outputs == evaluate(task, greedy).outputs
    first, second = evaluate(task, sampled, seed=0), evaluate(task, sampled, seed=0)
    assert first.outputs == second.outputs  # the per-example generator makes sampling repeatable


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: Example("", "p"), ValueError, "id must be a non-empty str"),
        (lambda: Example("a", 3), TypeError, "prompt must be a str"),
        (lambda: Example("a", "p", reference=3), TypeError, "reference must be a str or None"),
        (lambda: Task("t", (), exact_match), ValueError, "examples must not be empty"),
        (lambda: Task("t", (Example("a", "p"),) * 2, exact_match), ValueError, r"unique, repeated: \['a'\]"),
        (lambda: Task("t", ("p",), exact_match), TypeError, r"examples\[0\] must be an Example"),
        (lambda: Task("t", (Example("a", "p"),), "exact"), TypeError, "metric must be callable"),
        (lambda: evaluate("t", str), TypeError, "task must be a Task"),
        (lambda: evaluate(_task(1), lambda p, g: 3), TypeError, "system must return a str"),
        (lambda: evaluate(Task("t", (Example("a", "p"),), lambda o, e: float("nan")), lambda p, g: ""), ValueError, "metric returned nan"),
        (lambda: evaluate(Task("t", (Example("a", "p"),), lambda o, e: "1"), lambda p, g: ""), TypeError, "metric must return a number"),
        (lambda: evaluate(Task("t", (Example("a", "p"),), exact_match), lambda p, g: ""), ValueError, "needs an Example with a reference"),
        (lambda: evaluate(_task(1), lambda p, g: pytest.fail("ran"), confidence=95), ValueError, r"confidence must be in \(0, 1\)"),
        (lambda: bootstrap_ci([]), ValueError, "scores must be a non-empty"),
        (lambda: bootstrap_ci([1.0], confidence=1.0), ValueError, r"confidence must be in \(0, 1\)"),
        (lambda: bootstrap_ci([1.0, float("inf")]), ValueError, "scores must be finite"),
        (lambda: bootstrap_ci([1.0], n_resamples=0), ValueError, "n_resamples must be >= 1"),
        (lambda: ConfidenceInterval(1.0, 2.0, 3.0, 0.95, 1, 1, 0), ValueError, "low <= mean <= high"),
        (lambda: model_system(None, None, max_new_tokens=0), ValueError, "max_new_tokens must be >= 1"),
    ],
)  # fmt: skip
def test_errors_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_docstring_examples():
    import doctest

    import llmfoundations.evaluation.harness as module

    assert doctest.testmod(module).failed == 0
