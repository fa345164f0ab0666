"""Knowledge distillation: a small student learns to match a large teacher's distributions.

A trained teacher gives, for every position, a whole distribution over the vocabulary,
not one correct token. Those "soft targets" say which wrong answers are nearly right, and
a student trained to match them learns more per example than from the hard labels alone
(Hinton, Vinyals and Dean, 2015, https://arxiv.org/abs/1503.02531). With student logits
``s``, teacher logits ``t``, a temperature ``T`` and hard labels ``y``::

    kd = alpha * T^2 * KL( softmax(t / T) || softmax(s / T) ) + (1 - alpha) * CE(s, y)

Raising ``T`` flattens both distributions so that the small probabilities matter. The
gradient of the KL term with respect to ``s`` is ``(softmax(s/T) - softmax(t/T)) / T``,
so the factor ``T^2`` keeps the soft term's gradient on the scale of the hard term's
whatever ``T`` is (Hinton et al., section 2).

Which divergence? ``KL(teacher || student)`` (*forward* KL) punishes the student for
missing any token the teacher likes: it spreads its mass (mean-seeking). ``KL(student ||
teacher)`` (*reverse* KL) punishes the student for putting mass where the teacher has
none: it picks a mode (mode-seeking), which suits a small student that cannot cover
everything (Gu et al., MiniLLM, 2023). The generalized Jensen-Shannon divergence of GKD
(Agarwal et al., 2024, https://arxiv.org/abs/2306.13649, eq. 1) moves between them with
``beta``; with the mixture ``m = beta * p_teacher + (1 - beta) * p_student``::

    JSD_beta = beta * KL(p_teacher || m) + (1 - beta) * KL(p_student || m)

and, by convention, ``beta = 0`` is the forward KL and ``beta = 1`` the reverse KL. The
endpoints are set, not reached: the mixed formula tends to 0 at both ends, where it is
about ``beta * KL(teacher || student)`` (and ``(1 - beta) * KL(student || teacher)``).

*On-policy* distillation (Agarwal et al.) scores the student's own samples: the student
generates, the teacher gives its distribution at every generated position, and the loss
is the divergence on those positions. The student is then corrected where its own
mistakes take it, not only on text the teacher or a dataset wrote (the train/test
mismatch of "exposure bias").

This module holds:

- ``kd_loss(student_logits, teacher_logits, temperature, alpha, labels=None)`` ->
  ``KDOutput(loss, soft_loss, hard_loss)``: Hinton's loss;
- ``generalized_jsd(student_logits, teacher_logits, beta, temperature, labels=None,
  reduction="batchmean")``: GKD's divergence, equal to TRL's
  ``GKDTrainer.generalized_jsd_loss`` (``trl/experimental/gkd``; tested);
- ``on_policy_distillation_loss(student, teacher, input_ids, max_new_tokens, ...)`` ->
  ``OnPolicyOutput``: the student samples with :func:`llmfoundations.generate.generate`,
  both models score the samples, the loss is ``generalized_jsd`` on the generated tokens.

Conventions. Logits are ``(N, V)`` or ``(B, T, V)`` and ``labels`` (if given) have the
logits' shape without ``V``, **already aligned**: ``labels[..., i]`` is the target of
``logits[..., i, :]``, as for ``F.cross_entropy`` and TRL (``DecoderLM(labels=...)`` and
``finetuning.sft`` shift inside instead; slice ``logits[:, :-1]`` and ``labels[:, 1:]``
first). A position is *scored* when its label is not ``-100`` (every position without
labels). Computation is in at least float32. A teacher probability of exactly 0 (a
``-inf`` logit) contributes 0, where ``F.kl_div`` gives NaN.

Left out: a T² factor in ``generalized_jsd`` (TRL has none; multiply if you want one),
TRL's ``num_items_in_batch`` (gradient accumulation belongs to the training loop),
mixing on-policy and off-policy batches (GKD's ``lmbda``; call either loss per batch),
MiniLLM's policy-gradient reverse KL, sequence-level KD (training on the teacher's
generated text with plain cross-entropy), intermediate-layer or attention matching
(DistilBERT, TinyBERT), and students whose vocabulary differs from the teacher's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from llmfoundations._validate import (
    check_choice,
    check_int,
    check_positive,
    check_probability,
    check_tensor,
)
from llmfoundations.generate import generate
from llmfoundations.models import IGNORE_INDEX
from llmfoundations.sampling import SamplingConfig

__all__ = [
    "IGNORE_INDEX",
    "Reduction",
    "KDOutput",
    "kd_loss",
    "generalized_jsd",
    "OnPolicyOutput",
    "on_policy_distillation_loss",
]

Reduction = Literal["batchmean", "sum", "mean", "none"]
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


@dataclass(frozen=True)
class KDOutput:
    """What :func:`kd_loss` returns (scalars):

    - ``loss``: ``alpha * T^2 * soft_loss + (1 - alpha) * hard_loss``, to backpropagate;
    - ``soft_loss``: ``KL(softmax(t/T) || softmax(s/T))`` averaged over the scored
      positions, without the ``T^2``;
    - ``hard_loss``: cross-entropy of the student at ``T = 1`` against the labels,
      averaged over the same positions; ``None`` without labels.
    """

    loss: Tensor
    soft_loss: Tensor
    hard_loss: Tensor | None


# ----------------------------------------------------------------------------- checks


def _check_logits_pair(student_logits: object, teacher_logits: object) -> None:
    check_tensor("student_logits", student_logits, min_ndim=2, floating=True, nonempty=True)
    check_tensor("teacher_logits", teacher_logits, min_ndim=2, floating=True, nonempty=True)
    assert isinstance(student_logits, Tensor) and isinstance(teacher_logits, Tensor)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student_logits and teacher_logits must have the same shape (..., V) (one "
            f"vocabulary), got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if student_logits.device != teacher_logits.device:
        raise ValueError(
            f"student_logits are on {student_logits.device}, teacher_logits on "
            f"{teacher_logits.device}"
        )


def _check_labels(labels: object, logits: Tensor) -> None:
    """Labels: integer, the logits' shape without V, ``-100`` or a token id (one sync)."""
    check_tensor("labels", labels, dtype=_INT_DTYPES)
    assert isinstance(labels, Tensor)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have the logits' shape without V, {tuple(logits.shape[:-1])} "
            f"(aligned: labels[..., i] is the target of logits[..., i, :]), got "
            f"{tuple(labels.shape)}"
        )
    if labels.device != logits.device:
        raise ValueError(f"labels are on {labels.device}, logits on {logits.device}")
    vocab = logits.shape[-1]
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        raise ValueError(
            f"labels must be {IGNORE_INDEX} or lie in [0, V={vocab}), got {labels[bad][0].item()}"
        )


