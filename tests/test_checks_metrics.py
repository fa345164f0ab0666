"""The chapter-5 metric checks grade: right answers pass, plausible wrong ones fail.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
The references inside the checks are held against hand-worked values and against
independent implementations written here.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest

from llmfoundations import checks
from llmfoundations.checks import metrics

# ----------------------------------------------------------------- clipped precision


def good_clipped_precision(hypothesis, references, n):
    def grams(tokens):
        return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))

    best = Counter()
    for ref in references:
        best |= grams(ref)
    hyp = grams(hypothesis)
    return sum(min(c, best[g]) for g, c in hyp.items()), sum(hyp.values())


def test_clipped_precision_reference_matches_hand_worked_values():
    ref = metrics._reference_clipped_precision
    assert ref("the the the the the the the".split(), ["the cat is on the mat".split()], 1) == (2, 7)
    assert ref("the cat sat .".split(), ["the cat sat on the mat .".split()], 2) == (2, 3)
    assert ref("a b".split(), ["a b c".split()], 3) == (0, 0)


def test_clipped_precision_check_passes_a_correct_answer(capsys):
    checks.check_bleu_clipped_precision(good_clipped_precision)
    assert "✔ clipped_precision: all 8 cases" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (metrics._no_clipping, "clip"),
        (metrics._clip_by_sum, "not the sum"),
        (metrics._clip_by_first, "not only the first"),
        (metrics._distinct, "every occurrence"),
        (metrics._all_orders, "only the n-grams of order n"),
    ],
)
def test_clipped_precision_check_names_the_common_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        checks.check_bleu_clipped_precision(wrong)


def test_clipped_precision_check_wants_two_ints():
    with pytest.raises(AssertionError, match="tuple"):
        checks.check_bleu_clipped_precision(lambda h, r, n: [*good_clipped_precision(h, r, n)])
    with pytest.raises(AssertionError, match="two ints"):
        checks.check_bleu_clipped_precision(
            lambda h, r, n: (lambda m, t: (m / t if t else 0.0, t))(*good_clipped_precision(h, r, n))
        )


def test_clipped_precision_check_rejects_a_short_hypothesis_bug():
    def crashes_when_short(h, r, n):
        if len(h) < n:
            return (0, 1)
        return good_clipped_precision(h, r, n)

    with pytest.raises(AssertionError, match="clipped_precision"):
        checks.check_bleu_clipped_precision(crashes_when_short)


# ----------------------------------------------------------------- brevity penalty


def good_brevity_penalty(c, r):
    if c >= r:
        return 1.0
    return math.exp(1 - r / c) if c else 0.0


def test_brevity_penalty_check_passes_a_correct_answer(capsys):
    checks.check_bleu_brevity_penalty(good_brevity_penalty)
    assert "✔ bleu_brevity_penalty: all 9 cases" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda c, r: 1.0 if c >= r else math.exp(1 - c / r), "1 - r / c"),
        (lambda c, r: math.exp(1 - r / c) if c else 0.0, "at least as long"),
        (lambda c, r: 1.0 if c >= r else c / r, "not the length ratio"),
        (lambda c, r: 1.0 if c >= r else math.exp(1 - r / c), "division by zero"),
        (lambda c, r: 1.0 if c > r else (math.exp(1 - r / c) if c else 0.0), "bleu_brevity_penalty"),
        (lambda c, r: 1.0 if c >= r else (math.exp(1 - r / c) if c else 1.0), "bleu_brevity_penalty"),
    ],
)
def test_brevity_penalty_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        checks.check_bleu_brevity_penalty(wrong)


# ----------------------------------------------------------------- ROUGE-L


def good_rouge_l_prf(prediction, reference):
    m, n = len(prediction), len(reference)
    if not m or not n:
        return 0.0, 0.0, 0.0
    prev = [0] * (n + 1)
    for x in prediction:
        row = [0]
        for j, y in enumerate(reference, start=1):
            row.append(prev[j - 1] + 1 if x == y else max(prev[j], row[-1]))
        prev = row
    lcs = prev[-1]
    p, r = lcs / m, lcs / n
    return p, r, 2 * p * r / (p + r) if lcs else 0.0


def test_rouge_l_reference_matches_lins_examples():
    ref = metrics._reference_rouge_l_prf
    assert ref("police kill the gunman".split(), "police killed the gunman".split()) == (0.75, 0.75, 0.75)
    assert ref("the gunman kill police".split(), "police killed the gunman".split()) == (0.5, 0.5, 0.5)
    assert ref("the cat".split(), "the cat sat on the mat".split()) == (1.0, 1 / 3, 0.5)


def test_rouge_l_check_passes_a_correct_answer(capsys):
    checks.check_rouge_l_prf(good_rouge_l_prf)
    assert "✔ rouge_l_prf: all 9 cases" in capsys.readouterr().out


def _crashes_on_empty(prediction, reference):
    lcs = metrics.lcs_length(list(prediction), list(reference))
    p, r = lcs / len(prediction), lcs / len(reference)
    return p, r, 2 * p * r / (p + r)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (metrics._longest_substring, "SUBSEQUENCE"),
        (metrics._swapped, "precision divides"),
        (metrics._arithmetic_mean, "harmonic mean"),
        (_crashes_on_empty, "division by zero"),
        (lambda p, r: good_rouge_l_prf(p, r)[2], "tuple"),
        (lambda p, r: list(good_rouge_l_prf(p, r)), "tuple"),
    ],
)
def test_rouge_l_check_names_the_common_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        checks.check_rouge_l_prf(wrong)
