"""The Lab 06-3 checks grade: right answers pass, the known mistakes fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
"""

from __future__ import annotations

import pytest
import torch

from llmfoundations import checks

TINY = torch.finfo(torch.float32).smallest_normal


def good_int8(w):
    scale = (w.abs().amax(dim=1, keepdim=True) / 127.5).clamp(min=TINY)
    return torch.round(w / scale).clamp(-128, 127) * scale


def good_int8_reciprocal(w):
    # torchao's spelling, w * (1 / s): differs from w / s only at the true tie
    scale = (w.abs().amax(dim=1, keepdim=True) / 127.5).clamp(min=TINY)
    return torch.round(w * (1.0 / scale)).clamp(-128, 127) * scale


def good_int4(w, g):
    groups = w.reshape(w.shape[0], -1, g)
    lo = groups.amin(-1, keepdim=True).clamp(max=0.0)
    hi = groups.amax(-1, keepdim=True).clamp(min=0.0)
    s = ((hi - lo) / 15).clamp(min=TINY)
    z = (-torch.round(lo / s)).clamp(0, 15)
    return ((torch.round(groups / s) + z).clamp(0, 15) - z).mul(s).reshape(w.shape)


@pytest.mark.parametrize("answer", [good_int8, good_int8_reciprocal])
def test_int8_check_passes_correct_answers(answer, capsys):
    checks.check_int8_round_trip(answer)
    assert "✔ int8_round_trip: all 5 cases" in capsys.readouterr().out


def _scale(w, div=127.5, per_row=True):
    m = w.abs().amax(dim=1, keepdim=True) if per_row else w.abs().amax()
    return (m / div).clamp(min=TINY)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda w: torch.round(w / _scale(w, 127.0)).clamp(-128, 127) * _scale(w, 127.0), "127.5, not 127"),
        (lambda w: torch.round(w / _scale(w, per_row=False)).clamp(-128, 127) * _scale(w, per_row=False),
         "one scale per row"),
        (lambda w: torch.round(w / _scale(w)) * _scale(w), "clamp the codes"),
        (lambda w: torch.trunc(w / _scale(w)).clamp(-128, 127) * _scale(w), "do not truncate"),
        (lambda w: torch.round(w / _scale(w)).clamp(-128, 127), "not the integer codes"),
        (lambda w: good_int8(w)[:, :-1], "shaped like w"),
        (lambda w: good_int8(w).tolist(), "must return a tensor"),
    ],
)
def test_int8_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="int8_round_trip") as err:
        checks.check_int8_round_trip(wrong)
    assert hint in str(err.value)


def test_int4_check_passes_a_correct_answer(capsys):
    checks.check_int4_asym_round_trip(good_int4)
    assert "✔ int4_asym_round_trip: all 6 cases" in capsys.readouterr().out


def _int4(w, g, steps=15, with_zero=True, round_zero=True):
    groups = w.reshape(w.shape[0], -1, g)
    lo, hi = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    if with_zero:
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    s = ((hi - lo) / steps).clamp(min=TINY)
    z = torch.round(-lo / s).clamp(0, 15) if round_zero else -lo / s
    return ((torch.round(groups / s + z).clamp(0, 15) - z) * s).reshape(w.shape)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda w, g: _int4(w, g, with_zero=False), "it must hold 0"),
        (lambda w, g: _int4(w, g, steps=16), "15 steps"),
        (lambda w, g: _int4(w, g, round_zero=False), "round the zero point"),
        (lambda w, g: _int4(w, w.shape[1]), "not per row"),
        (lambda w, g: good_int8(w), None),
    ],
)
def test_int4_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="int4_asym_round_trip") as err:
        checks.check_int4_asym_round_trip(wrong)
    if hint is not None:
        assert hint in str(err.value)


def test_checks_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_int8_round_trip(good_int8)
    checks.check_int4_asym_round_trip(good_int4)
    assert torch.equal(torch.rand(3), expected)
