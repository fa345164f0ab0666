"""Checks for the chapter-2 labs: GPT-1 (02-1), BERT (02-2), in-context learning (02-3)
and scaling laws (02-4).

Each check runs the student's function next to a reference on fixed, seeded inputs and
either prints one line of success or raises ``AssertionError`` naming the failing case.
The cases are chosen so that the usual mistakes fail:

- ``last_token_states``: taking position ``-1`` (the padding), or ``lengths`` instead of
  ``lengths - 1``; rows of every length, including full and length-1 rows;
- ``gpt1_loss``: the language-model term not shifted by one, ``lam`` on the wrong term;
- ``segment_ids``: the first ``[SEP]`` counted in sentence B, padding marked as B;
- ``pseudo_log_likelihood``: scoring without masking, masking everything at once,
  including the ``[CLS]`` / ``[SEP]`` positions;
- ``calibrate``: multiplying by the content-free probabilities instead of dividing, no
  renormalisation, normalising over the batch instead of the labels;
- ``continuation_logprob``: the off-by-one (``logits[t]`` scores token ``t + 1``, not
  ``t``), probabilities or raw logits instead of log-probabilities;
- ``chinchilla_loss`` / ``optimal_allocation``: exponents swapped, ``C`` not divided by 6,
  ``G`` inverted.

References: the course's ``scaling`` and ``sampling`` modules, ``EncoderMLM`` itself for
the pseudo-log-likelihood (one batch of masked copies), and plain PyTorch (indexing,
``torch.nn.functional.cross_entropy``) elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from llmfoundations.models import EncoderMLM, ModelConfig
from llmfoundations.sampling import sequence_logprob
from llmfoundations.scaling import CHINCHILLA_FIT, compute_optimal, predict_loss

from .core import check_callable, compare_with_reference, exercise_check

__all__ = [
    "check_last_token_states",
    "check_gpt1_loss",
    "check_segment_ids",
    "check_pseudo_log_likelihood",
    "check_contextual_calibration",
    "check_continuation_logprob",
    "check_chinchilla_loss",
    "check_optimal_allocation",
]



# ------------------------------------------------------------------------- 02-1 GPT-1


def _reference_last_token_states(hidden: Tensor, lengths: Tensor) -> Tensor:
    rows = torch.arange(hidden.shape[0])
    return hidden[rows, lengths - 1]  # (B, C)


@exercise_check
def check_last_token_states(
    student: Callable[[Tensor, Tensor], Tensor],
) -> None:
    """Lab 02-1: ``hidden`` (B, T, C) and ``lengths`` (B,) of right-padded rows -> (B, C),
    the hidden state of each row's last real token."""
    check_callable("last_token_states", student)
    g = torch.Generator().manual_seed(0)
    cases = []
    for b, t, c, lengths in [
        (3, 5, 4, [5, 2, 1]),  # a full row, a padded row, a one-token row
        (4, 7, 3, [3, 7, 6, 1]),
        (1, 4, 2, [4]),
        (5, 6, 8, [2, 2, 5, 6, 3]),
    ]:
        hidden = torch.randn(b, t, c, generator=g)
        cases.append(((hidden, torch.tensor(lengths)), {}))
    compare_with_reference("last_token_states", student, _reference_last_token_states, cases)


def _reference_gpt1_loss(
    class_logits: Tensor,
    labels: Tensor,
    lm_logits: Tensor,
    ids: Tensor,
    lam: float,
) -> Tensor:
    task = F.cross_entropy(class_logits, labels)
    v = lm_logits.shape[-1]
    lm = F.cross_entropy(lm_logits[:, :-1].reshape(-1, v), ids[:, 1:].reshape(-1))
    return task + lam * lm


@exercise_check
def check_gpt1_loss(student: Callable[..., Tensor]) -> None:
    """Lab 02-1: GPT-1's fine-tuning objective, task cross-entropy + ``lam`` x LM loss."""
    check_callable("gpt1_loss", student)
    g = torch.Generator().manual_seed(1)
    cases = []
    for b, t, v, k, lam in [(2, 5, 7, 2, 0.5), (4, 3, 11, 3, 0.0), (3, 6, 5, 2, 2.0)]:
        class_logits = torch.randn(b, k, generator=g) * 2
        labels = torch.randint(0, k, (b,), generator=g)
        lm_logits = torch.randn(b, t, v, generator=g) * 2
        ids = torch.randint(0, v, (b, t), generator=g)
        cases.append(((class_logits, labels, lm_logits, ids, lam), {}))
    compare_with_reference("gpt1_loss", student, _reference_gpt1_loss, cases, atol=1e-5)


