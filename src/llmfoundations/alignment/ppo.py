"""The pieces of RLHF with proximal policy optimisation (PPO), as pure functions.

RLHF treats a response as a sequence of actions: at each response position ``t`` the
policy ``pi`` picks a token. A reward model scores the finished response once; a KL
penalty to a frozen reference model ``pi_ref`` (the SFT model) is paid at every token,
so the per-token reward is (Ouyang et al., 2022; TRL's ``PPOTrainer``)::

    r_t = -kl_coef * KL_t            + score * [t is the last response token]
    KL_t = estimate of log pi(y_t) - log pi_ref(y_t)

A value model ``V`` predicts the return from each position. Generalised advantage
estimation (GAE, Schulman et al., 2016) blends its one-step errors::

    delta_t = r_t + gamma * V_{t+1} - V_t          (V after the last token = 0)
    A_t     = delta_t + gamma * lam * A_{t+1}       returns_t = A_t + V_t

and PPO (Schulman et al., 2017) maximises the clipped surrogate, with the ratio
``rho_t = pi(y_t) / pi_old(y_t)`` to the policy that sampled the data::

    L_policy = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))
    L_value  = 0.5 * mean_t max((V_t - R_t)^2, (clip(V_t, V_old - c, V_old + c) - R_t)^2)

This module holds:

- ``kl_penalty(logp, ref_logp, kind)``: Schulman's per-token estimators of
  ``KL(pi || pi_ref)`` from samples of ``pi``, with ``log r = ref_logp - logp``:
  ``k1 = -log r`` (unbiased, can be negative), ``k2 = (log r)^2 / 2`` (biased, low
  variance), ``k3 = (r - 1) - log r`` (unbiased and never negative);
- ``rlhf_rewards(score, kl, mask, kl_coef)``: the per-token rewards above;
- ``gae(rewards, values, mask, gamma, lam)`` -> ``(advantages, returns)``, and
  ``_gae`` its unchecked loop;
- ``whiten(x, mask, shift_mean=True)``: ``(x - mean) / sqrt(var + 1e-8)`` over the masked
  entries (unbiased variance, as TRL's ``masked_whiten``);
- ``ppo_policy_loss`` and ``ppo_value_loss``: the two clipped losses, each returning a
  :class:`ClippedLoss` (the loss and the fraction of tokens where the clip was active).

Conventions: tensors are (B, T) over the *response* positions (the log-probabilities of
:func:`llmfoundations.alignment.logprobs.token_logprobs` restricted to the response);
``mask`` (B, T) is bool or 0/1 and marks real response tokens. ``gae`` and
``rlhf_rewards`` need right padding (each row's ones come first), which is what a
response padded after its stop token looks like. Every output is 0 where ``mask`` is 0.
Means are over masked tokens of the whole batch, as in TRL's ``masked_mean``.

Differences from TRL's ``PPOTrainer`` (``trl.experimental.ppo``), by design: the score
goes on the last response token here, where TRL indexes one position past its
``sequence_lengths`` when there is room; TRL also keeps one extra value position
(``padding_mask_p1``). Both are bookkeeping, not different mathematics.

Left out: the training loop (sampling, the value head, mini-batches and PPO epochs:
``rlhf.ppo_step``), adaptive KL control (Ziegler et al., 2019), reward whitening and the missing-EOS penalty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from llmfoundations._validate import check_choice, check_positive, check_probability, check_tensor

__all__ = [
    "KLKind",
    "ClippedLoss",
    "kl_penalty",
    "rlhf_rewards",
    "gae",
    "whiten",
    "ppo_policy_loss",
    "ppo_value_loss",
]

KLKind = Literal["k1", "k2", "k3"]
WHITEN_EPS = 1e-8  # TRL's masked_whiten adds this to the variance


@dataclass(frozen=True)
class ClippedLoss:
    """A clipped loss and how often its clip was active (both 0-dim tensors).

    ``clip_fraction`` is the share of masked tokens where the clipped term was the one
    used (the gradient through the ratio, or the value, is then zero). Detached.
    """

    loss: Tensor
    clip_fraction: Tensor


# ------------------------------------------------------------------------- checks


def _check_float(name: str, x: object) -> Tensor:
    return check_tensor(name, x, ndim=2, floating=True, nonempty=True)


def _check_like(name: str, x: object, like: Tensor, like_name: str) -> Tensor:
    check_tensor(name, x, floating=True)
    assert isinstance(x, Tensor)
    if x.shape != like.shape:
        raise ValueError(
            f"{name} must have the shape of {like_name} {tuple(like.shape)}, got {tuple(x.shape)}"
        )
    if x.device != like.device:
        raise ValueError(f"{name} is on {x.device}, {like_name} on {like.device}")
    return x


def _check_mask(mask: object, like: Tensor, *, right_padded: bool = False) -> Tensor:
    """Return ``mask`` as bool after checking its shape and values (one device sync)."""
    check_tensor("mask", mask, ndim=2)
    assert isinstance(mask, Tensor)
    if mask.shape != like.shape:
        raise ValueError(f"mask must have shape {tuple(like.shape)}, got {tuple(mask.shape)}")
    if mask.device != like.device:
        raise ValueError(f"mask is on {mask.device}, the values on {like.device}")
    if mask.dtype != torch.bool:
        if bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("mask must hold only 0 and 1 (or be a bool tensor)")
        mask = mask != 0
    if right_padded and mask.shape[1] > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("mask must be right-padded: in each row, ones first, then zeros")
    return mask


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the True entries of ``mask`` (0 when there are none)."""
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp_min(1)


