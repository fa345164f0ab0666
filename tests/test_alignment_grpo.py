"""Tests of alignment/grpo.py: group advantages, token weights and the GRPO loss.

Oracles: closed forms on small exact cases, and TRL 1.16's ``GRPOTrainer``. For the
advantages, the snippet of ``_generate_and_score_completions`` is reproduced line for
line with TRL's own ``nanstd`` (that method samples and scores, so it cannot be called
alone). For the loss, ``GRPOTrainer._compute_loss`` itself is called with a stub ``self``
whose ``_get_per_token_logps_and_entropies`` returns our fixed tensors.
"""

from __future__ import annotations

import types
from collections import defaultdict

import pytest
import torch

from llmfoundations.alignment.grpo import (
    STD_EPS,
    group_advantages,
    grpo_loss,
    token_weights,
    zero_std_fraction,
)


def _rewards(seed: int, n: int = 12, binary: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if binary:
        return torch.randint(0, 2, (n,), generator=g).float()
    return torch.randn(n, generator=g)


def _batch(seed: int = 0, n: int = 6, t: int = 5):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, t, generator=g) * 3
    old = logp + 0.3 * torch.randn(n, t, generator=g)
    ref = logp + 0.3 * torch.randn(n, t, generator=g)
    adv = torch.randn(n, generator=g)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = torch.arange(t)[None] < lengths[:, None]
    return logp, old, ref, adv, mask


# ---------------------------------------------------------------------- advantages


def test_group_advantages_closed_form():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    # mean 1/4, Bessel std sqrt(((3/4)^2 + 3 (1/4)^2) / 3) = 1/2
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + STD_EPS)
    torch.testing.assert_close(group_advantages(r, 4), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        group_advantages(r, 4, scale="none"), torch.tensor([0.75, -0.25, -0.25, -0.25])
    )


def test_batch_scale_uses_group_means_and_one_std():
    r = torch.tensor([1.0, 0.0, 3.0, 1.0])
    std = r.std(correction=1)
    expected = torch.tensor([0.5, -0.5, 1.0, -1.0]) / (std + STD_EPS)
    torch.testing.assert_close(group_advantages(r, 2, scale="batch"), expected)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_zero_variance_groups_get_exactly_zero(scale):
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    adv = group_advantages(r, 3, scale=scale)
    assert torch.equal(adv[:3], torch.zeros(3)) and torch.equal(adv[6:], torch.zeros(3))
    assert adv[3:6].abs().sum() > 0
    assert zero_std_fraction(r, 3) == pytest.approx(2 / 3)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_advantages_match_trl_snippet(scale, seed):
    utils = pytest.importorskip("trl.trainer.utils")
    num_generations = 4
    rewards = _rewards(seed, 12, binary=seed == 2)
    # trl/trainer/grpo_trainer.py, _generate_and_score_completions ("sum_then_normalize")
    mean_grouped = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped = mean_grouped.repeat_interleave(num_generations, dim=0)
    if scale in ["group", "none"]:
        std_rewards = utils.nanstd(rewards.view(-1, num_generations), dim=1)
        std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    else:
        std_rewards = utils.nanstd(rewards).expand_as(rewards)
    advantages = rewards - mean_grouped
    if scale != "none":
        advantages = advantages / (std_rewards + 1e-4)
    ours = group_advantages(rewards, num_generations, scale=scale)
    torch.testing.assert_close(ours, advantages, rtol=1e-6, atol=1e-6)