# -------------------------------------------------------------------------- 02-2 BERT


def _reference_segment_ids(ids: Tensor, sep_id: int) -> Tensor:
    out = torch.zeros_like(ids)
    for row, tokens in enumerate(ids.tolist()):
        seps = [i for i, token in enumerate(tokens) if token == sep_id]
        if len(seps) >= 2:
            out[row, seps[0] + 1 : seps[1] + 1] = 1
    return out


@exercise_check
def check_segment_ids(student: Callable[[Tensor, int], Tensor]) -> None:
    """Lab 02-2: BERT's sentence A / B ids for ``[CLS] A [SEP] B [SEP] [PAD]...`` rows."""
    check_callable("segment_ids", student)
    cls, sep, pad = 1, 2, 0
    rows = [
        [cls, 7, 8, sep, 9, sep],  # no padding
        [cls, 7, sep, 9, 5, 6, sep, pad, pad],  # padding after B must stay 0
        [cls, sep, 4, sep, pad],  # an empty sentence A
        [cls, 5, 5, 5, sep, 6, sep],
    ]
    cases = []
    for row in rows:
        cases.append(((torch.tensor([row]), sep), {}))
    batch = [r + [pad] * (9 - len(r)) for r in rows]  # a batch of rows of different lengths
    cases.append(((torch.tensor(batch), sep), {}))
    compare_with_reference("segment_ids", student, _reference_segment_ids, cases)


@torch.no_grad()
def reference_pseudo_log_likelihood(
    model: EncoderMLM, ids: Tensor, mask_id: int
) -> Tensor:
    """Sum over positions ``1 .. T-2`` of ``log p(ids[t] | ids with position t masked)``.

    ``ids`` is one row ``[CLS] w_1 ... w_n [SEP]`` of shape (T,); the first and last
    positions are not scored. All ``T - 2`` masked copies go through the model as one batch.
    """
    t = ids.shape[0]
    positions = torch.arange(1, t - 1)  # (T-2,) the scored positions
    batch = ids.repeat(len(positions), 1)  # (T-2, T) one copy per scored position
    batch[torch.arange(len(positions)), positions] = mask_id
    logprobs = model(batch).logits.log_softmax(dim=-1)  # (T-2, T, V)
    picked = logprobs[torch.arange(len(positions)), positions, ids[positions]]  # (T-2,)
    return picked.sum()


@exercise_check
def check_pseudo_log_likelihood(student: Callable[..., Tensor]) -> None:
    """Lab 02-2: a sentence's pseudo-log-likelihood under a masked LM (Salazar et al., 2020).

    Runs on a small random ``EncoderMLM`` (seeded); the student's function is called as
    ``student(model, ids, mask_id)``.
    """
    check_callable("pseudo_log_likelihood", student)
    vocab, mask_id = 23, 3
    # Large initial weights: a random model at the usual std 0.02 hardly looks at its
    # context, and masking mistakes would go unnoticed.
    config = ModelConfig.bert(
        vocab, d_model=16, n_layers=1, n_heads=2, max_seq_len=16, init_std=0.5
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(0)
        model = EncoderMLM(config).eval()
    g = torch.Generator().manual_seed(2)
    cases = []
    for n_words in (1, 3, 6, 10):
        words = torch.randint(5, vocab, (n_words,), generator=g)
        ids = torch.cat([torch.tensor([1]), words, torch.tensor([2])])  # [CLS] ... [SEP]
        cases.append(((model, ids, mask_id), {}))
    compare_with_reference(
        "pseudo_log_likelihood",
        lambda *a: torch.as_tensor(student(*a)).reshape(()),
        reference_pseudo_log_likelihood,
        cases,
        atol=1e-4,
        rtol=1e-4,
    )


# ------------------------------------------------------------ 02-3 in-context learning


def _reference_calibrate(probs: Tensor, content_free: Tensor) -> Tensor:
    scaled = probs / content_free  # (B, C): divide out the prompt's own preference
    return scaled / scaled.sum(dim=-1, keepdim=True)


@exercise_check
def check_contextual_calibration(
    student: Callable[[Tensor, Tensor], Tensor],
) -> None:
    """Lab 02-3: contextual calibration (Zhao et al., 2021, https://arxiv.org/abs/2102.09690).

    ``calibrate(probs, content_free)``: label probabilities ``probs`` (B, C) divided by the
    probabilities ``content_free`` (C,) the same prompt gives a content-free input, each row
    renormalised to sum to 1.
    """
    check_callable("calibrate", student)
    g = torch.Generator().manual_seed(4)
    cases = []
    for b, c in [(1, 2), (5, 2), (4, 3), (6, 5)]:
        probs = torch.softmax(torch.randn(b, c, generator=g) * 2, dim=-1)
        content_free = torch.softmax(torch.randn(c, generator=g) * 2, dim=-1)
        cases.append(((probs, content_free), {}))
    # a prompt that favours label 0 three to one: calibration must flip the middle row
    cases.append(
        ((torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.5, 0.5]]), torch.tensor([0.75, 0.25])), {})
    )
    compare_with_reference("calibrate", student, _reference_calibrate, cases, atol=1e-6)


