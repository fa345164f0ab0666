"""Tests of llmfoundations.evaluation.rubric: weighted totals by hand, the ready-made code
checks, a judge-backed criterion on a tiny random model, and the errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.evaluation.rubric import (
    Criterion,
    Rubric,
    RubricScore,
    contains_reference,
    criterion_means,
    judge_check,
    matches_regex,
    max_words,
)
from llmfoundations.models import DecoderLM, ModelConfig
from llmfoundations.tokenizer import BPETokenizer

EXAMPLES = [
    {"question": "What is 6 times 7?", "reference": "42"},
    {"question": "What is 2 + 2?", "reference": "4"},
]


def _rubric() -> Rubric:
    return Rubric(
        (
            Criterion("correct", 3.0, contains_reference(), description="has the answer"),
            Criterion("digits only", 1.0, matches_regex(r"^\s*\d+\s*$")),
            Criterion("concise", 1.0, max_words(4)),
        )
    )


def test_weighted_total_by_hand():
    scores = _rubric().score(["The answer is 42.", "5"], EXAMPLES)
    first, second = scores
    assert first.scores == (1.0, 0.0, 1.0) and first.total == pytest.approx(4 / 5)
    assert second.scores == (0.0, 1.0, 1.0) and second.total == pytest.approx(2 / 5)
    assert first["correct"] == 1.0 and second["digits only"] == 1.0
    assert str(first) == "total 0.80 (correct 1.00, digits only 0.00, concise 1.00)"
    means = criterion_means(scores)
    assert means == pytest.approx(
        {"correct": 0.5, "digits only": 0.5, "concise": 1.0, "total": 0.6}
    )


@settings(max_examples=100, deadline=None)
@given(
    weights=st.lists(st.floats(0.01, 100), min_size=1, max_size=5),
    data=st.data(),
)
def test_total_is_the_weighted_mean_and_scaling_weights_changes_nothing(weights, data):
    values = data.draw(st.lists(st.floats(0, 1), min_size=len(weights), max_size=len(weights)))

    def constant(v):
        return lambda outputs, examples: [v] * len(outputs)

    def rubric(scale):
        return Rubric(
            [Criterion(f"c{i}", w * scale, constant(v)) for i, (w, v) in enumerate(zip(weights, values, strict=True))]
        )  # fmt: skip

    s = rubric(1.0).score(["x"], [{}])[0]
    expected = sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)
    assert s.total == pytest.approx(expected, abs=1e-12)
    assert 0 <= s.total <= 1
    assert rubric(7.0).score(["x"], [{}])[0].total == pytest.approx(s.total, abs=1e-12)


def test_code_checks():
    assert contains_reference()(["PARIS!"], [{"reference": "paris"}]) == [1.0]
    assert contains_reference(case_sensitive=True)(["PARIS!"], [{"reference": "paris"}]) == [0.0]
    assert contains_reference("city")(["in Lyon"], [{"city": "Lyon"}]) == [1.0]
    assert matches_regex(r"\d{4}")(["in 1999", "in 99"], [{}, {}]) == [1.0, 0.0]
    assert max_words(2)(["a b", "a b c", ""], [{}, {}, {}]) == [1.0, 0.0, 1.0]


def test_judge_criterion_on_a_tiny_model():
    vocab = {i: bytes([i]) for i in range(256)}
    merges = [(b"Y", b"e"), (b"Ye", b"s"), (b"N", b"o")]
    for k, (a, b) in enumerate(merges):
        vocab[256 + k] = a + b
    tokenizer = BPETokenizer(vocab, merges, special_tokens=["<|im_start|>", "<|im_end|>"])
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig.llama(tokenizer.vocab_size, d_model=32, max_seq_len=1024))
    polite = Criterion("polite", 1.0, judge_check(model, tokenizer, "It is polite."), "judge")
    rubric = Rubric([Criterion("correct", 1.0, contains_reference()), polite])
    scores = rubric.score(["42, thank you", "4"], EXAMPLES)
    for s in scores:
        assert 0 < s["polite"] < 1
        assert s.total == pytest.approx((s["correct"] + s["polite"]) / 2)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: Criterion("", 1.0, max_words(3)), ValueError, "name must be a non-empty"),
        (lambda: Criterion("a", 0.0, max_words(3)), ValueError, "weight must be > 0"),
        (lambda: Criterion("a", float("inf"), max_words(3)), ValueError, "weight must be finite"),
        (lambda: Criterion("a", 1.0, "len"), TypeError, "check must be callable"),
        (lambda: Criterion("a", 1.0, max_words(3), kind="human"), ValueError, "kind must be one of"),
        (lambda: Rubric(()), ValueError, "criteria must not be empty"),
        (lambda: Rubric((Criterion("a", 1, max_words(1)),) * 2), ValueError, "names must be unique"),
        (lambda: Rubric(("a",)), TypeError, r"criteria\[0\] must be a Criterion"),
        (lambda: _rubric().score(["a"], EXAMPLES), ValueError, "same length, got 1 and 2"),
        (lambda: _rubric().score("a", [{}]), TypeError, "outputs must be a list"),
        (lambda: _rubric().score([], []), ValueError, "outputs must not be empty"),
        (lambda: _rubric().score(["a"], [{"question": "q"}]), ValueError, "has no field 'reference'"),
        (lambda: Rubric([Criterion("x", 1, lambda o, e: [2.0])]).score(["a"], [{}]), ValueError, "'x': score 0 must be"),
        (lambda: Rubric([Criterion("x", 1, lambda o, e: [])]).score(["a"], [{}]), ValueError, "one score per output"),
        (lambda: matches_regex("("), ValueError, "pattern is not a valid"),
        (lambda: max_words(0), ValueError, "limit must be >= 1"),
        (lambda: judge_check(None, None, "polite"), TypeError, "model must be a DecoderLM"),
        (lambda: criterion_means([]), ValueError, "non-empty list of RubricScore"),
        (lambda: RubricScore(1.5, ("a",), (1.0,), (1.0,)), ValueError, r"total must be in \[0, 1\]"),
        (lambda: RubricScore(1.0, ("a",), (1.0,), (1.0,))["b"], KeyError, "no criterion 'b'"),
    ],
)  # fmt: skip
def test_errors_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_docstring_examples():
    import doctest

    import llmfoundations.evaluation.rubric as module

    assert doctest.testmod(module).failed == 0
