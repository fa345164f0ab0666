"""alignment.reward: the Bradley–Terry loss against its closed form, autograd and TRL's
RewardTrainer; last-token pooling against a loop, with right and left padding."""

from __future__ import annotations

import math
import types
from collections import defaultdict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.alignment.reward import (
    RewardModel,
    bradley_terry_loss,
    center_rewards_penalty,
    last_token_pool,
    pairwise_accuracy,
)
from llmfoundations.models import DecoderLM, ModelConfig

LN2 = math.log(2.0)


def _pair(b: int = 6, seed: int = 0, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, generator=g) * scale, torch.randn(b, generator=g) * scale


# ----------------------------------------------------------------------------- loss


def test_equal_rewards_give_ln2():
    r = torch.tensor([-3.0, 0.0, 5.0])
    torch.testing.assert_close(bradley_terry_loss(r, r.clone()), torch.tensor(LN2), atol=1e-7, rtol=0)


def test_loss_matches_closed_form_on_exact_cases():
    # gap 1: -log sigma(1) = log(1 + e^-1); gap -2: log(1 + e^2)
    got = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))
    want = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0))) / 2
    assert abs(got.item() - want) < 1e-6


def test_margin_shifts_the_gap():
    rc, rr = _pair()
    m = torch.rand(6, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(bradley_terry_loss(rc, rr, m), bradley_terry_loss(rc - m, rr), atol=1e-6, rtol=0)
    torch.testing.assert_close(bradley_terry_loss(rc, rr, 0.5), bradley_terry_loss(rc - 0.5, rr), atol=1e-6, rtol=0)
    # a gap equal to the margin costs ln 2, like a tie without one
    torch.testing.assert_close(bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0]), 2.0),
                               torch.tensor(LN2), atol=1e-7, rtol=0)


def test_loss_matches_float64_reference_on_random_rewards():
    rc, rr = _pair(b=32, seed=3, scale=5.0)
    want = torch.log1p(torch.exp(-(rc.double() - rr.double()))).mean()
    torch.testing.assert_close(bradley_terry_loss(rc, rr).double(), want, atol=1e-6, rtol=1e-6)


def test_loss_is_finite_for_huge_gaps():
    rc = torch.tensor([1000.0, -1000.0])
    rr = torch.zeros(2)
    loss = bradley_terry_loss(rc, rr)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, torch.tensor(500.0))  # (0 + 1000) / 2
    naive = -torch.log(torch.sigmoid(rc - rr)).mean()  # what logsigmoid avoids
    assert torch.isinf(naive)


def test_gradient_matches_closed_form():
    rc, rr = _pair(b=8, seed=4)
    m = torch.rand(8, generator=torch.Generator().manual_seed(5))
    rc.requires_grad_(True)
    rr.requires_grad_(True)
    bradley_terry_loss(rc, rr, m).backward()
    weight = torch.sigmoid(-(rc - rr - m)).detach() / 8  # d loss / d r_c = -sigma(-gap) / B
    torch.testing.assert_close(rc.grad, -weight, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rr.grad, weight, atol=1e-6, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=1, max_size=8), st.floats(-10, 10))
def test_loss_depends_only_on_gaps(rewards, shift):
    rc = torch.tensor(rewards, dtype=torch.float64)
    rr = rc.flip(0) * 0.5
    torch.testing.assert_close(bradley_terry_loss(rc + shift, rr + shift), bradley_terry_loss(rc, rr),
                               atol=1e-9, rtol=1e-9)
    assert bradley_terry_loss(rc, rr).item() >= 0.0


def test_center_penalty_and_accuracy():
    rc, rr = torch.tensor([1.0, 3.0, 0.0, 2.0]), torch.tensor([-1.0, -1.0, 0.0, 5.0])
    torch.testing.assert_close(center_rewards_penalty(rc, rr), torch.tensor((0 + 4 + 0 + 49) / 4))
    assert pairwise_accuracy(rc, rr) == 0.5  # the tie (0, 0) counts as wrong
    assert pairwise_accuracy(torch.zeros(3), torch.zeros(3)) == 0.0