# ---------------------------------------------------------------------- KL, rewards


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: KLKind = "k1") -> Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from tokens sampled from ``pi``.

    ``logp`` and ``ref_logp`` are the two models' log-probabilities of the same sampled
    tokens (any shape, the same for both). With ``log r = ref_logp - logp``:

    - ``"k1"``: ``-log r`` — unbiased, high variance, negative on some tokens
      (TRL's PPO default);
    - ``"k2"``: ``(log r)^2 / 2`` — biased, but close to the KL when the two are close;
    - ``"k3"``: ``(r - 1) - log r`` — unbiased and >= 0 (GRPO's, and TRL's ``"k3"``).

    Unbiased means: the mean over tokens ``y ~ pi`` equals ``KL(pi || pi_ref)``
    (Schulman, "Approximating KL divergence", 2020).

    >>> kl_penalty(torch.tensor([-1.0]), torch.tensor([-2.0]), "k3")  # e^-1 - 1 + 1
    tensor([0.3679])
    """
    check_tensor("logp", logp, floating=True)
    _check_like("ref_logp", ref_logp, logp, "logp")
    check_choice("kind", kind, ("k1", "k2", "k3"))
    log_r = ref_logp - logp
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    return torch.expm1(log_r) - log_r


def rlhf_rewards(score: Tensor, kl: Tensor, mask: Tensor, kl_coef: float = 0.05) -> Tensor:
    """Per-token RLHF rewards (B, T): ``-kl_coef * kl`` everywhere, plus ``score`` at the
    last response token of each row; 0 on padding.

    ``score`` (B,) from the reward model; ``kl`` (B, T) from :func:`kl_penalty`;
    ``mask`` (B, T) right-padded, at least one token per row. ``kl_coef`` >= 0 (TRL's
    default 0.05).

    >>> rlhf_rewards(torch.tensor([1.0]), torch.tensor([[0.5, 0.5, 9.0]]),
    ...              torch.tensor([[1, 1, 0]]), kl_coef=0.1)
    tensor([[-0.0500,  0.9500,  0.0000]])
    """
    kl = _check_float("kl", kl)
    check_tensor("score", score, ndim=1, floating=True)
    if score.shape[0] != kl.shape[0] or score.device != kl.device:
        raise ValueError(
            f"score must be (B,) = ({kl.shape[0]},) on {kl.device}, got {tuple(score.shape)} "
            f"on {score.device}"
        )
    mask = _check_mask(mask, kl, right_padded=True)
    check_positive("kl_coef", kl_coef, allow_zero=True)
    lengths = mask.sum(dim=1)  # (B,)
    if bool((lengths == 0).any()):
        raise ValueError("mask: every row needs at least one response token to hold its score")
    rewards = torch.where(mask, -kl_coef * kl, 0.0)  # (B, T)
    rows = torch.arange(kl.shape[0], device=kl.device)
    return rewards.index_put((rows, lengths - 1), score.to(rewards.dtype), accumulate=True)


# --------------------------------------------------------------------- GAE, whiten


def _gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Unchecked core of :func:`gae`: one backward pass over the T positions."""
    rewards = torch.where(mask, rewards, 0.0)
    values = torch.where(mask, values, 0.0)  # the value after a row's last token is 0
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    running = torch.zeros_like(values[:, 0])  # (B,) A_{t+1}
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
        next_value = values[:, t]
    advantages = torch.where(mask, advantages, 0.0)
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and returns, both (B, T), 0 on padding.

    ``rewards`` and ``values`` (B, T) over response positions; ``mask`` (B, T)
    right-padded, so a row's episode ends at its last True (the value after it is 0).
    ``gamma`` and ``lam`` in [0, 1] (TRL's PPO defaults 1.0 and 0.95). ``lam=1`` gives
    Monte-Carlo returns minus the values; ``lam=0`` the one-step errors ``delta_t``.

    >>> adv, ret = gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]]),
    ...                torch.ones(1, 2), gamma=1.0, lam=1.0)
    >>> adv, ret  # return-to-go is 1 at both positions
    (tensor([[0.5000, 0.5000]]), tensor([[1., 1.]]))
    """
    rewards = _check_float("rewards", rewards)
    _check_like("values", values, rewards, "rewards")
    mask = _check_mask(mask, rewards, right_padded=True)
    check_probability("gamma", gamma, low_open=False)
    check_probability("lam", lam, low_open=False)
    return _gae(rewards, values, mask, gamma, lam)


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise the masked entries of ``x`` to mean 0 and variance 1 (0 on padding).

    ``(x - mean) / sqrt(var + 1e-8)`` with the mean and the unbiased variance taken over
    all masked entries of the batch; ``shift_mean=False`` adds the mean back (scale
    only, as TRL does for rewards). Needs at least two masked entries.

    >>> whiten(torch.tensor([[1.0, 3.0, 7.0]]), torch.tensor([[1, 1, 0]]))
    tensor([[-0.7071,  0.7071,  0.0000]])
    """
    x = _check_float("x", x)
    mask = _check_mask(mask, x)
    if not isinstance(shift_mean, bool):
        raise TypeError(f"shift_mean must be a bool, got {type(shift_mean).__name__}")
    n = int(mask.sum())
    if n < 2:
        raise ValueError(f"mask: whiten needs at least 2 masked entries, got {n}")
    mean = _masked_mean(x, mask)
    var = torch.where(mask, (x - mean) ** 2, 0.0).sum() / (n - 1)  # unbiased, as TRL
    out = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out, 0.0)


