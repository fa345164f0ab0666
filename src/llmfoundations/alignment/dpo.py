"""Direct preference optimisation (DPO): learn from preference pairs without a reward model.

RLHF maximises a reward while a KL term keeps the policy near a frozen reference::

    max_pi  E_{x, y ~ pi} [ r(x, y) ]  -  beta * KL( pi(. | x) || pi_ref(. | x) )

Its optimum has a closed form, ``pi*(y | x) = pi_ref(y | x) exp(r(x, y) / beta) / Z(x)``.
Solved for the reward, ``r(x, y) = beta * log(pi*(y | x) / pi_ref(y | x)) + beta * log Z(x)``:
every policy *defines* a reward, its **implicit reward**. Put that reward into the
Bradley–Terry model of a preference ``y_w`` (chosen) over ``y_l`` (rejected) and the
intractable ``Z(x)`` cancels, because both answers share the prompt. What is left is a
logistic loss on the difference of two log-ratios (Rafailov et al., 2023,
https://arxiv.org/abs/2305.18290, Eq. 7)::

    h    = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))
    loss = -log sigmoid(beta * h)                                       ("sigmoid", DPO)

Two variants change only the function of ``h``:

    loss = (h - 1 / (2 * beta)) ** 2        ("ipo", Azar et al., 2023, Eq. 17; beta is their tau)
    loss = max(0, 1 - beta * h)             ("hinge", the SLiC loss, Zhao et al., 2023)

IPO regresses ``h`` to a finite target instead of pushing it to infinity: with
deterministic preferences (one answer always wins) the DPO loss keeps falling as ``h``
grows, so nothing stops the policy from drifting away from the reference; IPO's square
stops at ``h = 1 / (2 beta)``.

This module holds:

- ``dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1,
  loss_type="sigmoid")`` -> ``DPOOutput``: the mean loss, the per-pair losses, the
  implicit rewards ``beta * (log pi - log pi_ref)`` of both answers, their margins and the
  reward accuracy. Inputs are sequence log-probabilities (B,), as
  :func:`llmfoundations.alignment.logprobs.sequence_logprobs` returns them;
- ``collate_pairs(prompts, chosen, rejected, pad_id)`` -> ``DPOBatch``: chosen and
  rejected answers stacked into one right-padded batch of 2B rows (chosen first, prompts
  labelled ``-100`` as in SFT), so that one forward pass scores both;
- ``pair_logprobs(logits, labels, reduce="sum")`` -> ``(chosen, rejected)``, each (B,):
  the sequence log-probabilities of such a batch, split back into its two halves.

Conventions, the same as TRL's ``DPOTrainer`` (tested against its code): log-probs are
**sums** over the response tokens (``reduce="sum"``); the loss is the mean over pairs;
the rewards are ``beta * log-ratio``, detached (they are reported, not optimised); the
margin is chosen reward minus rejected reward; the reward accuracy is the share of pairs
whose chosen reward is *strictly* larger, so it is 0 at the start, when policy = reference
and every reward is 0 (the sigmoid loss is then ln 2). For ``"ipo"`` TRL divides each
log-ratio by its response's length, i.e. it feeds IPO **per-token means**: pass
``sequence_logprobs(..., reduce="mean")`` (or ``pair_logprobs(..., reduce="mean")``) to get
TRL's IPO loss (its logged rewards still use sums). The gradient of the sigmoid loss with
respect to the policy is ``-beta * sigmoid(-beta * h) * (grad log pi(y_w) - grad log
pi(y_l))``: a pair the policy already ranks well (large ``h``) weighs little.

Left out: label smoothing / conservative DPO and TRL's other loss types (robust, exo_pair,
bco_pair, aot, apo, sppo, nca, discopop, sft mixtures), f-divergences other than the
reverse KL, reference-free losses (SimPO, ORPO), length-desensitised DPO (``ld_alpha``),
weighting (WPO), and online DPO (sampling new pairs from the policy as it trains).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from llmfoundations._validate import check_choice, check_int, check_positive, check_tensor
from llmfoundations.alignment.logprobs import Reduce, sequence_logprobs
from llmfoundations.models import IGNORE_INDEX

__all__ = ["LossType", "DPOOutput", "DPOBatch", "dpo_loss", "collate_pairs", "pair_logprobs"]

LossType = Literal["sigmoid", "ipo", "hinge"]


@dataclass(frozen=True)
class DPOOutput:
    """What :func:`dpo_loss` returns. ``loss`` is a scalar (the mean of ``losses``, which
    carries the gradient); the rest are detached, all (B,) but ``reward_accuracy``
    (a scalar): ``chosen_rewards`` and ``rejected_rewards`` are ``beta * (log pi - log
    pi_ref)``, ``margins`` their difference, ``reward_accuracy`` the share of pairs with
    ``chosen_rewards > rejected_rewards``."""

    loss: Tensor
    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    margins: Tensor
    reward_accuracy: Tensor


@dataclass(frozen=True)
class DPOBatch:
    """Chosen and rejected answers in one right-padded batch of ``2 * n_pairs`` rows:
    rows ``[0, B)`` hold prompt + chosen, rows ``[B, 2B)`` prompt + rejected, in the same
    pair order. ``input_ids``, ``labels`` (``-100`` on prompt and padding) and
    ``attention_mask`` (1 = real token) are (2B, T) int64."""

    input_ids: Tensor
    labels: Tensor
    attention_mask: Tensor

    @property
    def n_pairs(self) -> int:
        return self.input_ids.shape[0] // 2


# ------------------------------------------------------------------ the losses of h


def _sigmoid(h: Tensor, beta: float) -> Tensor:
    """DPO: the Bradley–Terry negative log-likelihood of the implicit reward margin."""
    return -F.logsigmoid(beta * h)  # (B,)


def _ipo(h: Tensor, beta: float) -> Tensor:
    """IPO: squared distance of the log-ratio difference to its target 1 / (2 beta)."""
    return (h - 1 / (2 * beta)) ** 2  # (B,)


def _hinge(h: Tensor, beta: float) -> Tensor:
    """SLiC's hinge: zero once the implicit reward margin ``beta * h`` reaches 1."""
    return torch.relu(1 - beta * h)  # (B,)


