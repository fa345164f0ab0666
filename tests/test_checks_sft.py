"""The Lab 03-1 checks grade: right answers pass, the known mistakes fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from llmfoundations import checks

IGNORE = -100


def good_sft_labels(prompt_ids, response_ids):
    input_ids = torch.tensor(prompt_ids + response_ids, dtype=torch.long)
    labels = torch.tensor([IGNORE] * len(prompt_ids) + response_ids, dtype=torch.long)
    return input_ids, labels


def test_sft_labels_check_passes_a_correct_answer(capsys):
    checks.check_sft_example_labels(good_sft_labels)
    assert "✔ sft_labels: all 5 cases" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda p, r: (torch.tensor(p + r), torch.tensor(p + [IGNORE] * len(r))), "masked the response"),
        (lambda p, r: (torch.tensor(p + r), torch.tensor([IGNORE] * (len(p) - 1) + p[-1:] + r)),
         "one prompt token too few"),
        (lambda p, r: (torch.tensor(p + r), torch.tensor([IGNORE] * (len(p) + 1) + r[1:])),
         "one token too many"),
        (lambda p, r: (torch.tensor(p + r), torch.tensor([0] * len(p) + r)), "must be -100"),
        (lambda p, r: (torch.tensor(p + r), torch.tensor(r)), "as long as input_ids"),
        (lambda p, r: (torch.tensor(p + r, dtype=torch.int32), torch.tensor([IGNORE] * len(p) + r)),
         "int64"),
        (lambda p, r: torch.tensor(p + r), "pair"),
    ],
)
def test_sft_labels_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="sft_labels") as err:
        checks.check_sft_example_labels(wrong)
    assert hint in str(err.value)


def good_masked_sft_loss(logits, labels):
    logprobs = logits[:, :-1].float().log_softmax(-1)
    targets = labels[:, 1:]
    learned = targets != IGNORE
    picked = logprobs.gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1)
    return -(picked * learned).sum() / learned.sum().clamp_min(1)


def test_masked_sft_loss_check_passes_a_correct_answer(capsys):
    checks.check_masked_sft_loss(good_masked_sft_loss)
    assert "✔ masked_sft_loss: all 5 cases" in capsys.readouterr().out


def _parts(logits, labels, shift=True):
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    learned = labels != IGNORE
    picked = logits.float().log_softmax(-1).gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)
    return picked, learned


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda lo, la: (lambda p, m: -(p * m).sum() / m.sum().clamp_min(1))(*_parts(lo, la, False)),
         "logits[:, t] predicts"),
        (lambda lo, la: (lambda p, m: -(p * m).sum() / m.numel())(*_parts(lo, la)),
         "number of labelled positions"),
        (lambda lo, la: (lambda p, m: (-(p * m).sum(1) / m.sum(1).clamp_min(1)).mean())(*_parts(lo, la)),
         "not per sequence"),
        (lambda lo, la: (lambda p, m: -(p * m).sum())(*_parts(lo, la)), "not their sum"),
        (lambda lo, la: (lambda p, m: -(p * m).sum() / m.sum())(*_parts(lo, la)), "NaN"),
        (lambda lo, la: F.cross_entropy(lo[:, :-1].reshape(-1, lo.shape[-1]), la[:, 1:].reshape(-1)),
         "cross_entropy"),
        (lambda lo, la: good_masked_sft_loss(lo, la)[None], "scalar"),
    ],
)
def test_masked_sft_loss_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="masked_sft_loss") as err:
        checks.check_masked_sft_loss(wrong)
    assert hint in str(err.value)


def good_parse_answer(reply):
    if not reply.startswith("ANSWER: ") or "\n" in reply:
        return None
    answer = reply[len("ANSWER: "):]
    return answer if answer and not answer[0].isspace() else None


def test_answer_format_check_passes_a_correct_answer(capsys):
    checks.check_sft_answer_format(good_parse_answer)
    assert "✔ parse_answer: all 14 cases" in capsys.readouterr().out


def _regex(find, pattern, flags=0):
    def parse(reply):
        match = find(pattern, reply, flags)
        return match.group(1) if match else None

    return parse


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_regex(re.match, r"ANSWER: (\S[^\n]*)"), "match the full string"),
        (_regex(re.match, r"ANSWER: (\S[^\n]*)$"), "match the full string"),  # $ allows a final \n
        (_regex(re.search, r"ANSWER: (\S[^\n]*)\Z"), "text before it"),
        (_regex(re.fullmatch, r"ANSWER: ([^\n]*)"), "not be empty"),
        (_regex(re.fullmatch, r"ANSWER: (\S[^\n]*)", re.IGNORECASE), "in capitals"),
        (_regex(re.fullmatch, r"ANSWER: ?(\S[^\n]*)"), "a space follows the colon"),
        (lambda r: r if good_parse_answer(r) is not None else None, "not the whole reply"),
        (lambda r: good_parse_answer(r) is not None, "str or None"),
        (lambda r: good_parse_answer(r) or "", "parse_answer"),  # "" instead of None
    ],
)
def test_answer_format_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="parse_answer") as err:
        checks.check_sft_answer_format(wrong)
    assert hint in str(err.value)
