"""Checks for Lab 07-4 (code generation and pass@k): the estimator and the test harness.

- ``estimate_pass_at_k(n, c, k)`` is compared with the exact ``pass_at_k_reference``
  (fractions) on cases including ``c = 0``, ``n - c < k`` and ``n = 1000`` (where binomial
  coefficients overflow a float). Hints for known mistakes: the plug-in ``1 - (1 - c/n)^k``,
  ``c/n``, and an off-by-one in the product's range. (Leaving out the shortcut for
  ``n - c < k`` is not a mistake: the product then holds the factor ``1 - k/k = 0``.)
- ``make_test_program(problem, reply)`` must return ``(program, tests)``; the check runs
  them with ``run_program`` (``network="allow"``: they are the check's own, known programs)
  and compares the verdict with the expected one. Hints: the tests never call
  ``check(entry_point)`` (a wrong program then passes), the closing fence left in (a syntax
  error), the prompt and its stub left out (a reply that defines another function then
  ends in a ``NameError``, an "error", instead of "failed").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from llmfoundations.applications.code import pass_at_k_reference, run_program
from llmfoundations.applications.humaneval_easy import easy_problems

from .core import check_callable, compare_with_reference, exercise_check

__all__ = ["check_estimate_pass_at_k", "check_make_test_program"]

_PASS_AT_K_CASES = [
    ((10, 0, 1), {}), ((10, 3, 1), {}), ((10, 3, 5), {}), ((10, 8, 3), {}), ((5, 5, 5), {}),
    ((20, 1, 10), {}), ((1, 1, 1), {}), ((1000, 7, 100), {}), ((1000, 0, 1000), {}),
]  # fmt: skip


def _reference_pass_at_k(n: int, c: int, k: int) -> torch.Tensor:
    # a 0-d float64 tensor, so that results compare within a tolerance (floats compare with ==)
    return torch.tensor(float(pass_at_k_reference(n, c, k)), dtype=torch.float64)


def _pass_at_k_mistakes() -> list[tuple[Callable[..., Any], str]]:
    def product(n: int, c: int, k: int, lo: int) -> float:
        prod = 1.0
        for i in range(lo, n + 1):
            prod *= 1.0 - k / i
        return 1.0 - prod

    return [
        (lambda n, c, k: 1.0 - (1.0 - c / n) ** k,
         "that is the plug-in 1 - (1 - c/n)^k, which is biased low for k >= 2; use 1 - prod_{i=n-c+1}^{n} (1 - k/i)"),
        (lambda n, c, k: c / n, "c/n is pass@1 only; pass@k depends on k"),
        (lambda n, c, k: 1.0 if n - c < k else product(n, c, k, n - c),
         "the product runs over i = n - c + 1, ..., n (c factors), not from n - c"),
        (lambda n, c, k: 1.0 if n - c < k else product(n, c, k, n - c + 2),
         "the product runs over i = n - c + 1, ..., n (c factors)"),
    ]  # fmt: skip


@exercise_check
def check_estimate_pass_at_k(student: Callable[[int, int, int], float]) -> None:
    """Lab 07-4: ``estimate_pass_at_k(n, c, k)`` -> ``1 - C(n - c, k) / C(n, k)`` as a float."""
    check_callable("estimate_pass_at_k", student)

    def as_float(n: int, c: int, k: int) -> torch.Tensor:
        got = student(n, c, k)
        if hasattr(got, "item"):
            got = got.item()
        if not isinstance(got, (int, float)):
            raise AssertionError(f"estimate_pass_at_k must return a float, got {type(got).__name__}")
        return torch.tensor(float(got), dtype=torch.float64)

    compare_with_reference(
        "estimate_pass_at_k", as_float, _reference_pass_at_k, _PASS_AT_K_CASES,
        atol=1e-9, rtol=1e-7, hints=_pass_at_k_mistakes(),
    )  # fmt: skip


# --------------------------------------------------------------------------- harness


def _harness_cases() -> list[tuple[dict, str, str]]:
    """(problem, reply, expected status) for ``make_test_program``."""
    problems = easy_problems()
    strlen, add, incr = problems["HumanEval/23"], problems["HumanEval/53"], problems["HumanEval/42"]
    return [
        (strlen, "def strlen(string: str) -> int:\n    return len(string)\n", "passed"),
        (strlen, "def strlen(string: str) -> int:\n    return len(string)\n```\n\nThis uses len().", "passed"),
        (strlen, "def strlen(string: str) -> int:\n    return len(string) + 1\n```\nDone.", "failed"),
        (add, "def add(x: int, y: int) -> int:\n    return x - y\n", "failed"),
        (add, "def add(x: int, y: int):\n    return x + y\n```", "passed"),
        (incr, "def incr_list(l: list):\n    return [x + 1 for x in l]\n```", "passed"),
        (strlen, "def helper(s):\n    return len(s)\n```", "failed"),  # the stub stays: returns None
    ]


def _reference_make_test_program(problem: dict, reply: str) -> tuple[str, str]:
    code = reply.split("```")[0]
    return problem["prompt"] + "    pass\n\n\n" + code, problem["test"] + f"\ncheck({problem['entry_point']})\n"


def _status(pair: Any) -> str:
    if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
        raise AssertionError(
            f"make_test_program must return a tuple (program, tests) of two strings, got {type(pair).__name__}"
        )
    return run_program(pair[0], pair[1], timeout_s=5.0, network="allow").status


@exercise_check
def check_make_test_program(student: Callable[[dict, str], tuple[str, str]]) -> None:
    """Lab 07-4: ``make_test_program(problem, reply)`` -> ``(program, tests)``: the prompt with
    a stub body, then the reply's code up to the closing fence; the problem's tests and the
    call ``check(entry_point)``. Graded by the verdict ``run_program`` gives."""
    check_callable("make_test_program", student)
    cases = _harness_cases()
    for i, (problem, reply, expected) in enumerate(cases, start=1):
        where = f"make_test_program, case {i} of {len(cases)} ({problem['task_id']}, reply {reply[:40]!r}...)"
        got = _status(student(dict(problem), reply))
        if got == expected:
            continue
        program, tests = student(dict(problem), reply)
        hint = ""
        if f"check({problem['entry_point']})" not in tests:
            hint = ("the tests only define check(candidate); add the call check(<entry_point>) after them, "
                    "or every program passes")
        elif "```" in program:
            hint = "cut the reply at the closing fence ```: what follows is prose, a syntax error in Python"
        elif problem["prompt"].strip() not in program:
            hint = "start the program with the problem's prompt (and a stub body): it holds the imports"
        message = f"{where}: run_program says {got!r}, expected {expected!r}"
        raise AssertionError(message + (f"\nHint: {hint}" if hint else ""))
    print(f"✔ make_test_program: all {len(cases)} cases give the expected verdict")