_LOSSES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "sigmoid": _sigmoid,
    "ipo": _ipo,
    "hinge": _hinge,
}


def _dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    loss_type: str,
) -> DPOOutput:
    """The unchecked core of :func:`dpo_loss` (no argument checks, no device sync)."""
    chosen_logratio = policy_chosen - ref_chosen  # (B,)
    rejected_logratio = policy_rejected - ref_rejected  # (B,)
    h = chosen_logratio - rejected_logratio  # (B,)
    losses = _LOSSES[loss_type](h, beta)  # (B,)
    chosen_rewards = beta * chosen_logratio.detach()  # (B,)
    rejected_rewards = beta * rejected_logratio.detach()  # (B,)
    return DPOOutput(
        loss=losses.mean(),
        losses=losses,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        margins=chosen_rewards - rejected_rewards,
        reward_accuracy=(chosen_rewards > rejected_rewards).float().mean(),
    )


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float = 0.1,
    loss_type: LossType = "sigmoid",
) -> DPOOutput:
    """The DPO loss (or IPO / hinge) of B preference pairs, with the implicit rewards.

    The four arguments are sequence log-probabilities (B,) of the chosen and rejected
    answers under the policy (with gradient) and under the frozen reference; one
    floating dtype and device, B >= 1 (an empty batch raises: its mean is undefined).
    ``beta`` > 0: the strength of the KL leash (TRL's default 0.1). ``loss_type``:
    ``"sigmoid"`` (DPO), ``"ipo"`` (pass per-token mean log-probs to match TRL) or
    ``"hinge"``. ``_dpo_loss`` is the unchecked core.

    >>> zero = torch.zeros(2)
    >>> dpo_loss(zero, zero, zero, zero).loss  # policy = reference: ln 2
    tensor(0.6931)
    >>> out = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
    ...                torch.tensor([-2.0]), beta=0.5)
    >>> out.chosen_rewards, out.rejected_rewards, out.margins, out.reward_accuracy
    (tensor([0.5000]), tensor([-0.5000]), tensor([1.]), tensor(1.))
    """
    named = {
        "policy_chosen": policy_chosen,
        "policy_rejected": policy_rejected,
        "ref_chosen": ref_chosen,
        "ref_rejected": ref_rejected,
    }
    for name, t in named.items():
        check_tensor(name, t, ndim=1, floating=True, nonempty=True)
    shapes = {name: tuple(t.shape) for name, t in named.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"the four log-probabilities must have one shape (B,), got {shapes}")
    if len({t.dtype for t in named.values()}) > 1:
        dtypes = {name: str(t.dtype) for name, t in named.items()}
        raise TypeError(f"the four log-probabilities must share one dtype, got {dtypes}")
    if len({t.device for t in named.values()}) > 1:
        devices = {name: str(t.device) for name, t in named.items()}
        raise ValueError(f"the four log-probabilities must be on one device, got {devices}")
    check_positive("beta", beta)
    check_choice("loss_type", loss_type, tuple(_LOSSES))
    return _dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, float(beta), loss_type)


