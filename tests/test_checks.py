"""The checks grade: a right answer passes, wrong answers raise with a useful message."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch

from llmfoundations import checks


def test_checks_collects_every_topic_module():
    assert callable(checks.check_softmax)
    assert "check_softmax" in checks.__all__


TOPICS = sorted(m.name for m in pkgutil.iter_modules(checks.__path__) if m.name != "core")


@pytest.mark.parametrize("topic", TOPICS)
def test_every_check_of_a_topic_is_exported(topic):
    module = importlib.import_module(f"llmfoundations.checks.{topic}")
    assert module.__all__, f"checks.{topic} exports nothing"
    for name in module.__all__:
        assert name in checks.__all__
        assert getattr(checks, name) is getattr(module, name)


def test_two_topics_exporting_one_name_is_an_import_error(tmp_path, monkeypatch):
    import importlib
    import shutil
    import sys
    from pathlib import Path

    package = tmp_path / "fakechecks"
    shutil.copytree(Path(checks.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "zz_clash.py").write_text("__all__ = ['check_softmax']\ncheck_softmax = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fakechecks", raising=False)
    with pytest.raises(ImportError, match="zz_clash redefines 'check_softmax'"):
        importlib.import_module("fakechecks")


def test_softmax_check_passes_a_correct_answer(capsys):
    def good(x):
        z = x - x.max(-1, keepdim=True).values
        return z.exp() / z.exp().sum(-1, keepdim=True)

    checks.check_softmax(good)
    assert "✔ softmax" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong",
    [
        lambda x: x.exp() / x.exp().sum(-1, keepdim=True),  # unstable: NaN at 1000
        lambda x: x.exp() / x.exp().sum(0, keepdim=True),  # wrong axis
        lambda x: torch.softmax(x, -1)[..., :-1],  # wrong shape
        # stabilised with the *global* maximum: NaN on [[1000, 1001], [0, 1]]
        lambda x: (x - x.max()).exp() / (x - x.max()).exp().sum(-1, keepdim=True),
    ],
)
def test_softmax_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="softmax, case"):
        checks.check_softmax(wrong)


def test_a_blank_answer_says_not_attempted_and_what_to_do():
    def softmax(x):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError) as info:
        checks.check_softmax(softmax)
    assert str(info.value) == (
        "softmax: not attempted yet: replace `raise NotImplementedError()` with your solution "
        "and run the cell again"
    )


def test_a_blank_lambda_is_named_after_the_check():
    with pytest.raises(NotImplementedError, match="^softmax: not attempted yet"):
        checks.check_softmax(lambda x: (_ for _ in ()).throw(NotImplementedError))


def test_a_library_not_implemented_error_is_not_called_a_blank():
    def softmax(x):
        raise NotImplementedError("aten::foo is not implemented for this device")

    with pytest.raises(NotImplementedError, match="^aten::foo is not implemented"):
        checks.check_softmax(softmax)


ALL_CHECKS = sorted(n for n in checks.__all__ if n.startswith("check_"))


@pytest.mark.parametrize("name", ALL_CHECKS)
def test_every_check_fails_on_a_blank_answer_saying_not_attempted(name):
    def blank(*args, **kwargs):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError, match="not attempted yet: replace `raise"):
        getattr(checks, name)(blank)


def test_a_check_without_exercise_check_is_an_import_error(tmp_path, monkeypatch):
    import importlib
    import shutil
    import sys
    from pathlib import Path

    package = tmp_path / "fakechecks2"
    shutil.copytree(Path(checks.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "zz_plain.py").write_text("__all__ = ['check_plain']\ndef check_plain(f):\n    f()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fakechecks2", raising=False)
    with pytest.raises(ImportError, match="zz_plain.check_plain must be decorated with @exercise_check"):
        importlib.import_module("fakechecks2")


# ----------------------------------------------------------------- forbidden calls


def test_softmax_check_refuses_the_built_in_softmax_in_any_spelling():
    import torch.nn.functional as F

    for shortcut in (
        lambda x: torch.softmax(x, -1),
        lambda x: F.softmax(x, dim=-1),
        lambda x: x.softmax(-1),
        lambda x: x.log_softmax(-1).exp(),
    ):
        with pytest.raises(AssertionError, match=r"softmax, case 1 of \d+ .*calls (log_)?softmax, which "
                           "this exercise asks you not to use"):
            checks.check_softmax(shortcut)


def test_forbidding_sees_aliases_and_leaves_torch_untouched():
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from llmfoundations.checks.core import ForbiddenCall, forbidding_torch_calls

    q = torch.randn(2, 3, 4)
    with forbidding_torch_calls({"scaled_dot_product_attention": "do it by hand"}):
        torch.softmax(q, -1)  # other calls run
        with pytest.raises(ForbiddenCall, match="calls scaled_dot_product_attention.*do it by hand"):
            sdpa(q, q, q)
    assert sdpa(q, q, q).shape == (2, 3, 4)  # and the call works again outside


def test_forbidding_needs_a_mapping():
    from llmfoundations.checks.core import forbidding_torch_calls

    with pytest.raises(TypeError, match="advice must map"):
        with forbidding_torch_calls(["softmax"]):
            pass


# --------------------------------------------------------------------------- hints


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda x: x.exp() / x.exp().sum(-1, keepdim=True), "subtract the row maximum"),
        (lambda x: (x - x.max(0, keepdim=True).values).exp()
         / (x - x.max(0, keepdim=True).values).exp().sum(0, keepdim=True), "over the first dimension"),
        (lambda x: (x - x.max()).exp() / (x - x.max()).exp().sum(), "over the whole tensor"),
    ],
)
def test_softmax_check_names_the_common_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=f"(?s)softmax, case.*\nHint: .*{hint}"):
        checks.check_softmax(wrong)


def test_no_hint_when_no_known_mistake_matches():
    with pytest.raises(AssertionError) as info:
        checks.check_softmax(lambda x: torch.zeros_like(x))
    assert "Hint:" not in str(info.value)


def test_compare_with_reference_adds_the_hint_of_the_mistake_it_reproduces():
    from llmfoundations.checks.core import compare_with_reference

    cases = [((torch.tensor([1.0, 2.0]),), {}), ((torch.tensor([3.0]),), {})]
    hints = [(lambda x: x * 3, "tripled"), (lambda x: x + 1, "one added")]
    with pytest.raises(AssertionError, match="(?s)double, case 1 of 2.*\nHint: one added$"):
        compare_with_reference("double", lambda x: x + 1, lambda x: 2 * x, cases, hints=hints)


@pytest.mark.parametrize("name", ALL_CHECKS)
def test_every_check_rejects_a_non_function(name):
    with pytest.raises(TypeError, match="expected a function, got int"):
        getattr(checks, name)(3)


def test_a_failed_case_shows_plain_inputs_by_value_and_tensors_by_shape():
    from llmfoundations.checks.core import _describe

    assert _describe([[1, 2, 3], [4, 5]]) == "[[1, 2, 3], [4, 5]]"  # a student can rerun it
    assert _describe(16) == "16" and _describe("ab") == "'ab'"
    assert _describe(torch.zeros(2, 3)) == "tensor of shape (2, 3) and dtype float32"
    assert _describe({"a": 1}) == "dict"  # not a list or tuple of plain values
    long = _describe([list(range(30))] * 20)
    assert len(long) == 160 and long.endswith("…")