@exercise_check
def check_continuation_logprob(student: Callable[..., Tensor]) -> None:
    """Lab 02-3: ``continuation_logprob(logits, ids, prompt_len)``: logits (B, T, V) of a
    causal LM run on ids (B, T) -> (B,), the summed log-probability of ``ids[:, prompt_len:]``.

    Compared with ``llmfoundations.sampling.sequence_logprob``.
    """
    check_callable("continuation_logprob", student)
    g = torch.Generator().manual_seed(3)
    cases = []
    for b, t, v, prompt_len in [(1, 4, 6, 1), (2, 6, 9, 3), (3, 8, 5, 7), (2, 5, 12, 2)]:
        logits = torch.randn(b, t, v, generator=g) * 3
        ids = torch.randint(0, v, (b, t), generator=g)
        cases.append(((logits, ids, prompt_len), {}))

    def reference(logits: Tensor, ids: Tensor, prompt_len: int) -> Tensor:
        # sequence_logprob runs its model on ids[:, :-1]: hand it the matching logits
        return sequence_logprob(lambda x: logits[:, : x.shape[1]], ids, prompt_len)

    compare_with_reference("continuation_logprob", student, reference, cases, atol=1e-4)


# ---------------------------------------------------------------- 02-4 scaling laws

_OTHER_FIT = {"E": 1.82, "A": 482.0, "B": 2085.0, "alpha": 0.35, "beta": 0.37}  # Besiroglu et al.
_TOY_FIT = {"E": 0.8, "A": 30.0, "B": 900.0, "alpha": 0.45, "beta": 0.6}


@exercise_check
def check_chinchilla_loss(student: Callable[[Any, Any, Mapping[str, float]], Any]) -> None:
    """Lab 02-4: ``chinchilla_loss(N, D, params) = E + A / N**alpha + B / D**beta``."""
    check_callable("chinchilla_loss", student)
    cases = [
        ((70e9, 1.4e12, CHINCHILLA_FIT), {}),  # Chinchilla itself
        ((280e9, 300e9, CHINCHILLA_FIT), {}),  # Gopher
        ((1e6, 1e7, _TOY_FIT), {}),
        ((torch.tensor([1e7, 1e8, 1e9]), torch.tensor([1e9, 1e10, 1e11]), _OTHER_FIT), {}),
        ((torch.tensor([3e3, 2e5]), torch.tensor([6e4, 1e6]), _TOY_FIT), {}),
    ]

    def as_tensor(fn: Callable[..., Any]) -> Callable[..., Tensor]:
        return lambda n, d, p: torch.as_tensor(fn(n, d, p), dtype=torch.float64)

    compare_with_reference(
        "chinchilla_loss",
        as_tensor(student),
        as_tensor(predict_loss),
        cases,
        atol=0.0,
        rtol=1e-6,  # float32 inputs give float32 answers
    )


@exercise_check
def check_optimal_allocation(
    student: Callable[[float, Mapping[str, float]], tuple[float, float]],
) -> None:
    """Lab 02-4: ``optimal_allocation(C, params) -> (N_opt, D_opt)`` under ``C = 6 N D``."""
    check_callable("optimal_allocation", student)
    cases = [
        ((5.76e23, CHINCHILLA_FIT), {}),  # Gopher's budget
        ((1e21, _OTHER_FIT), {}),
        ((3e12, _TOY_FIT), {}),
    ]

    def as_tensor(fn: Callable[..., Any]) -> Callable[..., Tensor]:
        def run(c: float, params: Mapping[str, float]) -> Tensor:
            got = fn(c, params)
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise AssertionError(
                    f"optimal_allocation must return a pair (N_opt, D_opt), got {got!r}"
                )
            return torch.tensor([float(got[0]), float(got[1])], dtype=torch.float64)

        return run

    compare_with_reference(
        "optimal_allocation",
        as_tensor(student),
        as_tensor(compute_optimal),
        cases,
        atol=0.0,
        rtol=1e-6,
    )
