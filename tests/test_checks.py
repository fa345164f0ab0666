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
    ],
)
def test_softmax_check_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="softmax, case"):
        checks.check_softmax(wrong)


def test_a_blank_answer_fails_with_not_implemented():
    def blank(x):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        checks.check_softmax(blank)


ALL_CHECKS = sorted(n for n in checks.__all__ if n.startswith("check_"))


@pytest.mark.parametrize("name", ALL_CHECKS)
def test_every_check_fails_on_a_blank_answer(name):
    def blank(*args, **kwargs):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        getattr(checks, name)(blank)


@pytest.mark.parametrize("name", ALL_CHECKS)
def test_every_check_rejects_a_non_function(name):
    with pytest.raises(TypeError, match="expected a function, got int"):
        getattr(checks, name)(3)
