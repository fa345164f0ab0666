"""The Lab 05-2 checks grade: right answers pass, plausible wrong ones fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
The references are held against independent ones: a hand-worked total, and the
bootstrap written out with NumPy here.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmfoundations import checks
from llmfoundations.checks import open_ended

# ----------------------------------------------------------------- weighted totals


def good_weighted_totals(scores, weights):
    total = sum(weights.values())
    return [sum(w * s[name] for name, w in weights.items()) / total for s in scores]


def test_weighted_totals_reference_matches_a_hand_worked_total():
    # (3 * 0 + 2 * 1 + 1 * 1 + 1 * 1) / 7 = 4 / 7
    got = open_ended.reference_weighted_totals(
        [{"order": 1.0, "policy": 0.0, "concise": 1.0, "complete": 1.0}],
        {"policy": 3.0, "order": 2.0, "concise": 1.0, "complete": 1.0},
    )
    assert got == [pytest.approx(4 / 7)]


def test_weighted_totals_check_passes_a_correct_answer(capsys):
    checks.check_rubric_weighted_totals(good_weighted_totals)
    assert "✔ weighted_totals: all 4 cases" in capsys.readouterr().out


def test_weighted_totals_check_accepts_a_tuple_or_an_array():
    checks.check_rubric_weighted_totals(lambda s, w: tuple(good_weighted_totals(s, w)))
    checks.check_rubric_weighted_totals(lambda s, w: np.array(good_weighted_totals(s, w)))


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda s, w: [sum(x.values()) / len(x) for x in s], "plain mean"),
        (lambda s, w: [sum(w[c] * x[c] for c in w) for x in s], "sum of the weights"),
        (lambda s, w: [sum(w[c] * x[c] for c in w) / len(w) for x in s], "number of criteria"),
        (
            lambda s, w: [
                sum(a * b for a, b in zip(w.values(), x.values(), strict=True)) / sum(w.values())
                for x in s
            ],
            "by name",
        ),
    ],
)
def test_weighted_totals_check_rejects_known_mistakes_with_a_hint(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        checks.check_rubric_weighted_totals(wrong)


def test_weighted_totals_check_rejects_a_single_number():
    with pytest.raises(AssertionError, match="list of numbers"):
        checks.check_rubric_weighted_totals(lambda s, w: sum(good_weighted_totals(s, w)))


# ----------------------------------------------------------------- paired bootstrap


def good_paired_bootstrap_ci(a, b, n_resamples=1000, seed=0):
    d = np.asarray(a) - np.asarray(b)
    index = np.random.default_rng(seed).integers(0, len(d), (n_resamples, len(d)))
    low, high = np.quantile(d[index].mean(axis=1), [0.025, 0.975])
    return float(low), float(high)


def test_paired_bootstrap_reference_matches_numpy_written_out():
    a, b = [0.5, 1.0, 0.25, 0.75, 1.0], [0.5, 0.5, 0.0, 0.75, 0.5]
    assert open_ended.reference_paired_bootstrap_ci(a, b, 800, 4) == pytest.approx(
        good_paired_bootstrap_ci(a, b, 800, 4)
    )


def test_paired_bootstrap_check_passes_a_correct_answer(capsys):
    checks.check_paired_bootstrap_ci(good_paired_bootstrap_ci)
    assert "✔ paired_bootstrap_ci: all 4 cases" in capsys.readouterr().out


def unpaired(a, b, n_resamples=1000, seed=0):
    a, b = np.asarray(a), np.asarray(b)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(a), (n_resamples, len(a)))
    ib = rng.integers(0, len(b), (n_resamples, len(b)))
    low, high = np.quantile(a[ia].mean(axis=1) - b[ib].mean(axis=1), [0.025, 0.975])
    return float(low), float(high)


def ninety(a, b, n_resamples=1000, seed=0):
    d = np.asarray(a) - np.asarray(b)
    index = np.random.default_rng(seed).integers(0, len(d), (n_resamples, len(d)))
    low, high = np.quantile(d[index].mean(axis=1), [0.05, 0.95])
    return float(low), float(high)


def separate(a, b, n_resamples=1000, seed=0):
    la, ha = good_paired_bootstrap_ci(a, np.zeros(len(a)), n_resamples, seed)
    lb, hb = good_paired_bootstrap_ci(b, np.zeros(len(b)), n_resamples, seed)
    return la - hb, ha - lb


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [(unpaired, "ONE set of indices"), (ninety, "2.5% and 97.5%"), (separate, "differences a - b")],
)
def test_paired_bootstrap_check_rejects_known_mistakes_with_a_hint(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        checks.check_paired_bootstrap_ci(wrong)


@pytest.mark.parametrize(
    "wrong",
    [
        lambda a, b, n_resamples=1000, seed=0: good_paired_bootstrap_ci(a, b, n_resamples, seed + 1),
        lambda a, b, n_resamples=1000, seed=0: good_paired_bootstrap_ci(b, a, n_resamples, seed),
        lambda a, b, n_resamples=1000, seed=0: good_paired_bootstrap_ci(a, b, n_resamples, seed)[0],
        lambda a, b, n_resamples=1000, seed=0: (float(np.mean(a) - np.mean(b)),) * 2,
    ],
)
def test_paired_bootstrap_check_rejects_other_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="paired_bootstrap_ci"):
        checks.check_paired_bootstrap_ci(wrong)
