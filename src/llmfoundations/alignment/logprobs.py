"""The log-probability a model gives a response, per token and per sequence.

Every preference method of this chapter compares how likely a policy finds a response
``y`` after its prompt ``x``: DPO compares ``log pi(y | x)`` with a frozen reference's,
PPO and GRPO weight the per-token ratios ``pi / pi_old``, and the KL leash is a
difference of the same numbers. With ``R`` the positions whose next token belongs to
the response::

    log pi(y | x) = sum_{t in R} log p(x_{t+1} | x_1 .. x_t)

Labels follow the SFT convention of :mod:`llmfoundations.finetuning.sft`: ``labels``
(B, T) sit under the tokens they name, ``-100`` (``IGNORE_INDEX``) on the prompt and the
padding, and the shift by one happens here (``logits[:, t]`` scores ``labels[:, t + 1]``).

- ``token_logprobs(logits, labels)`` -> ``(logp, mask)``, both (B, T-1): the
  log-probability of each next label (0 where nothing is scored) and which positions
  are scored;
- ``sequence_logprobs(logits, labels, mask=None, reduce="sum")`` -> (B,): their sum, as
  in the DPO paper and TRL's trainers, or their mean (``"mean"``, the length-normalised
  score of SimPO and of ``loss_type="ipo"`` in TRL, which averages over the response).

A sum favours short answers (every extra token adds a negative number); a mean does
not. A row with no scored token gives 0 under both reductions, never NaN.

Left out: computing the logits (call the model: ``model(input_ids).logits``), chunking
over the vocabulary to save memory, and entropy or per-token KL (see ``ppo``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from llmfoundations._validate import check_choice, check_logits_labels, check_tensor
from llmfoundations.models import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "Reduce", "token_logprobs", "sequence_logprobs"]

Reduce = Literal["sum", "mean"]


def _token_logprobs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Unchecked core of :func:`token_logprobs` (no argument checks, no device sync)."""
    targets = labels[:, 1:]  # (B, T-1): the token after each position
    mask = targets != IGNORE_INDEX  # (B, T-1)
    logp = logits[:, :-1].float().log_softmax(dim=-1)  # (B, T-1, V)
    picked = logp.gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1)  # (B, T-1)
    return torch.where(mask, picked, 0.0), mask


def token_logprobs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probability of each next label, and the mask of scored positions.

    ``logits`` (B, T, V) from the model on the input ids; ``labels`` (B, T) aligned with
    them, ``-100`` where nothing is scored. Returns ``(logp, mask)``, both (B, T-1):
    ``logp[:, t] = log softmax(logits[:, t])[labels[:, t + 1]]`` in float32 (0 where
    ``mask`` is False). Checks the labels' values (one device sync); ``_token_logprobs``
    is the unchecked core.

    >>> logp, mask = token_logprobs(torch.zeros(1, 3, 4), torch.tensor([[-100, -100, 2]]))
    >>> logp, mask  # uniform over 4 tokens: ln(1/4) on the one scored position
    (tensor([[ 0.0000, -1.3863]]), tensor([[False,  True]]))
    """
    check_logits_labels(logits, labels, IGNORE_INDEX)
    return _token_logprobs(logits, labels)


def sequence_logprobs(
    logits: Tensor, labels: Tensor, mask: Tensor | None = None, reduce: Reduce = "sum"
) -> Tensor:
    """``log pi(response | prompt)`` for each row: (B,) float32.

    ``mask`` (B, T), optional, aligned with ``labels``: positions to score on top of
    ``labels != -100`` (e.g. to leave out tokens after a stop token). ``reduce="sum"``
    is the sequence log-probability; ``"mean"`` divides by the number of scored tokens
    (0 for a row with none).

    >>> labels = torch.tensor([[-100, 1, 2], [-100, -100, 3]])
    >>> sequence_logprobs(torch.zeros(2, 3, 4), labels)  # 2 and 1 tokens of ln(1/4)
    tensor([-2.7726, -1.3863])
    >>> sequence_logprobs(torch.zeros(2, 3, 4), labels, reduce="mean")
    tensor([-1.3863, -1.3863])
    """
    check_logits_labels(logits, labels, IGNORE_INDEX)
    check_choice("reduce", reduce, ("sum", "mean"))
    logp, scored = _token_logprobs(logits, labels)
    if mask is not None:
        check_tensor("mask", mask, ndim=2)
        if tuple(mask.shape) != tuple(labels.shape):
            raise ValueError(
                f"mask must have the labels' shape {tuple(labels.shape)}, got {tuple(mask.shape)}"
            )
        if mask.device != labels.device:
            raise ValueError(f"mask is on {mask.device}, labels on {labels.device}")
        scored = scored & mask[:, 1:].bool()
        logp = torch.where(scored, logp, 0.0)
    total = logp.sum(dim=-1)  # (B,)
    if reduce == "sum":
        return total
    return total / scored.sum(dim=-1).clamp_min(1)