# ------------------------------------------------------------------ clipped losses


def ppo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_range: float = 0.2
) -> ClippedLoss:
    """PPO's clipped surrogate, averaged over the masked tokens of the batch.

    ``logp`` (B, T) from the policy being trained (with gradients), ``old_logp`` (B, T)
    from the policy that sampled the tokens, ``advantages`` (B, T) (usually whitened);
    ``clip_range`` is PPO's epsilon (TRL's ``cliprange`` 0.2). The loss is
    ``mean max(-A rho, -A clip(rho, 1 - eps, 1 + eps))``.

    >>> out = ppo_policy_loss(torch.log(torch.tensor([[1.5, 1.0]])), torch.zeros(1, 2),
    ...                       torch.tensor([[1.0, -1.0]]), torch.ones(1, 2))
    >>> out.loss, out.clip_fraction  # -(1.2 * 1) and +1 -> mean -0.1; one token clipped
    (tensor(-0.1000), tensor(0.5000))
    """
    logp = _check_float("logp", logp)
    _check_like("old_logp", old_logp, logp, "logp")
    _check_like("advantages", advantages, logp, "logp")
    mask = _check_mask(mask, logp)
    check_positive("clip_range", clip_range, allow_zero=True)
    ratio = torch.exp(logp - old_logp)  # (B, T)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = _masked_mean(torch.maximum(unclipped, clipped), mask)
    frac = _masked_mean((clipped > unclipped).float(), mask).detach()
    return ClippedLoss(loss, frac)


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float = 0.2
) -> ClippedLoss:
    """The clipped value loss: ``0.5 * mean max((V - R)^2, (clip(V, V_old +- c) - R)^2)``.

    ``values`` (B, T) from the value model being trained, ``old_values`` (B, T) from when
    the data was collected, ``returns`` (B, T) from :func:`gae`; ``clip_range`` is TRL's
    ``cliprange_value`` (0.2). The clip keeps one update from moving a value far from
    its old estimate.

    >>> ppo_value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]]),
    ...                torch.ones(1, 1)).loss  # clipped to 0.2: 0.5 * 1.8^2
    tensor(1.6200)
    """
    values = _check_float("values", values)
    _check_like("old_values", old_values, values, "values")
    _check_like("returns", returns, values, "values")
    mask = _check_mask(mask, values)
    check_positive("clip_range", clip_range, allow_zero=True)
    clipped_values = torch.clamp(values, old_values - clip_range, old_values + clip_range)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * _masked_mean(torch.maximum(unclipped, clipped), mask)
    frac = _masked_mean((clipped > unclipped).float(), mask).detach()
    return ClippedLoss(loss, frac)
