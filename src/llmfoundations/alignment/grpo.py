"""Group-relative policy optimisation (GRPO): PPO without a value model.

GRPO (Shao et al., 2024, DeepSeekMath; used for DeepSeek-R1, 2025) samples a *group* of
``G`` answers ``o_1 .. o_G`` to each prompt, scores each with a reward ``r_i`` (often a
verifiable one: is the final answer right?), and uses the group itself as the baseline
that PPO would get from a learned value model::

    A_i = (r_i - mean(r_1 .. r_G)) / (std(r_1 .. r_G) + 1e-4)

Every token of answer ``i`` gets the same advantage ``A_i``. The per-token objective is
PPO's clipped one, with ``rho = pi(token) / pi_old(token)``, plus an optional k3 KL
penalty to a frozen reference (see :func:`llmfoundations.alignment.ppo.kl_penalty`)::

    l_{i,t} = -min(rho A_i, clip(rho, 1 - eps_low, 1 + eps_high) A_i) + beta * KL_k3

The variants differ in how the token losses are *aggregated* into one number, which is
also how much each token weighs (``|o_i|`` = tokens of answer i, ``B`` answers):

- ``"grpo"`` (the paper): mean over each answer's tokens, then over answers:
  a token weighs ``1 / (B |o_i|)``, so tokens of long answers weigh less;
- ``"bnpo"``: sum over all tokens / number of tokens in the batch;
- ``"dr_grpo"`` (Liu et al., 2025, "Dr. GRPO"): sum / (B * max_completion_length),
  a constant, so every token weighs the same whatever its answer's length;
- ``"dapo"`` (Yu et al., 2025; TRL's default): sum / tokens in the whole generation
  batch (``num_items_in_batch``), equal to ``"bnpo"`` when the batch is not split.

Dr. GRPO also drops the std division (``scale="none"``): dividing by a small std
up-weights prompts that are nearly always or never solved.

This module holds ``group_advantages``, ``token_weights`` (each aggregation's weights,
the whole difference between the variants), ``grpo_loss`` -> :class:`GRPOLossOutput`,
and ``zero_std_fraction`` (how many groups carry no signal). Each matches TRL 1.16's
``GRPOTrainer`` (``_generate_and_score_completions`` and ``_compute_loss``), tested.

Conventions: rewards are (N,) with the G answers of one prompt consecutive (N = groups
* G, TRL's layout); per-token tensors are (N, T) over completion positions with
``mask`` (N, T) marking real completion tokens. A group whose rewards are all equal
gets advantage exactly 0, hence zero policy loss: it teaches nothing.

Left out: sampling and rewards (the lab does them), multiple reward functions and NaN
(unscorable) rewards, sequence-level ratios (GSPO), two-sided clipping (``delta``),
entropy masks and bonuses, and the cispo / sapo / luspo / vespo losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from llmfoundations._validate import check_choice, check_int, check_positive, check_tensor
from llmfoundations.alignment.ppo import kl_penalty

__all__ = [
    "Scale",
    "Aggregation",
    "STD_EPS",
    "GRPOLossOutput",
    "group_advantages",
    "zero_std_fraction",
    "token_weights",
    "grpo_loss",
]

Scale = Literal["group", "batch", "none"]
Aggregation = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
STD_EPS = 1e-4  # added to the std before dividing, as in TRL


@dataclass(frozen=True)
class GRPOLossOutput:
    """What :func:`grpo_loss` returns.

    Attributes:
        loss: the scalar to minimise (with gradients).
        clip_fraction: share of masked tokens whose ratio was clipped in the direction
            that stops the gradient (``rho < 1 - eps_low`` with ``A < 0``, or
            ``rho > 1 + eps_high`` with ``A > 0``; TRL's ``clip_ratio/region_mean``).
        mean_kl: masked mean of the k3 KL to the reference (0 without ``ref_logp``).
    """

    loss: Tensor
    clip_fraction: Tensor
    mean_kl: Tensor


# ---------------------------------------------------------------------- advantages


def _check_rewards(rewards: object, group_size: object) -> Tensor:
    check_tensor("rewards", rewards, ndim=1, floating=True, nonempty=True)
    check_int("group_size", group_size, minimum=2)
    assert isinstance(rewards, Tensor) and isinstance(group_size, int)
    if rewards.shape[0] % group_size != 0:
        raise ValueError(
            f"rewards has {rewards.shape[0]} entries, not a whole number of groups of "
            f"group_size={group_size}"
        )
    if bool(torch.isnan(rewards).any()):
        raise ValueError("rewards must not contain NaN")
    return rewards


def _bessel_std(x: Tensor, dim: int | None = None) -> Tensor:
    """Standard deviation with Bessel's correction (divide by n - 1), as TRL's nanstd."""
    return x.std(dim=dim, correction=1) if dim is not None else x.std(correction=1)


def group_advantages(rewards: Tensor, group_size: int, scale: Scale = "group") -> Tensor:
    """Group-relative advantages (N,): reward minus its group's mean, scaled.

    ``rewards`` (N,), the ``group_size`` answers of each prompt consecutive;
    ``group_size`` >= 2 must divide N. ``scale``: ``"group"`` divides by the group's
    std + 1e-4 (the paper, TRL's default), ``"batch"`` by the std of all N rewards
    + 1e-4, ``"none"`` not at all (Dr. GRPO). Stds use Bessel's correction.

    >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), group_size=3)
    tensor([ 1.1545, -0.5773, -0.5773,  0.0000,  0.0000,  0.0000])
    """
    rewards = _check_rewards(rewards, group_size)
    check_choice("scale", scale, ("group", "batch", "none"))
    groups = rewards.view(-1, group_size)  # (N/G, G)
    centred = (groups - groups.mean(dim=1, keepdim=True)).reshape(-1)  # (N,)
    if scale == "none":
        return centred
    if scale == "group":
        std = _bessel_std(groups, dim=1).repeat_interleave(group_size)  # (N,)
    else:
        std = _bessel_std(rewards).expand_as(rewards)  # (N,)
    return centred / (std + STD_EPS)


def zero_std_fraction(rewards: Tensor, group_size: int) -> float:
    """Share of groups whose rewards are all equal (TRL's ``frac_reward_zero_std``).

    Those groups get zero advantage and add nothing to the gradient.

    >>> zero_std_fraction(torch.tensor([1.0, 1.0, 0.0, 1.0]), group_size=2)
    0.5
    """
    rewards = _check_rewards(rewards, group_size)
    groups = rewards.view(-1, group_size)  # (N/G, G)
    return float((groups == groups[:, :1]).all(dim=1).float().mean())


# ------------------------------------------------------------------------ the loss


def _check_mask(mask: object, like: Tensor) -> Tensor:
    check_tensor("mask", mask, ndim=2)
    assert isinstance(mask, Tensor)
    if mask.shape != like.shape:
        raise ValueError(f"mask must have the shape of logp {tuple(like.shape)}, got {tuple(mask.shape)}")
    if mask.device != like.device:
        raise ValueError(f"mask is on {mask.device}, logp on {like.device}")
    if mask.dtype != torch.bool:
        if bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("mask must hold only 0 and 1 (or be a bool tensor)")
        mask = mask != 0
    return mask


def _token_weights(
    mask: Tensor, aggregation: str, max_completion_length: int | None, num_items_in_batch: float | None
) -> Tensor:
    """Unchecked core of :func:`token_weights`."""
    m = mask.float()  # (N, T)
    if aggregation == "grpo":
        return m / (m.shape[0] * m.sum(dim=1, keepdim=True).clamp_min(1.0))
    if aggregation == "bnpo":
        return m / m.sum().clamp_min(1.0)
    if aggregation == "dr_grpo":
        length = m.shape[1] if max_completion_length is None else max_completion_length
        return m / (m.shape[0] * length)
    total = m.sum() if num_items_in_batch is None else m.new_tensor(float(num_items_in_batch))
    return m / total.clamp_min(1.0)


def token_weights(
    mask: Tensor,
    aggregation: Aggregation = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: float | None = None,
) -> Tensor:
    """How much each token's loss counts under each aggregation: (N, T), 0 on padding.

    The loss is ``sum(weights * per_token_loss)``. ``max_completion_length`` is the
    constant of ``"dr_grpo"`` (default: T, the padded width); ``num_items_in_batch`` the
    token count of ``"dapo"``'s whole generation batch (default: this batch's tokens).

    >>> token_weights(torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]]), "grpo")
    tensor([[0.5000, 0.0000, 0.0000, 0.0000],
            [0.1250, 0.1250, 0.1250, 0.1250]])
    >>> token_weights(torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]]), "dr_grpo")
    tensor([[0.1250, 0.0000, 0.0000, 0.0000],
            [0.1250, 0.1250, 0.1250, 0.1250]])
    """
    check_tensor("mask", mask, ndim=2, nonempty=True)
    mask = _check_mask(mask, mask)
    check_choice("aggregation", aggregation, ("grpo", "bnpo", "dr_grpo", "dapo"))
    if max_completion_length is not None:
        check_int("max_completion_length", max_completion_length, minimum=1)
        if bool((mask.sum(dim=1) > max_completion_length).any()):
            raise ValueError(
                f"max_completion_length={max_completion_length} is shorter than a completion "
                f"of {int(mask.sum(dim=1).max())} tokens"
            )
    if num_items_in_batch is not None:
        check_positive("num_items_in_batch", num_items_in_batch)
        if num_items_in_batch < float(mask.sum()):
            raise ValueError(
                f"num_items_in_batch={num_items_in_batch} is less than the {int(mask.sum())} "
                "tokens of this batch"
            )
    return _token_weights(mask, aggregation, max_completion_length, num_items_in_batch)


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    beta: float = 0.0,
    ref_logp: Tensor | None = None,
    aggregation: Aggregation = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: float | None = None,
) -> GRPOLossOutput:
    """The GRPO loss of a batch of sampled completions.

    Args:
        logp: (N, T) log-probabilities of the sampled tokens under the policy being
            trained (with gradients), e.g. from ``token_logprobs``.
        old_logp: (N, T) the same under the policy that sampled them; ``None`` means
            ``logp.detach()`` (one update per batch, TRL's ``num_iterations=1``: the ratio
            is 1 and the gradient is ``A * grad log pi``).
        advantages: (N,) from :func:`group_advantages`, or (N, T) per token.
        mask: (N, T) bool or 0/1, the real completion tokens.
        eps_low, eps_high: the clip range ``[1 - eps_low, 1 + eps_high]``, both >= 0;
            ``eps_high=None`` uses ``eps_low`` (DAPO's "clip-higher" sets it to 0.28).
        beta: weight >= 0 of the k3 KL to the reference (TRL's default 0: no reference).
        ref_logp: (N, T) reference log-probabilities; required when ``beta > 0``.
        aggregation: ``"grpo"``, ``"bnpo"``, ``"dr_grpo"`` or ``"dapo"`` (see the module
            docstring and :func:`token_weights`).
        max_completion_length, num_items_in_batch: the constants of ``"dr_grpo"`` and
            ``"dapo"`` (see :func:`token_weights`).

    >>> logp = torch.zeros(2, 3, requires_grad=True)
    >>> out = grpo_loss(logp, None, torch.tensor([1.0, -1.0]), torch.ones(2, 3))
    >>> out.loss  # +1 and -1 advantages cancel at ratio 1
    tensor(0., grad_fn=<SumBackward0>)
    """
    check_tensor("logp", logp, ndim=2, floating=True, nonempty=True)
    mask = _check_mask(mask, logp)
    if old_logp is None:
        old_logp = logp.detach()
    _check_same("old_logp", old_logp, logp)
    check_tensor("advantages", advantages, ndim=(1, 2), floating=True)
    if advantages.shape not in (logp.shape[:1], logp.shape) or advantages.device != logp.device:
        raise ValueError(
            f"advantages must be (N,) = ({logp.shape[0]},) or (N, T) = {tuple(logp.shape)} on "
            f"{logp.device}, got {tuple(advantages.shape)} on {advantages.device}"
        )
    check_positive("eps_low", eps_low, allow_zero=True)
    eps_high = eps_low if eps_high is None else eps_high
    check_positive("eps_high", eps_high, allow_zero=True)
    check_positive("beta", beta, allow_zero=True)
    if ref_logp is not None:
        _check_same("ref_logp", ref_logp, logp)
    elif beta > 0:
        raise ValueError(f"ref_logp is required when beta > 0 (got beta={beta})")
    weights = token_weights(mask, aggregation, max_completion_length, num_items_in_batch)

    adv = advantages if advantages.ndim == 2 else advantages[:, None]  # (N, 1) or (N, T)
    ratio = torch.exp(logp - old_logp)  # (N, T)
    clipped_ratio = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.minimum(ratio * adv, clipped_ratio * adv)  # (N, T)
    kl = kl_penalty(logp, ref_logp, "k3") if ref_logp is not None else torch.zeros_like(logp)
    if beta > 0:
        per_token = per_token + beta * kl
    loss = (torch.where(mask, per_token, 0.0) * weights).sum()

    with torch.no_grad():
        clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
        n = mask.sum().clamp_min(1)
        clip_fraction = (clipped & mask).sum() / n
        mean_kl = torch.where(mask, kl, 0.0).sum() / n
    return GRPOLossOutput(loss, clip_fraction, mean_kl)


def _check_same(name: str, x: object, logp: Tensor) -> None:
    check_tensor(name, x, floating=True)
    assert isinstance(x, Tensor)
    if x.shape != logp.shape or x.device != logp.device:
        raise ValueError(
            f"{name} must match logp {tuple(logp.shape)} on {logp.device}, got "
            f"{tuple(x.shape)} on {x.device}"
        )
