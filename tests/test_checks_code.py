"""The Lab 07-4 checks grade: right answers pass, the known mistakes fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
"""

from __future__ import annotations

import math

import pytest

from llmfoundations import checks


def good_estimate(n, c, k):
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def test_estimate_check_passes_a_correct_answer(capsys):
    checks.check_estimate_pass_at_k(good_estimate)
    assert "✔ estimate_pass_at_k: all 9 cases" in capsys.readouterr().out


def test_estimate_check_passes_the_binomial_form_with_exact_integers(capsys):
    # exact integer binomials do not overflow: another correct spelling
    checks.check_estimate_pass_at_k(lambda n, c, k: 1 - math.comb(n - c, k) / math.comb(n, k))
    assert "✔ estimate_pass_at_k" in capsys.readouterr().out


def _product_from(lo_shift):
    def wrong(n, c, k):
        if n - c < k:
            return 1.0
        prod = 1.0
        for i in range(n - c + lo_shift, n + 1):
            prod *= 1.0 - k / i
        return 1.0 - prod

    return wrong


def _no_guard(n, c, k):
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def test_estimate_check_passes_the_product_without_the_shortcut(capsys):
    # for n - c < k the product holds the factor 1 - k/k = 0, so the shortcut is not needed
    checks.check_estimate_pass_at_k(_no_guard)
    assert "✔ estimate_pass_at_k" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda n, c, k: 1.0 - (1.0 - c / n) ** k, "plug-in"),
        (lambda n, c, k: c / n, "c/n is pass@1 only"),
        (_product_from(0), "not from n - c"),
        (_product_from(2), "(c factors)"),
        (lambda n, c, k: "0.5", "must return a float"),
    ],
)
def test_estimate_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="estimate_pass_at_k") as err:
        checks.check_estimate_pass_at_k(wrong)
    assert hint in str(err.value)


def good_make_test_program(problem, reply):
    code = reply.split("```")[0]
    return problem["prompt"] + "    pass\n\n\n" + code, problem["test"] + f"\ncheck({problem['entry_point']})\n"


def test_make_test_program_check_passes_a_correct_answer(capsys):
    checks.check_make_test_program(good_make_test_program)
    assert "✔ make_test_program: all 7 cases" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, hint",
    [
        # the tests are defined but never called: a wrong program passes
        (lambda p, r: (p["prompt"] + "    pass\n\n\n" + r.split("```")[0], p["test"]), "check(<entry_point>)"),
        # the closing fence and the prose after it are left in: a syntax error
        (lambda p, r: (p["prompt"] + "    pass\n\n\n" + r, p["test"] + f"\ncheck({p['entry_point']})\n"),
         "closing fence"),
        # no prompt and no stub: a reply that defines another function ends in a NameError
        (lambda p, r: (r.split("```")[0], p["test"] + f"\ncheck({p['entry_point']})\n"), "stub body"),
        (lambda p, r: [p["prompt"], p["test"]], "tuple (program, tests)"),
    ],
)
def test_make_test_program_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="make_test_program") as err:
        checks.check_make_test_program(wrong)
    assert hint in str(err.value)
