"""RLAIF: preference labels from a judge model instead of from people.

RLHF needs a person to say which of two answers is better, for tens of thousands of
pairs. Reinforcement learning from AI feedback (Bai et al., 2022, "Constitutional AI",
https://arxiv.org/abs/2212.08073; Lee et al., 2023, https://arxiv.org/abs/2309.00267)
asks a language model instead: show it the question and both answers, ask "A or B?", and
read the probability it gives to each letter. The labelled pairs then train a reward model
or feed DPO directly, exactly as human labels would.

A judge model has a **position bias**: it tends to prefer whichever answer it sees first
(or second), whatever they say. So every pair is judged twice, with the answers swapped.
With ``p_ab`` = P(answer 1 is better) when answer 1 is shown as A, and ``p_ba`` the same
when it is shown as B::

    p = (p_ab + p_ba) / 2                 the position-debiased preference for answer 1
    label = 1 (answer 1)   if p_ab > 1/2 and p_ba > 1/2
            0 (answer 2)   if p_ab < 1/2 and p_ba < 1/2
            TIE (-1)       otherwise: the verdict follows the position, not the answers

Ties are dropped from the training pairs (Lee et al. average the two orders into a soft
label instead; :attr:`AIPreferences.p_first` is that number, for a soft-label loss).

This module holds:

- ``JUDGE_TEMPLATE``: the judging prompt (question, answer A, answer B, "reply A or B");
- ``ai_preferences(model, tokenizer, questions, answers_1, answers_2)`` ->
  :class:`AIPreferences`: both orders judged in batched forward passes;
- ``preference_pairs(prompts, answers_1, answers_2, labels)`` -> (prompt, chosen,
  rejected) triples for ``dpo``, ties left out;
- ``label_accuracy(labels, truth)``: agreement with known labels, ties counted apart.

The judge reads the next-token log-probabilities at the end of a ChatML prompt
(``pretrained.apply_chat_template``), with right padding and the last real position of each
row; chapter 5's ``evaluation.judge`` builds the same judge with left padding and more
kinds of verdicts (and is this module's test oracle).

Left out: a written rationale before the verdict (chain-of-thought labelling, which Lee
et al. found helps), constitutions of principles to judge by, self-preference (a judge
favouring its own answers), and distilling the judge into a reward model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import EllipsisType

import torch
from torch import Tensor

from llmfoundations._validate import check_int, check_tensor
from llmfoundations.models import DecoderLM
from llmfoundations.pretrained import apply_chat_template
from llmfoundations.tokenizer import TokenizerLike

__all__ = [
    "JUDGE_TEMPLATE",
    "TIE",
    "AIPreferences",
    "ai_preferences",
    "preference_pairs",
    "label_accuracy",
]

TIE = -1
JUDGE_TEMPLATE = (
    "Which answer responds better to the question?\n\n"
    "Question: {question}\n\n"
    "Answer A: {answer_a}\n\n"
    "Answer B: {answer_b}\n\n"
    "Reply with a single letter, A or B."
)


@dataclass(frozen=True)
class AIPreferences:
    """A judge's verdicts on ``N`` pairs (answer 1 vs answer 2), each judged in both orders.

    Attributes:
        logp_ab: ``(N, 2)`` ``log P("A"), log P("B")`` with answer 1 shown as A.
        logp_ba: ``(N, 2)`` the same with the answers swapped (answer 1 shown as B).
    """

    logp_ab: Tensor
    logp_ba: Tensor

    def __post_init__(self) -> None:
        for name in ("logp_ab", "logp_ba"):
            t = check_tensor(name, getattr(self, name), ndim=2, floating=True)
            if t.shape[1] != 2:
                raise ValueError(f"{name} must have shape (N, 2), got {tuple(t.shape)}")
        if self.logp_ab.shape != self.logp_ba.shape:
            raise ValueError(
                f"logp_ab and logp_ba must have the same shape, got "
                f"{tuple(self.logp_ab.shape)} and {tuple(self.logp_ba.shape)}"
            )

    @property
    def p_ab(self) -> Tensor:
        """``(N,)`` P(answer 1 is better) when it is shown as A (renormalised over A, B)."""
        return self.logp_ab.softmax(dim=-1)[:, 0]

    @property
    def p_ba(self) -> Tensor:
        """``(N,)`` P(answer 1 is better) when it is shown as B."""
        return self.logp_ba.softmax(dim=-1)[:, 1]

    @property
    def p_first(self) -> Tensor:
        """``(N,)`` the position-debiased preference for answer 1: the mean of both orders."""
        return (self.p_ab + self.p_ba) / 2

    @property
    def p_letter_a(self) -> Tensor:
        """``(N,)`` P("A") averaged over both orders: 0.5 without position bias; above 0.5
        the judge favours whatever it is shown first."""
        return (self.logp_ab.softmax(-1)[:, 0] + self.logp_ba.softmax(-1)[:, 0]) / 2

    @property
    def labels(self) -> Tensor:
        """``(N,)`` long: 1 = answer 1 is better, 0 = answer 2, ``TIE`` (-1) = the two
        orders disagree (or either order is exactly undecided)."""
        first = (self.p_ab > 0.5) & (self.p_ba > 0.5)
        second = (self.p_ab < 0.5) & (self.p_ba < 0.5)
        out = torch.full(self.p_ab.shape, TIE, dtype=torch.long)
        out[first] = 1
        out[second] = 0
        return out


def _check_texts(name: str, texts: object) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(t).__name__}")
    return list(texts)


def _letter_ids(tokenizer: TokenizerLike) -> list[int]:
    ids = [tokenizer.encode(letter) for letter in ("A", "B")]
    if any(len(i) != 1 for i in ids) or ids[0] == ids[1]:
        raise ValueError(f'"A" and "B" must each be one token of the tokenizer, got {ids}')
    return [ids[0][0], ids[1][0]]


def _last_token_logprobs(
    model: DecoderLM, rows: list[list[int]], ids: list[int], batch_size: int
) -> Tensor:
    """Unchecked core: ``log P(ids | row)`` at the end of each row, ``(len(rows), len(ids))``.

    Rows are right-padded; each row's next-token distribution is read at its own last real
    position (with a causal model, padding after a token cannot change it)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        lengths = torch.tensor([len(r) for r in chunk])  # (b,)
        x = torch.zeros(len(chunk), int(lengths.max()), dtype=torch.long)  # (b, T)
        for r, row in enumerate(chunk):
            x[r, : len(row)] = torch.tensor(row)
        logits = model(x.to(device)).logits  # (b, T, V)
        last = logits[torch.arange(len(chunk)), lengths.to(device) - 1]  # (b, V)
        out.append(last.float().log_softmax(dim=-1)[:, ids].cpu())  # (b, len(ids))
    return torch.cat(out)