# ------------------------------------------------------------- one batch, both answers


def _ids(name: str, ids: object, *, allow_empty: bool = False) -> list[int]:
    if isinstance(ids, Tensor):
        check_tensor(name, ids, ndim=1)
        if ids.is_floating_point():
            raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise TypeError(f"{name} must be a list of token ids, got {type(ids).__name__}")
    if not ids and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"{name} must hold token ids (ints >= 0), got {i!r}")
    return list(ids)


def collate_pairs(
    prompts: Sequence[Sequence[int]],
    chosen: Sequence[Sequence[int]],
    rejected: Sequence[Sequence[int]],
    pad_id: int,
) -> DPOBatch:
    """Stack B preference pairs into one batch of 2B rows: all chosen, then all rejected.

    Row ``i`` is ``prompts[i] + chosen[i]``, row ``B + i`` is ``prompts[i] + rejected[i]``;
    labels are ``-100`` under the prompt and the padding (the SFT convention), so
    :func:`pair_logprobs` scores the answers only. Right padding with ``pad_id``: fine for
    a causal model, whose real positions never see the padding after them.

    >>> batch = collate_pairs([[1, 2]], [[3]], [[4, 5]], pad_id=0)
    >>> batch.input_ids.tolist(), batch.labels.tolist()
    ([[1, 2, 3, 0], [1, 2, 4, 5]], [[-100, -100, 3, -100], [-100, -100, 4, 5]])
    """
    lists = {"prompts": prompts, "chosen": chosen, "rejected": rejected}
    for name, value in lists.items():
        if isinstance(value, (str, bytes, Tensor)) or not isinstance(value, Sequence):
            raise TypeError(f"{name} must be a list of token-id lists, got {type(value).__name__}")
    lengths = {name: len(value) for name, value in lists.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"prompts, chosen and rejected must have one length B, got {lengths}")
    if lengths["prompts"] == 0:
        raise ValueError("prompts must not be empty")
    check_int("pad_id", pad_id, minimum=0)
    rows: list[tuple[list[int], list[int]]] = []  # (prompt, answer), chosen rows first
    for side in ("chosen", "rejected"):
        for i, (prompt, answer) in enumerate(zip(prompts, lists[side], strict=True)):
            rows.append((_ids(f"prompts[{i}]", prompt), _ids(f"{side}[{i}]", answer)))
    t = max(len(p) + len(a) for p, a in rows)
    input_ids = torch.full((len(rows), t), pad_id, dtype=torch.long)  # (2B, T)
    labels = torch.full((len(rows), t), IGNORE_INDEX, dtype=torch.long)  # (2B, T)
    attention_mask = torch.zeros((len(rows), t), dtype=torch.long)  # (2B, T)
    for r, (prompt, answer) in enumerate(rows):
        n, k = len(prompt), len(prompt) + len(answer)
        input_ids[r, :k] = torch.tensor(prompt + answer)
        labels[r, n:k] = torch.tensor(answer)
        attention_mask[r, :k] = 1
    return DPOBatch(input_ids=input_ids, labels=labels, attention_mask=attention_mask)


def pair_logprobs(logits: Tensor, labels: Tensor, reduce: Reduce = "sum") -> tuple[Tensor, Tensor]:
    """Sequence log-probabilities of a :class:`DPOBatch`, split into ``(chosen, rejected)``.

    ``logits`` (2B, T, V) from one forward pass over ``batch.input_ids``; ``labels``
    (2B, T) is ``batch.labels``. Returns two (B,) float32 tensors: rows ``[0, B)`` and
    ``[B, 2B)`` of ``sequence_logprobs(logits, labels, reduce=reduce)``.
    """
    check_tensor("logits", logits, ndim=3, floating=True, nonempty=True)
    if logits.shape[0] % 2:
        raise ValueError(
            f"logits must hold 2B rows (chosen, then rejected), got {logits.shape[0]} rows"
        )
    chosen, rejected = sequence_logprobs(logits, labels, reduce=reduce).chunk(2)  # (B,) each
    return chosen, rejected
