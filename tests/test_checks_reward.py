"""The Lab 03-5 checks grade: right answers pass, the known mistakes fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmfoundations import checks


def good_bt_loss(r_chosen, r_rejected, margin=None):
    gap = r_chosen - r_rejected
    if margin is not None:
        gap = gap - margin
    return -F.logsigmoid(gap).mean()


def good_bt_loss_softplus(r_chosen, r_rejected, margin=None):
    gap = r_chosen - r_rejected - (0.0 if margin is None else margin)
    return F.softplus(-gap).mean()  # -log sigma(x) = softplus(-x): also stable


@pytest.mark.parametrize("answer", [good_bt_loss, good_bt_loss_softplus])
def test_bt_loss_check_passes_correct_answers(answer, capsys):
    checks.check_bradley_terry_loss(answer)
    assert "✔ bt_loss: all 7 cases" in capsys.readouterr().out


def _gap(rc, rr, margin):
    return rc - rr - (0.0 if margin is None else margin)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda rc, rr, margin=None: -F.logsigmoid(rr - rc - (0.0 if margin is None else margin)).mean(),
         "r_chosen - r_rejected"),
        (lambda rc, rr, margin=None: -F.logsigmoid(rc - rr + (0.0 if margin is None else margin)).mean(),
         "subtracted"),
        (lambda rc, rr, margin=None: -F.logsigmoid(_gap(rc, rr, margin)).sum(), "not their sum"),
        (lambda rc, rr, margin=None: F.logsigmoid(_gap(rc, rr, margin)).mean(), "MINUS"),
        (lambda rc, rr, margin=None: -torch.log(torch.sigmoid(_gap(rc, rr, margin))).mean(), "F.logsigmoid"),
        (lambda rc, rr, margin=None: torch.sigmoid(-_gap(rc, rr, margin)).mean(), "not sigma(-gap)"),
        (lambda rc, rr, margin=None: -F.logsigmoid(_gap(rc, rr, margin)), "scalar tensor"),
        (lambda rc, rr: -F.logsigmoid(rc - rr).mean(), "margin"),  # no margin argument at all
    ],
)
def test_bt_loss_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="bt_loss") as err:
        checks.check_bradley_terry_loss(wrong)
    assert hint in str(err.value)


def good_last_token_hidden(hidden_states, attention_mask):
    positions = torch.arange(attention_mask.shape[1])
    last = (positions * attention_mask).argmax(dim=1)
    return hidden_states[torch.arange(hidden_states.shape[0]), last]


def good_last_token_hidden_loop(hidden_states, attention_mask):
    rows = []
    for h, m in zip(hidden_states, attention_mask, strict=True):
        rows.append(h[m.nonzero().max()])
    return torch.stack(rows)


@pytest.mark.parametrize("answer", [good_last_token_hidden, good_last_token_hidden_loop])
def test_last_token_check_passes_correct_answers(answer, capsys):
    checks.check_reward_last_token_pool(answer)
    assert "✔ last_token_hidden: all 4 cases" in capsys.readouterr().out


def _rows(h):
    return torch.arange(h.shape[0])


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda h, m: h[:, -1], "right-padded row"),
        (lambda h, m: h[_rows(h), m.sum(1) - 1], "only with right padding"),
        (lambda h, m: h[_rows(h), m.sum(1).clamp_max(h.shape[1] - 1)], "one position too far"),
        (lambda h, m: h[:, 0], "LAST real token"),
        (lambda h, m: (h * m[..., None]).sum(1) / m.sum(1, keepdim=True), "mean pooling"),
        (lambda h, m: h[_rows(h), m.sum(1) - 1].tolist(), "must return a tensor"),
    ],
)
def test_last_token_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="last_token_hidden") as err:
        checks.check_reward_last_token_pool(wrong)
    assert hint in str(err.value)