def ai_preferences(
    model: DecoderLM,
    tokenizer: TokenizerLike,
    questions: Sequence[str],
    answers_1: Sequence[str],
    answers_2: Sequence[str],
    *,
    template: str = JUDGE_TEMPLATE,
    system_prompt: str | None | EllipsisType = ...,
    batch_size: int = 8,
) -> AIPreferences:
    """Judge ``answers_1[i]`` against ``answers_2[i]`` for ``questions[i]``, in both orders.

    ``template`` has the fields ``{question}``, ``{answer_a}``, ``{answer_b}``;
    ``system_prompt``: ``...`` keeps SmolLM2's default system message, ``None`` leaves it
    out. The model runs in eval mode without gradients (its mode is restored).
    """
    if not isinstance(model, DecoderLM):
        raise TypeError(f"model must be a DecoderLM, got {type(model).__name__}")
    qs = _check_texts("questions", questions)
    a1 = _check_texts("answers_1", answers_1)
    a2 = _check_texts("answers_2", answers_2)
    if not (len(qs) == len(a1) == len(a2)) or not qs:
        raise ValueError(
            "questions, answers_1 and answers_2 must be non-empty and of one length, got "
            f"{len(qs)}, {len(a1)}, {len(a2)}"
        )
    check_int("batch_size", batch_size, minimum=1)
    ids = _letter_ids(tokenizer)
    options = {} if system_prompt is ... else {"system_prompt": system_prompt}
    rows = []
    for q, first, second in zip(qs, a1, a2, strict=True):
        for a, b in ((first, second), (second, first)):
            content = template.format(question=q, answer_a=a, answer_b=b)
            text = apply_chat_template([{"role": "user", "content": content}], **options)
            rows.append(tokenizer.encode(text))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logp = _last_token_logprobs(model, rows, ids, batch_size)  # (2N, 2)
    finally:
        model.train(was_training)
    return AIPreferences(logp_ab=logp[0::2].clone(), logp_ba=logp[1::2].clone())


