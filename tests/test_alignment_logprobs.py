"""Tests of alignment/logprobs.py: response log-probabilities per token and per sequence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmfoundations.alignment.logprobs import IGNORE_INDEX, sequence_logprobs, token_logprobs
from llmfoundations.finetuning.sft import sft_loss


def _batch(seed: int = 0, b: int = 3, t: int = 7, v: int = 11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :3] = IGNORE_INDEX  # the prompt
    labels[1, 5:] = IGNORE_INDEX  # padding of a shorter row
    return logits, labels


def test_token_logprobs_equal_cross_entropy_per_token():
    logits, labels = _batch()
    logp, mask = token_logprobs(logits, labels)
    ce = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(labels.shape[0], -1)
    torch.testing.assert_close(logp, -ce, rtol=0, atol=1e-6)
    assert torch.equal(mask, labels[:, 1:] != IGNORE_INDEX)


def test_sum_and_mean_against_a_loop_and_the_sft_loss():
    logits, labels = _batch(seed=1)
    total = sequence_logprobs(logits, labels)
    mean = sequence_logprobs(logits, labels, reduce="mean")
    for row in range(labels.shape[0]):
        logp = logits[row].log_softmax(-1)
        picked = [
            float(logp[t, labels[row, t + 1]])
            for t in range(labels.shape[1] - 1)
            if labels[row, t + 1] != IGNORE_INDEX
        ]
        assert total[row].item() == pytest.approx(sum(picked), abs=1e-5)
        assert mean[row].item() == pytest.approx(sum(picked) / len(picked), abs=1e-5)
    n = (labels[:, 1:] != IGNORE_INDEX).sum()
    torch.testing.assert_close(-total.sum() / n, sft_loss(logits, labels), rtol=0, atol=1e-6)


def test_mask_removes_positions_and_empty_rows_give_zero():
    logits, labels = _batch(seed=2)
    mask = torch.ones_like(labels, dtype=torch.bool)
    mask[0, 4:] = False
    masked = sequence_logprobs(logits, labels, mask=mask)
    trimmed = labels.clone()
    trimmed[0, 4:] = IGNORE_INDEX
    torch.testing.assert_close(masked, sequence_logprobs(logits, trimmed), rtol=0, atol=0)
    labels[2] = IGNORE_INDEX
    for reduce in ("sum", "mean"):
        out = sequence_logprobs(logits, labels, reduce=reduce)
        assert out[2].item() == 0.0 and torch.isfinite(out).all()


def test_gradient_flows_only_through_scored_positions():
    logits, labels = _batch(seed=3)
    logits.requires_grad_(True)
    sequence_logprobs(logits, labels).sum().backward()
    unscored = (labels[:, 1:] == IGNORE_INDEX)
    assert logits.grad[:, :-1][unscored].abs().max() == 0
    assert logits.grad[:, -1].abs().max() == 0  # the last position predicts nothing
    assert logits.grad[:, :-1][~unscored].abs().max() > 0


def test_bad_input_raises():
    logits, labels = _batch()
    with pytest.raises(ValueError, match="labels"):
        token_logprobs(logits, labels[:, :-1])
    with pytest.raises(TypeError, match="labels"):
        token_logprobs(logits, labels.float())
    with pytest.raises(ValueError, match=r"\[0, V=11\)"):
        token_logprobs(logits, labels.clamp_min(0) + 11)
    with pytest.raises(TypeError, match="logits"):
        token_logprobs(logits.long(), labels)
    with pytest.raises(ValueError, match="reduce"):
        sequence_logprobs(logits, labels, reduce="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mask"):
        sequence_logprobs(logits, labels, mask=torch.ones(3, 2, dtype=torch.bool))
