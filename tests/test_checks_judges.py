"""The Lab 05-3 checks grade: right answers pass, the known mistakes fail with their hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.

The references inside the checks are held against independent ones too: kappa and ECE
written out here from their definitions (and the chapter's worked examples), and
``PairwiseJudgement`` for the swap test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmfoundations import checks
from llmfoundations.checks import judges
from llmfoundations.evaluation.judge import PairwiseJudgement

# ----------------------------------------------------------------- kappa


def good_kappa_from_table(table):
    n = sum(sum(row) for row in table)
    k = len(table)
    p_o = sum(table[i][i] for i in range(k)) / n
    rows = [sum(table[i]) / n for i in range(k)]
    cols = [sum(table[i][j] for i in range(k)) / n for j in range(k)]
    p_e = sum(r * c for r, c in zip(rows, cols, strict=True))
    return (p_o - p_e) / (1 - p_e)


def numpy_kappa_from_table(table):
    t = np.asarray(table, dtype=float)
    t = t / t.sum()
    p_e = float(t.sum(1) @ t.sum(0))
    return np.float64((np.trace(t) - p_e) / (1 - p_e))  # a NumPy scalar is fine


@pytest.mark.parametrize("good", [good_kappa_from_table, numpy_kappa_from_table])
def test_kappa_check_passes_correct_answers(good, capsys):
    checks.check_kappa_from_table(good)
    assert "✔ kappa_from_table: all 6 cases" in capsys.readouterr().out


def test_kappa_reference_matches_the_definition_and_a_hand_worked_value():
    # 50 items, p_o = 0.7, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5, kappa = 0.4
    assert judges.reference_kappa_from_table([[20, 5], [10, 15]]) == pytest.approx(0.4)
    for table in judges.KAPPA_TABLES:
        assert judges.reference_kappa_from_table(table) == pytest.approx(good_kappa_from_table(table))


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (judges._kappa_observed_only, "observed agreement"),
        (judges._kappa_uniform_chance, "not 1/K"),
        (judges._kappa_rows_twice, "column"),
        (judges._kappa_wrong_denominator, "1 - p_e"),
        (lambda table: 1 - good_kappa_from_table(table), None),  # no known mistake
    ],
)
def test_kappa_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="kappa_from_table, case") as info:
        checks.check_kappa_from_table(wrong)
    if hint is None:
        assert "Hint:" not in str(info.value)
    else:
        assert "Hint:" in str(info.value) and hint in str(info.value)


def test_kappa_check_wants_a_float():
    with pytest.raises(AssertionError, match="must return a float, got str"):
        checks.check_kappa_from_table(lambda table: "0.4")


# ----------------------------------------------------------------- ECE


def good_equal_width_ece(confidence, correct, n_bins=10):
    bins = {}
    for c, ok in zip(confidence, correct, strict=True):
        bins.setdefault(max(math.ceil(c * n_bins) - 1, 0), []).append((c, ok))
    n = len(confidence)
    return sum(
        len(v) / n * abs(sum(ok for _, ok in v) / len(v) - sum(c for c, _ in v) / len(v))
        for v in bins.values()
    )


def numpy_equal_width_ece(confidence, correct, n_bins=10):
    c, y = np.asarray(confidence, float), np.asarray(correct, float)
    m = np.clip(np.ceil(c * n_bins) - 1, 0, None).astype(int)
    total = 0.0
    for b in np.unique(m):
        sel = m == b
        total += sel.mean() * abs(y[sel].mean() - c[sel].mean())
    return total


@pytest.mark.parametrize("good", [good_equal_width_ece, numpy_equal_width_ece])
def test_ece_check_passes_correct_answers(good, capsys):
    checks.check_equal_width_ece(good)
    assert "✔ equal_width_ece: all 6 cases" in capsys.readouterr().out


def test_ece_reference_gives_the_chapter_example():
    # two verdicts at 0.95, one right (gap 0.45); two at 0.65, both right (gap 0.35)
    assert judges.reference_equal_width_ece([0.95, 0.95, 0.65, 0.65], [1, 0, 1, 1]) == pytest.approx(0.4)
    for c, y, m in judges.ECE_CASES:
        assert judges.reference_equal_width_ece(c, y, m) == pytest.approx(good_equal_width_ece(c, y, m))


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (judges._ece_unweighted, "n_m / n"),
        (judges._ece_over_all_bins, "empty"),
        (judges._ece_signed_raw, "absolute gap"),
        (judges._ece_one_bin, "one gap over all verdicts"),
        (judges._ece_floor_bins, "the bin below it"),
        (lambda c, y, n_bins=10: good_equal_width_ece(c, y, 10), None),  # ignores n_bins
    ],
)
def test_ece_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="equal_width_ece, case") as info:
        checks.check_equal_width_ece(wrong)
    if hint is None:
        assert "Hint:" not in str(info.value)
    else:
        assert "Hint:" in str(info.value) and hint in str(info.value)


def test_every_known_ece_mistake_differs_from_the_reference_somewhere():
    mistakes = [judges._ece_unweighted, judges._ece_over_all_bins, judges._ece_signed_raw,
                judges._ece_one_bin, judges._ece_floor_bins]
    for wrong in mistakes:
        assert any(
            abs(wrong(c, y, m) - judges.reference_equal_width_ece(c, y, m)) > 1e-6
            for c, y, m in judges.ECE_CASES
        ), wrong.__name__


# ----------------------------------------------------------------- swap test


def good_swap_averaged(p_a_12, p_a_21):
    p_12, p_21 = p_a_12, 1 - p_a_21
    return (p_12 + p_21) / 2, bool((p_12 - 0.5) * (p_21 - 0.5) > 0)


def test_swap_check_passes_a_correct_answer(capsys):
    checks.check_swap_averaged(good_swap_averaged)
    assert "✔ swap_averaged: all 7 cases" in capsys.readouterr().out


def test_swap_reference_agrees_with_pairwise_judgement():
    for a, b in judges.SWAP_CASES:
        # logprobs whose softmax gives P(A) = a in game 1 and P(A) = b in game 2
        lp = lambda p: torch.tensor([[math.log(p), math.log(1 - p)]], dtype=torch.float64)  # noqa: E731
        judged = PairwiseJudgement(logprobs_12=lp(a), logprobs_21=lp(b))
        p_first, consistent = judges.reference_swap_averaged(a, b)
        assert p_first == pytest.approx(judged.p_first.item())
        assert consistent == bool(judged.consistent.item())
    assert judges.reference_swap_averaged(0.9, 0.8) == (0.55, False)  # the chapter's example


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (judges._swap_position_a, "1 - P(A)"),
        (judges._swap_no_flip, "flip the second game"),
        (judges._swap_same_letter, "same *answer*"),
        (judges._swap_half_counts, "exactly 1/2"),
    ],
)
def test_swap_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="swap_averaged, case") as info:
        checks.check_swap_averaged(wrong)
    assert "Hint:" in str(info.value) and hint in str(info.value)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda a, b: (a + 1 - b) / 2, "must return a tuple"),
        (lambda a, b: ((a + 1 - b) / 2, 1), "consistent must be a bool"),
        (lambda a, b: ("0.5", True), "p_first must be a float"),
    ],
)
def test_swap_check_says_what_the_result_should_be(wrong, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_swap_averaged(wrong)