def preference_pairs(
    prompts: Sequence[str],
    answers_1: Sequence[str],
    answers_2: Sequence[str],
    labels: Tensor | Sequence[int],
) -> list[tuple[str, str, str]]:
    """``(prompt, chosen, rejected)`` for every pair whose label is 1 or 0; ties are dropped.

    >>> preference_pairs(["q1", "q2"], ["x", "y"], ["u", "v"], [0, TIE])
    [('q1', 'u', 'x')]
    """
    ps = _check_texts("prompts", prompts)
    a1 = _check_texts("answers_1", answers_1)
    a2 = _check_texts("answers_2", answers_2)
    labs = labels.tolist() if isinstance(labels, Tensor) else list(labels)
    if not (len(ps) == len(a1) == len(a2) == len(labs)):
        raise ValueError(
            f"prompts, answers_1, answers_2 and labels must have one length, got "
            f"{len(ps)}, {len(a1)}, {len(a2)}, {len(labs)}"
        )
    out = []
    for p, x, y, label in zip(ps, a1, a2, labs, strict=True):
        if label not in (1, 0, TIE):
            raise ValueError(f"labels must be 1, 0 or TIE ({TIE}), got {label!r}")
        if label == 1:
            out.append((p, x, y))
        elif label == 0:
            out.append((p, y, x))
    return out


@dataclass(frozen=True)
class LabelAccuracy:
    """How AI labels compare with known ones: ``accuracy`` over the decided pairs (``None``
    when every pair is a tie), ``tie_rate`` (share of pairs left undecided), and
    ``coverage_accuracy`` (correct labels over all pairs: a tie counts as wrong)."""

    accuracy: float | None
    tie_rate: float
    coverage_accuracy: float


def label_accuracy(labels: Tensor | Sequence[int], truth: Tensor | Sequence[int]) -> LabelAccuracy:
    """Compare AI ``labels`` (1, 0 or ``TIE``) with the true ones (1 or 0).

    >>> label_accuracy([1, 0, TIE, 1], [1, 1, 0, 1])
    LabelAccuracy(accuracy=0.6666666666666666, tie_rate=0.25, coverage_accuracy=0.5)
    """
    labs = labels.tolist() if isinstance(labels, Tensor) else list(labels)
    true = truth.tolist() if isinstance(truth, Tensor) else list(truth)
    if len(labs) != len(true) or not labs:
        raise ValueError(f"labels and truth must be non-empty and of one length, got "
                         f"{len(labs)} and {len(true)}")
    if any(t not in (0, 1) for t in true):
        raise ValueError("truth must hold only 0 and 1")
    if any(label not in (0, 1, TIE) for label in labs):
        raise ValueError(f"labels must be 1, 0 or TIE ({TIE})")
    decided = [(a, t) for a, t in zip(labs, true, strict=True) if a != TIE]
    correct = sum(a == t for a, t in decided)
    return LabelAccuracy(
        accuracy=correct / len(decided) if decided else None,
        tie_rate=1 - len(decided) / len(labs),
        coverage_accuracy=correct / len(labs),
    )