def test_group_advantages_bad_inputs():
    r = torch.zeros(6)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(r, 4)  # 6 is not a multiple of 4
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(r, 1)  # a group of one has no baseline
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(r, 0)
    with pytest.raises(ValueError, match="rewards"):
        group_advantages(torch.zeros(0), 2)  # no groups at all
    with pytest.raises(ValueError, match="rewards"):
        group_advantages(torch.zeros(2, 3), 3)
    with pytest.raises(TypeError, match="rewards"):
        group_advantages(torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(torch.tensor([1.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(r, 3, scale="std")
    with pytest.raises(TypeError, match="group_size"):
        group_advantages(r, 3.0)


# -------------------------------------------------------------------- token weights


def test_token_weights_closed_forms():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    w = {a: token_weights(mask, a) for a in ("grpo", "bnpo", "dr_grpo", "dapo")}
    torch.testing.assert_close(w["grpo"][0, :2], torch.full((2,), 1 / 4))  # 1 / (B * 2)
    torch.testing.assert_close(w["grpo"][1], torch.full((4,), 1 / 8))  # 1 / (B * 4)
    torch.testing.assert_close(w["bnpo"][mask.bool()], torch.full((6,), 1 / 6))
    torch.testing.assert_close(w["dr_grpo"][mask.bool()], torch.full((6,), 1 / 8))  # B * T
    torch.testing.assert_close(w["dapo"], w["bnpo"])
    wl = token_weights(mask, "dr_grpo", max_completion_length=10)
    torch.testing.assert_close(wl[mask.bool()], torch.full((6,), 1 / 20))
    wd = token_weights(mask, "dapo", num_items_in_batch=12)
    torch.testing.assert_close(wd[mask.bool()], torch.full((6,), 1 / 12))
    for a in w:
        assert torch.equal(w[a][~mask.bool()], torch.zeros(2))
    # "grpo" gives each completion the same total weight; the others weigh by length
    torch.testing.assert_close(w["grpo"].sum(1), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(w["bnpo"].sum(1), torch.tensor([2 / 6, 4 / 6]))


def test_token_weights_bad_inputs():
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="aggregation"):
        token_weights(mask, "mean")
    with pytest.raises(ValueError, match="max_completion_length"):
        token_weights(mask, "dr_grpo", max_completion_length=2)
    with pytest.raises(ValueError, match="num_items_in_batch"):
        token_weights(mask, "dapo", num_items_in_batch=5)
    with pytest.raises(ValueError, match="mask"):
        token_weights(torch.full((2, 3), 2), "grpo")


# ------------------------------------------------------------------------- the loss


def test_loss_closed_form_at_ratio_one():
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]])).requires_grad_()
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    out = grpo_loss(logp, None, adv, mask)
    # ratio 1: per-token loss -A; grpo: row means (-2, +1), then their mean
    torch.testing.assert_close(out.loss, torch.tensor(-0.5))
    out.loss.backward()
    # gradient of -A * rho / (B |o_i|) at rho = 1 with respect to logp
    expected = torch.tensor([[-2 / 4, -2 / 4], [1 / 2, 0.0]])
    torch.testing.assert_close(logp.grad, expected)
    assert out.clip_fraction == 0 and out.mean_kl == 0


def test_clipping_closed_form():
    # ratios 1.5, 0.5, 1.5, 0.5 against advantages +1, +1, -1, -1, eps 0.2
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]])).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    out = grpo_loss(logp, old, adv, torch.ones(1, 4), aggregation="bnpo")
    # -min(rho A, clip(rho) A): -1.2, -0.5, +1.5, +0.8
    torch.testing.assert_close(out.loss, torch.tensor((-1.2 - 0.5 + 1.5 + 0.8) / 4))
    out.loss.backward()
    # clipped tokens (1st, 4th) get no gradient; the others get -A rho / 4
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.5 / 4, 1.5 / 4, 0.0]]))
    torch.testing.assert_close(out.clip_fraction, torch.tensor(0.5))
    # clip-higher: eps_high = 0.6 lets the first token's ratio 1.5 through
    out_high = grpo_loss(logp, old, adv, torch.ones(1, 4), eps_high=0.6, aggregation="bnpo")
    torch.testing.assert_close(out_high.loss, torch.tensor((-1.5 - 0.5 + 1.5 + 0.8) / 4))


def test_k3_kl_term():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-2.0, -2.0]])
    out = grpo_loss(logp, None, torch.zeros(1), torch.ones(1, 2), beta=0.5, ref_logp=ref)
    kl0 = torch.exp(torch.tensor(-1.0)) + 1 - 1  # e^{ref-logp} - (ref-logp) - 1
    torch.testing.assert_close(out.mean_kl, kl0 / 2)
    torch.testing.assert_close(out.loss, 0.5 * kl0 / 2)


@pytest.mark.parametrize("aggregation", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_zero_variance_batch_gives_zero_loss(aggregation):
    logp, old, _, _, mask = _batch(seed=3)
    adv = group_advantages(torch.ones(6), 3)
    out = grpo_loss(logp.requires_grad_(), old, adv, mask, aggregation=aggregation)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))