@pytest.mark.parametrize(
    "rc, rr, margin, error, match",
    [
        (torch.zeros(3), torch.zeros(4), None, ValueError, "one row per pair"),
        (torch.zeros(0), torch.zeros(0), None, ValueError, "empty"),
        (torch.zeros(3, 1), torch.zeros(3, 1), None, ValueError, "r_chosen must have 1 dimensions"),
        (torch.zeros(3, dtype=torch.long), torch.zeros(3), None, TypeError, "r_chosen must be a floating"),
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), None, TypeError, "r_rejected must be a floating"),
        ([0.0, 1.0], torch.zeros(2), None, TypeError, "r_chosen must be a torch.Tensor"),
        (torch.zeros(3), torch.zeros(3), torch.zeros(4), ValueError, "margin must be a number or"),
        (torch.zeros(3), torch.zeros(3), torch.zeros(3, dtype=torch.long), TypeError, "margin must be a floating"),
        (torch.zeros(3), torch.zeros(3), "1", TypeError, "margin must be None"),
        (torch.zeros(3), torch.zeros(3), True, TypeError, "margin must be None"),
    ],
)
def test_bad_inputs_raise(rc, rr, margin, error, match):
    with pytest.raises(error, match=match):
        bradley_terry_loss(rc, rr, margin)


@pytest.mark.parametrize("fn", [pairwise_accuracy, center_rewards_penalty])
def test_bad_inputs_raise_in_the_other_functions(fn):
    with pytest.raises(ValueError, match="one row per pair"):
        fn(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        fn(torch.zeros(0), torch.zeros(0))


# ----------------------------------------------------------------------------- TRL


def _trl_compute_loss(rc, rr, margin=None, coefficient=None):
    """TRL's own ``RewardTrainer.compute_loss``, run on given rewards: the model is a stub
    whose "logits" are the rewards, in TRL's batch layout ``[chosen; rejected]``."""
    from trl.trainer.reward_trainer import RewardTrainer

    class Stub:
        training = True

        def __call__(self, **inputs):
            return types.SimpleNamespace(logits=torch.cat([rc, rr])[:, None])  # (2B, 1)

    trainer = types.SimpleNamespace(
        model=Stub(), args=types.SimpleNamespace(center_rewards_coefficient=coefficient),
        accelerator=types.SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x),
        _total_train_tokens=0, _tp_size=1, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    n = 2 * len(rc)
    inputs = {"input_ids": torch.zeros(n, 2, dtype=torch.long), "attention_mask": torch.ones(n, 2, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = margin
    loss = RewardTrainer.compute_loss(trainer, trainer.model, inputs)
    return loss, trainer._metrics["train"]


@pytest.mark.slow  # importing trl takes seconds
@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("coefficient", [None, 0.01])
def test_matches_trl_reward_trainer(with_margin, coefficient):
    pytest.importorskip("trl")
    rc, rr = _pair(b=16, seed=7)
    margin = torch.rand(16, generator=torch.Generator().manual_seed(8)) if with_margin else None
    trl_loss, metrics = _trl_compute_loss(rc, rr, margin, coefficient)
    ours = bradley_terry_loss(rc, rr, margin)
    if coefficient is not None:
        ours = ours + coefficient * center_rewards_penalty(rc, rr)
    torch.testing.assert_close(ours, trl_loss, atol=1e-6, rtol=1e-6)
    assert abs(metrics["accuracy"][0] - pairwise_accuracy(rc, rr)) < 1e-6


# ----------------------------------------------------------------------------- pooling


def test_last_token_pool_matches_a_loop_with_right_and_left_padding():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 6, 5, generator=g)  # (B, T, C)
    lengths = [6, 3, 1, 4]
    right = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    left = torch.tensor([[0] * (6 - n) + [1] * n for n in lengths])
    for mask in (right, left, right.bool()):
        want = torch.stack([hidden[i, max(j for j in range(6) if mask[i, j])] for i in range(4)])
        torch.testing.assert_close(last_token_pool(hidden, mask), want, atol=0, rtol=0)
    torch.testing.assert_close(last_token_pool(hidden), hidden[:, -1], atol=0, rtol=0)


@pytest.mark.parametrize(
    "hidden, mask, error, match",
    [
        (torch.zeros(2, 3), None, ValueError, "3 dimensions"),
        (torch.zeros(2, 3, 4, dtype=torch.long), None, TypeError, "floating"),
        (torch.zeros(0, 3, 4), None, ValueError, "B, T >= 1"),
        (torch.zeros(2, 3, 4), torch.ones(2, 4, dtype=torch.long), ValueError, "shape"),
        (torch.zeros(2, 3, 4), torch.ones(2, 3), TypeError, "0/1 integers"),
        (torch.zeros(2, 3, 4), torch.tensor([[1, 2, 0], [1, 1, 1]]), ValueError, "only 0"),
        (torch.zeros(2, 3, 4), torch.tensor([[1, 1, 0], [0, 0, 0]]), ValueError, "row 1 has no real token"),
    ],
)
def test_last_token_pool_bad_inputs(hidden, mask, error, match):
    with pytest.raises(error, match=match):
        last_token_pool(hidden, mask)


# ----------------------------------------------------------------------------- model


def _model(seed: int = 0) -> RewardModel:
    torch.manual_seed(seed)
    config = ModelConfig.llama(vocab_size=20, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    model = RewardModel(DecoderLM(config)).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)  # a trained head: rewards differ
    return model


def test_reward_model_starts_at_zero_and_ln2():
    torch.manual_seed(0)
    model = RewardModel(DecoderLM(ModelConfig.llama(vocab_size=20, d_model=32, n_layers=1, n_heads=2)))
    ids = torch.randint(1, 20, (4, 5))
    rewards = model(ids)
    assert rewards.shape == (4,)
    assert torch.equal(rewards, torch.zeros(4))
    loss = bradley_terry_loss(rewards[:2], rewards[2:])
    torch.testing.assert_close(loss, torch.tensor(LN2), atol=1e-7, rtol=0)
    loss.backward()  # the zero head still gets a gradient: -sigma(0) (h_c - h_r) / B
    assert model.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_gives_each_sequence_its_own_reward(side):
    model = _model()
    seqs = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12], [13]]
    alone = torch.cat([model(torch.tensor([s])) for s in seqs])  # (B,), no padding
    width = max(map(len, seqs))
    pad = [[0] * (width - len(s)) for s in seqs]
    if side == "right":
        ids = torch.tensor([s + p for s, p in zip(seqs, pad, strict=True)])
        mask = torch.tensor([[1] * len(s) + [0] * len(p) for s, p in zip(seqs, pad, strict=True)])
    else:
        ids = torch.tensor([p + s for s, p in zip(seqs, pad, strict=True)])
        mask = torch.tensor([[0] * len(p) + [1] * len(s) for s, p in zip(seqs, pad, strict=True)])
    torch.testing.assert_close(model(ids, mask), alone, atol=1e-5, rtol=1e-5)