def _check_temperature(temperature: object) -> None:
    check_positive("temperature", temperature)  # 0 is refused: a division by T


# ----------------------------------------------------------------------------- the divergences


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    """``log softmax(logits / T)`` in at least float32."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return (logits.to(dtype) / temperature).log_softmax(dim=-1)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p || q)`` per position: ``sum_v p_v (log p_v - log q_v)``, (...,); a term with
    ``p_v = 0`` is 0 (``0 log 0 = 0``), even where ``log q_v = -inf``."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), 0.0)  # (..., V)
    return terms.sum(dim=-1)


def _kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    alpha: float,
    labels: Tensor | None,
) -> KDOutput:
    """Unchecked core of :func:`kd_loss` (no argument checks, no device sync)."""
    vocab = student_logits.shape[-1]
    s = student_logits.reshape(-1, vocab)  # (N, V)
    t = teacher_logits.reshape(-1, vocab)  # (N, V)
    kl = _kl(_log_probs(t, temperature), _log_probs(s, temperature))  # (N,)
    if labels is None:
        return KDOutput(loss=temperature**2 * kl.mean(), soft_loss=kl.mean(), hard_loss=None)
    y = labels.reshape(-1)  # (N,)
    scored = y != IGNORE_INDEX  # (N,)
    n_scored = scored.sum().clamp_min(1)  # a batch with no scored position gives 0, not NaN
    soft = (kl * scored).sum() / n_scored
    log_p = _log_probs(s, 1.0)  # (N, V): the hard labels are scored at T = 1
    picked = log_p.gather(-1, y.clamp_min(0)[:, None]).squeeze(-1)  # (N,)
    hard = -(picked * scored).sum() / n_scored
    loss = alpha * temperature**2 * soft + (1 - alpha) * hard
    return KDOutput(loss=loss, soft_loss=soft, hard_loss=hard)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    alpha: float,
    labels: Tensor | None = None,
) -> KDOutput:
    """Hinton's distillation loss: ``alpha * T^2 * KL + (1 - alpha) * CE``.

    Args:
        student_logits, teacher_logits: ``(N, V)`` or ``(B, T, V)``, same shape.
        temperature: ``T > 0``; both distributions are ``softmax(logits / T)``.
        alpha: weight of the soft (teacher) term in ``[0, 1]``; ``1 - alpha`` goes to
            the hard-label cross-entropy. ``alpha < 1`` needs ``labels``.
        labels: the logits' shape without ``V``, aligned with them (``labels[..., i]``
            is the target of ``logits[..., i, :]``), ``-100`` on positions to skip.

    The teacher's logits are used as given: compute them under ``torch.no_grad()`` (or
    detach them) so that no gradient reaches the teacher.

    Which positions are averaged: the logits are flattened to ``N`` rows (one per
    position); without labels every row counts, with labels the rows whose label is not
    ``-100``. Both terms are a sum over those rows divided by their number: the soft term
    is ``nn.KLDivLoss(reduction="batchmean")`` on the kept rows (``batchmean`` divides
    by the number of rows; ``"mean"`` would also divide by ``V``), the hard term is
    ``F.cross_entropy(..., ignore_index=-100)``. (``KLDivLoss`` given a 3-D input would
    divide by ``B`` only.) No scored position at all gives 0, not NaN.

    >>> s, t = torch.zeros(2, 3), torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    >>> out = kd_loss(s, t, temperature=1.0, alpha=1.0)
    >>> round(out.soft_loss.item(), 4)  # (0 + KL(softmax([2,0,0]) || uniform)) / 2
    0.2165
    """
    _check_logits_pair(student_logits, teacher_logits)
    _check_temperature(temperature)
    check_probability("alpha", alpha, low_open=False)
    if labels is None:
        if alpha != 1:
            raise ValueError(
                f"alpha={alpha} gives the hard-label cross-entropy a weight of {1 - alpha}: "
                "pass labels, or alpha=1 for the soft term alone"
            )
    else:
        _check_labels(labels, student_logits)
    return _kd_loss(student_logits, teacher_logits, temperature, alpha, labels)


def _generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float,
    temperature: float,
    labels: Tensor | None,
    reduction: Reduction,
) -> Tensor:
    """Unchecked core of :func:`generalized_jsd` (no argument checks, no device sync)."""
    log_s = _log_probs(student_logits, temperature)  # (..., V)
    log_t = _log_probs(teacher_logits, temperature)  # (..., V)
    if beta == 0:
        div = _kl(log_t, log_s)  # (...,) forward KL(teacher || student)
    elif beta == 1:
        div = _kl(log_s, log_t)  # (...,) reverse KL(student || teacher)
    else:
        # log m = log(beta * p_t + (1 - beta) * p_s), computed in log space
        log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log1p(-beta))  # (..., V)
        div = beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)  # (...,)
    vocab = student_logits.shape[-1]
    if labels is None:
        scored = torch.ones_like(div, dtype=torch.bool)
    else:
        scored = labels != IGNORE_INDEX  # (...,)
    div = torch.where(scored, div, 0.0)
    if reduction == "none":
        return div
    total = div.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":  # over every scored (position, token) pair, as TRL
        return total / (scored.sum() * vocab).clamp_min(1)
    # "batchmean": per scored position with labels; per row of dim 0 without (TRL's rule)
    denom = scored.sum().clamp_min(1) if labels is not None else student_logits.shape[0]
    return total / denom


def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    reduction: Reduction = "batchmean",
) -> Tensor:
    """GKD's generalized Jensen-Shannon divergence between teacher and student.

    Both distributions are ``softmax(logits / temperature)`` (no ``T^2`` factor).
    ``beta = 0``: ``KL(teacher || student)`` (forward); ``beta = 1``: ``KL(student ||
    teacher)`` (reverse); in between: ``beta * KL(teacher || m) + (1 - beta) * KL(student
    || m)`` with ``m = beta * teacher + (1 - beta) * student``. ``labels`` (aligned, see
    the module docstring) mark the scored positions (not ``-100``).

    Reductions, the same as TRL's ``GKDTrainer.generalized_jsd_loss`` (tested equal):

    - ``"batchmean"``: with labels, the sum over scored positions divided by their
      number (a per-token mean); **without labels, divided by the first dimension**:
      ``B`` for ``(B, T, V)`` logits (a per-sequence sum averaged over sequences),
      ``N`` for ``(N, V)``;
    - ``"sum"``; ``"mean"``: the sum divided by (scored positions x ``V``), the mean of
      ``F.kl_div``'s elementwise terms;
    - ``"none"``: the divergence of every position, shape ``logits.shape[:-1]``, 0 where
      not scored (TRL returns the elementwise ``(n_scored, V)`` terms instead; their sum
      over ``V`` is ours).

    >>> s, t = torch.zeros(1, 2), torch.tensor([[0.0, math.log(3)]])
    >>> round(generalized_jsd(s, t, beta=0.0).item(), 4)  # KL((1/4, 3/4) || (1/2, 1/2))
    0.1308
    """
    _check_logits_pair(student_logits, teacher_logits)
    check_probability("beta", beta, low_open=False)
    _check_temperature(temperature)
    check_choice("reduction", reduction, ("batchmean", "sum", "mean", "none"))
    if labels is not None:
        _check_labels(labels, student_logits)
    return _generalized_jsd(student_logits, teacher_logits, beta, temperature, labels, reduction)


# ----------------------------------------------------------------------------- on-policy


@dataclass(frozen=True)
class OnPolicyOutput:
    """What :func:`on_policy_distillation_loss` returns:

    - ``loss``: the scalar to backpropagate (gradients reach the student only);
    - ``sequences`` (B, T_prompt + n): the left-padded prompts and the student's samples;
    - ``attention_mask`` (B, T_prompt + n): 1 on real tokens (prompt padding is 0);
    - ``labels`` (B, T_prompt + n): the sampled tokens, ``-100`` on the prompt, its
      padding and everything after a row's first stop token (the stop token is kept).
    """

    loss: Tensor
    sequences: Tensor
    attention_mask: Tensor
    labels: Tensor


def _left_pad_prompts(
    input_ids: Tensor | Sequence[Sequence[int]], pad_token_id: int
) -> tuple[Tensor, Tensor]:
    """Prompts -> ids (B, T) and mask (B, T), left-padded; a tensor is taken as unpadded."""
    if isinstance(input_ids, Tensor):
        check_tensor("input_ids", input_ids, ndim=2, dtype=_INT_DTYPES, nonempty=True)
        return input_ids.long(), torch.ones_like(input_ids, dtype=torch.long)
    if isinstance(input_ids, (str, bytes)) or not isinstance(input_ids, Sequence):
        raise TypeError(
            f"input_ids must be a (B, T) tensor or a list of lists of ids, got "
            f"{type(input_ids).__name__}"
        )
    rows = [list(row) for row in input_ids]
    if not rows or any(len(row) == 0 for row in rows):
        raise ValueError("input_ids must hold at least one prompt, and no prompt may be empty")
    width = max(len(row) for row in rows)
    ids = torch.tensor([[pad_token_id] * (width - len(r)) + r for r in rows])  # (B, T)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])  # (B, T)
    return ids, mask


def on_policy_distillation_loss(
    student: nn.Module,
    teacher: nn.Module,
    input_ids: Tensor | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    sampling: SamplingConfig | None = None,
    stop_token_ids: int | Iterable[int] = (),
    pad_token_id: int = 0,
    generator: torch.Generator | None = None,
) -> OnPolicyOutput:
    """One on-policy distillation loss: the student samples, the teacher scores.

    1. The student continues every prompt by up to ``max_new_tokens`` tokens with
       :func:`~llmfoundations.generate.generate` (no gradient; ``sampling`` defaults to
       plain sampling at temperature 1, so the samples follow the student's own
       distribution).
    2. Student (with gradients, in the mode the caller left it) and teacher (no gradient,
       eval mode) read the whole sequences; their logits at the positions that predict a sampled
       token are compared with :func:`generalized_jsd` (``beta``, ``temperature``,
       ``reduction="batchmean"``: a mean over the generated tokens of the batch).

    ``input_ids``: a ``(B, T)`` tensor of real tokens, or lists of ids of any lengths
    (left-padded with ``pad_token_id``). Both models must share the vocabulary. Call
    ``optimizer.step()`` after ``loss.backward()`` as usual; the teacher is never updated.
    """
    for name, model in (("student", student), ("teacher", teacher)):
        if not isinstance(model, nn.Module) or not hasattr(model, "config"):
            raise TypeError(f"{name} must be a DecoderLM, got {type(model).__name__}")
    vocab = student.config.vocab_size
    if teacher.config.vocab_size != vocab:
        raise ValueError(
            f"student and teacher must share one vocabulary, got vocab_size {vocab} and "
            f"{teacher.config.vocab_size}"
        )
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    check_probability("beta", beta, low_open=False)
    _check_temperature(temperature)
    if isinstance(stop_token_ids, int):
        stop_token_ids = [stop_token_ids]
    stop_token_ids = list(stop_token_ids)  # generate checks the values
    ids, mask = _left_pad_prompts(input_ids, pad_token_id)
    device = next(student.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    prompt_length = ids.shape[1]

    sequences = generate(
        student,
        ids,
        max_new_tokens,
        sampling=sampling or SamplingConfig(),
        attention_mask=mask,
        stop_token_ids=stop_token_ids,
        pad_token_id=pad_token_id,
        generator=generator,
    )  # (B, T_prompt + n)
    new = sequences[:, prompt_length:]  # (B, n)
    # Real generated tokens: up to and including each row's first stop token.
    stop = torch.tensor(stop_token_ids, dtype=torch.long, device=device)  # (S,)
    is_stop = torch.isin(new, stop).long()  # (B, n)
    stops_before = is_stop.cumsum(dim=1) - is_stop  # stop tokens strictly before each position
    new_mask = (stops_before == 0).long()  # (B, n)
    full_mask = torch.cat([mask, new_mask], dim=1)  # (B, T_prompt + n)
    labels = torch.cat(
        [torch.full_like(ids, IGNORE_INDEX), torch.where(new_mask.bool(), new, IGNORE_INDEX)],
        dim=1,
    )  # (B, T_prompt + n)

    student_logits = student(sequences, attention_mask=full_mask).logits  # (B, T', V)
    was_training = teacher.training
    teacher.eval()  # no dropout in the targets
    try:
        with torch.no_grad():
            teacher_logits = teacher(sequences, attention_mask=full_mask).logits  # (B, T', V)
    finally:
        teacher.train(was_training)
    loss = _generalized_jsd(
        student_logits[:, :-1],  # position i predicts token i + 1
        teacher_logits[:, :-1],
        beta,
        temperature,
        labels[:, 1:],
        "batchmean",
    )
    return OnPolicyOutput(loss=loss, sequences=sequences, attention_mask=full_mask, labels=labels)