class _Accelerator:
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def _trl_loss(logp, old, ref, adv, mask, *, loss_type, beta, eps_low, eps_high, max_len):
    grpo_trainer = pytest.importorskip("trl.trainer.grpo_trainer")
    n, t = logp.shape
    stub = types.SimpleNamespace(
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None),
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=max_len,
        accelerator=_Accelerator(),
        _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros(n, t), None),
    )
    inputs = {
        "prompt_ids": torch.zeros(n, 1, dtype=torch.long),
        "prompt_mask": torch.ones(n, 1, dtype=torch.long),
        "completion_ids": torch.zeros(n, t, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": adv,
        "old_per_token_logps": old,
        "num_items_in_batch": mask.sum(),
    }
    if beta:
        inputs["ref_per_token_logps"] = ref
    # steps_per_generation appears only in dapo's normaliser (with 1 accumulation step)
    stub.args.steps_per_generation = 1
    loss = grpo_trainer.GRPOTrainer._compute_loss(stub, None, inputs)
    return loss, stub._metrics["train"]


@pytest.mark.parametrize("aggregation", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize(("beta", "eps_high"), [(0.0, None), (0.04, 0.28)])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_matches_trl_compute_loss(aggregation, beta, eps_high, seed):
    logp, old, ref, adv, mask = _batch(seed=seed)
    trl_loss, metrics = _trl_loss(
        logp, old, ref, adv, mask, loss_type=aggregation, beta=beta, eps_low=0.2,
        eps_high=0.2 if eps_high is None else eps_high, max_len=8,
    )  # fmt: skip
    ours = grpo_loss(
        logp, old, adv, mask, eps_low=0.2, eps_high=eps_high, beta=beta,
        ref_logp=ref if beta else None, aggregation=aggregation, max_completion_length=8,
    )  # fmt: skip
    torch.testing.assert_close(ours.loss, trl_loss, rtol=1e-6, atol=1e-7)
    assert ours.clip_fraction.item() == pytest.approx(metrics["clip_ratio/region_mean"][-1])
    if beta:
        assert ours.mean_kl.item() == pytest.approx(metrics["kl"][-1], rel=1e-6)


def test_loss_gradient_matches_trl():
    logp, old, ref, adv, mask = _batch(seed=5)
    ours_logp = logp.clone().requires_grad_()
    trl_logp = logp.clone().requires_grad_()
    trl_loss, _ = _trl_loss(
        trl_logp, old, ref, adv, mask, loss_type="grpo", beta=0.1, eps_low=0.2, eps_high=0.2,
        max_len=5,
    )  # fmt: skip
    grpo_loss(ours_logp, old, adv, mask, beta=0.1, ref_logp=ref).loss.backward()
    trl_loss.backward()
    torch.testing.assert_close(ours_logp.grad, trl_logp.grad, rtol=1e-5, atol=1e-7)


def test_per_token_advantages_and_default_old():
    logp, _, _, adv, mask = _batch(seed=4)
    per_token = adv[:, None].expand_as(logp).contiguous()
    a = grpo_loss(logp, None, adv, mask)
    b = grpo_loss(logp, logp.detach(), per_token, mask)
    torch.testing.assert_close(a.loss, b.loss)


def test_loss_bad_inputs():
    logp, old, ref, adv, mask = _batch()
    with pytest.raises(ValueError, match="beta"):
        grpo_loss(logp, old, adv, mask, beta=-0.1, ref_logp=ref)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="eps_low"):
        grpo_loss(logp, old, adv, mask, eps_low=-0.2)
    with pytest.raises(ValueError, match="eps_high"):
        grpo_loss(logp, old, adv, mask, eps_high=-0.1)
    with pytest.raises(ValueError, match="old_logp"):
        grpo_loss(logp, old[:, :-1], adv, mask)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, old, adv[:-1], mask)
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(logp, old, adv, mask[:, :-1])
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, adv, mask, beta=0.1, ref_logp=ref[:-1])
    with pytest.raises(ValueError, match="aggregation"):
        grpo_loss(logp, old, adv, mask, aggregation="token_mean")
    with pytest.raises(ValueError, match="logp"):
        grpo_loss(torch.zeros(0, 3), None, torch.zeros(0), torch.zeros(0, 3))
    with pytest.raises(TypeError, match="logp"):
        grpo_loss(logp.tolist(), old, adv, mask)