def test_reward_is_the_head_on_the_last_real_hidden_state():
    model = _model(1)
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    hidden = model.backbone(ids, attention_mask=mask).hidden_states  # (B, T, C)
    want = torch.stack([hidden[0, 2] @ model.head.weight[0], hidden[1, 3] @ model.head.weight[0]])
    torch.testing.assert_close(model(ids, mask), want, atol=1e-6, rtol=1e-6)
    # the padding token's own hidden state is not what is read: changing it changes nothing
    ids2 = ids.clone()
    ids2[0, 3] = 9
    torch.testing.assert_close(model(ids2, mask), model(ids, mask), atol=0, rtol=0)


def test_forward_writes_no_state():
    model = _model()
    before = set(vars(model))
    model(torch.tensor([[1, 2, 3]]))
    assert set(vars(model)) == before


def test_reward_model_bad_inputs():
    with pytest.raises(TypeError, match="backbone must be a DecoderLM"):
        RewardModel(torch.nn.Linear(2, 2))
    model = _model()
    with pytest.raises(ValueError, match="input_ids must have 2 dimensions"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="row 0 has no real token"):
        model(torch.tensor([[1, 2]]), torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(torch.tensor([[1, 2]]), torch.tensor([[1, 1, 1]]))


def test_docstring_examples_run():
    import doctest

    from llmfoundations.alignment import reward

    assert doctest.testmod(reward).failed == 0
