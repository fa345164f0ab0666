"""LLM as a judge: a language model grades answers, and we read its probabilities, not its prose.

Instead of asking a model to write "Rating: 4" and parsing the text, put the question and
the answer in a prompt that ends where the verdict begins, and read the model's
next-token distribution over the allowed replies. That gives a number with a confidence
attached, from one forward pass, with no parsing failures.

- **Pointwise** (:func:`judge_pointwise`): "rate this answer from 1 to 5". With
  ``q_k = P("k" | prompt)`` for ``k = 1..5``, the judge's distribution over scores is
  ``p_k = q_k / sum_j q_j`` and its **expected score** ``sum_k k * p_k`` is a smoother
  grade than the single most likely digit. ``mass = sum_j q_j`` says how much of its
  probability the model put on a valid reply at all: a small mass means the prompt is
  not doing its job.
- **Pairwise** (:func:`judge_pairwise`): "which answer is better, A or B?", read as
  ``P(A) / (P(A) + P(B))``. Judges prefer a position (often the first), so every pair is
  judged **twice, with the answers swapped** (the swap test of MT-Bench: Zheng et al.,
  2023, https://arxiv.org/abs/2306.05685). A verdict is *consistent* when both orders
  prefer the same answer; MT-Bench counts an inconsistent pair as a tie. The average of
  the two orders is a position-debiased probability.
- **Yes/no checks** (:func:`judge_yes_no`): "does the answer meet this criterion?",
  ``P(Yes) / (P(Yes) + P(No))``; the ``rubric`` module turns such checks into criteria.

The prompts are chat messages rendered with ``pretrained.apply_chat_template`` (SmolLM2's
ChatML), ending with the opened assistant turn, so the model's first token is the
verdict. Every option must be a single token of the tokenizer (checked).
:func:`option_logprobs` is the one primitive underneath: it runs the prompts in
left-padded batches and returns ``log P(option | prompt)`` over the full vocabulary.

How far to trust the numbers is the ``agreement`` module's job: accuracy and Cohen's kappa
against known answers, rank correlations, calibration error, temperature scaling.

Differences from MT-Bench: it lets GPT-4 write an explanation and then a verdict
(``[[A]]``, ``[[B]]`` or ``[[C]]`` for a tie) and parses it; we read the first token's
probabilities, with no explanation first and no tie option.

Left out: judging with a rationale first (chain-of-thought grading), reference-guided
and multi-turn prompts, scales other than 1-5, reward-model and discriminative raters
(a reward model scores an answer with a trained head instead of a prompt; see chapter
3), and multimodal judging.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import EllipsisType

import torch
import torch.nn.functional as F
from torch import Tensor

from llmfoundations._validate import check_int, check_tensor
from llmfoundations.models import DecoderLM
from llmfoundations.pretrained import apply_chat_template
from llmfoundations.tokenizer import TokenizerLike

__all__ = [
    "SCORE_OPTIONS",
    "PAIR_OPTIONS",
    "YES_NO_OPTIONS",
    "POINTWISE_TEMPLATE",
    "PAIRWISE_TEMPLATE",
    "YES_NO_TEMPLATE",
    "option_ids",
    "option_logprobs",
    "render_prompt",
    "PointwiseJudgement",
    "PairwiseJudgement",
    "YesNoJudgement",
    "judge_pointwise",
    "judge_pairwise",
    "judge_yes_no",
    "position_consistency",
]

SCORE_OPTIONS = ("1", "2", "3", "4", "5")
PAIR_OPTIONS = ("A", "B")
YES_NO_OPTIONS = ("Yes", "No")

POINTWISE_TEMPLATE = (
    "Rate how well the answer responds to the question, from 1 (wrong or useless) to "
    "5 (correct and helpful).\n\n"
    "Question: {question}\n"
    "Answer: {answer}\n\n"
    "Reply with a single digit from 1 to 5."
)
PAIRWISE_TEMPLATE = (
    "Which answer responds better to the question?\n\n"
    "Question: {question}\n\n"
    "Answer A: {answer_a}\n\n"
    "Answer B: {answer_b}\n\n"
    "Reply with a single letter, A or B."
)
YES_NO_TEMPLATE = (
    "Question: {question}\n"
    "Answer: {answer}\n\n"
    "Does the answer meet this requirement: {criterion}\n"
    "Reply with Yes or No."
)


# ------------------------------------------------------------------------ the primitive


def option_ids(tokenizer: TokenizerLike, options: Sequence[str]) -> list[int]:
    """The token id of each option; each must be exactly one token, and all different.

    >>> from llmfoundations.tokenizer import BPETokenizer
    >>> option_ids(BPETokenizer({i: bytes([i]) for i in range(256)}, []), ["A", "B"])
    [65, 66]
    """
    _check_tokenizer(tokenizer)
    if isinstance(options, str) or not isinstance(options, Sequence) or len(options) < 2:
        raise ValueError(f"options must be a list of at least 2 strings, got {options!r}")
    ids = []
    for k, option in enumerate(options):
        if not isinstance(option, str):
            raise TypeError(f"options[{k}] must be a str, got {type(option).__name__}")
        encoded = tokenizer.encode(option)
        if len(encoded) != 1:
            raise ValueError(
                f"options[{k}] ({option!r}) must be a single token, got {len(encoded)} tokens"
            )
        ids.append(encoded[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"options must map to different tokens, got ids {ids}")
    return ids


def option_logprobs(
    model: DecoderLM,
    tokenizer: TokenizerLike,
    prompts: Sequence[str],
    options: Sequence[str],
    *,
    batch_size: int = 8,
) -> Tensor:
    """``log P(option | prompt)`` for every prompt and option: ``(B, O)`` float32.

    The log-probabilities are over the whole vocabulary (not renormalised over the
    options), so ``exp(...).sum(-1)`` is the mass the model puts on the options. Prompts
    are tokenised, sorted by length and run ``batch_size`` at a time with left padding;
    the result is in the order of ``prompts``. The model runs in eval mode without
    gradients (its mode is restored).
    """
    _check_model(model)
    ids = option_ids(tokenizer, options)
    texts = _check_texts("prompts", prompts)
    check_int("batch_size", batch_size, minimum=1)
    rows = [tokenizer.encode(t) for t in texts]
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"prompts[{i}] encodes to no tokens; the model needs one")
    return _option_logprobs(model, rows, ids, batch_size)


def _option_logprobs(
    model: DecoderLM, rows: list[list[int]], ids: list[int], batch_size: int
) -> Tensor:
    """Unchecked core of :func:`option_logprobs` (rows are token-id lists, ids the options)."""
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together
    out = torch.empty(len(rows), len(ids))  # (B, O)
    option_index = torch.tensor(ids, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                chunk = order[start : start + batch_size]
                width = max(len(rows[i]) for i in chunk)
                x = torch.zeros(len(chunk), width, dtype=torch.long)  # (b, T), left-padded
                mask = torch.zeros(len(chunk), width, dtype=torch.long)  # 1 = real token
                for r, i in enumerate(chunk):
                    x[r, width - len(rows[i]) :] = torch.tensor(rows[i])
                    mask[r, width - len(rows[i]) :] = 1
                padded = bool((mask == 0).any())
                logits = model(
                    x.to(device), attention_mask=mask.to(device) if padded else None
                ).logits[:, -1]  # (b, V): the next token after each prompt
                logprobs = F.log_softmax(logits.float(), dim=-1)  # (b, V)
                out[chunk] = logprobs[:, option_index].cpu()  # (b, O)
    finally:
        model.train(was_training)
    return out


def render_prompt(
    template: str, system_prompt: str | None | EllipsisType = ..., **fields: str
) -> str:
    """Fill ``template`` with ``fields`` and render it as one user turn in ChatML, ending
    with the opened assistant turn. ``system_prompt``: ``...`` keeps SmolLM2's default
    system message, ``None`` leaves it out, a string replaces it."""
    if not isinstance(template, str):
        raise TypeError(f"template must be a str, got {type(template).__name__}")
    try:
        content = template.format(**fields)
    except (KeyError, IndexError) as err:
        raise ValueError(
            f"template has a field that was not given: {err}; given: {sorted(fields)}"
        ) from None
    options = {} if system_prompt is ... else {"system_prompt": system_prompt}
    return apply_chat_template([{"role": "user", "content": content}], **options)


# ---------------------------------------------------------------------------- pointwise


@dataclass(frozen=True)
class PointwiseJudgement:
    """A judge's 1-5 grades of ``B`` answers.

    Attributes:
        logprobs: ``(B, 5)`` ``log P("k" | prompt)`` for ``k = 1..5`` over the whole
            vocabulary (the judge's raw logits for calibration: ``agreement.fit_temperature``).
    """

    logprobs: Tensor

    def __post_init__(self) -> None:
        check_tensor("logprobs", self.logprobs, ndim=2, floating=True)
        if self.logprobs.shape[1] != len(SCORE_OPTIONS):
            raise ValueError(f"logprobs must have shape (B, 5), got {tuple(self.logprobs.shape)}")

    @property
    def probs(self) -> Tensor:
        """``(B, 5)`` distribution over the scores 1..5 (renormalised over the options)."""
        return self.logprobs.softmax(dim=-1)

    @property
    def mass(self) -> Tensor:
        """``(B,)`` probability the judge put on any of "1".."5" before renormalising."""
        return self.logprobs.exp().sum(dim=-1)

    @property
    def expected_score(self) -> Tensor:
        """``(B,)`` ``sum_k k * p_k``, in ``[1, 5]``."""
        scores = torch.arange(1, len(SCORE_OPTIONS) + 1, dtype=self.probs.dtype)
        return self.probs @ scores

    @property
    def best_score(self) -> Tensor:
        """``(B,)`` long: the most likely score (the lower one on ties)."""
        return self.logprobs.argmax(dim=-1) + 1


def judge_pointwise(
    model: DecoderLM,
    tokenizer: TokenizerLike,
    questions: Sequence[str],
    answers: Sequence[str],
    *,
    template: str = POINTWISE_TEMPLATE,
    system_prompt: str | None | EllipsisType = ...,
    batch_size: int = 8,
) -> PointwiseJudgement:
    """Grade each ``answers[i]`` to ``questions[i]`` from 1 to 5.

    ``template`` has the fields ``{question}`` and ``{answer}`` and should ask for a
    single digit; ``system_prompt`` as in :func:`render_prompt`.
    """
    questions, answers = _check_pairs(questions=questions, answers=answers)
    prompts = [
        render_prompt(template, system_prompt, question=q, answer=a)
        for q, a in zip(questions, answers, strict=True)
    ]
    return PointwiseJudgement(
        option_logprobs(model, tokenizer, prompts, SCORE_OPTIONS, batch_size=batch_size)
    )


# ----------------------------------------------------------------------------- pairwise


@dataclass(frozen=True)
class PairwiseJudgement:
    """A judge's preferences between answer 1 and answer 2 of ``B`` pairs, in both orders.

    Attributes:
        logprobs_12: ``(B, 2)`` ``log P("A"), log P("B")`` with answer 1 shown as A.
        logprobs_21: ``(B, 2)`` the same with the answers swapped (answer 1 shown as B).
    """

    logprobs_12: Tensor
    logprobs_21: Tensor

    def __post_init__(self) -> None:
        for name in ("logprobs_12", "logprobs_21"):
            t = check_tensor(name, getattr(self, name), ndim=2, floating=True)
            if t.shape[1] != 2:
                raise ValueError(f"{name} must have shape (B, 2), got {tuple(t.shape)}")
        if self.logprobs_12.shape != self.logprobs_21.shape:
            raise ValueError(
                "logprobs_12 and logprobs_21 must have the same shape, got "
                f"{tuple(self.logprobs_12.shape)} and {tuple(self.logprobs_21.shape)}"
            )

    @property
    def p_first_12(self) -> Tensor:
        """``(B,)`` P(answer 1 is better) when it is shown first (as A)."""
        return self.logprobs_12.softmax(dim=-1)[:, 0]

    @property
    def p_first_21(self) -> Tensor:
        """``(B,)`` P(answer 1 is better) when it is shown second (as B)."""
        return self.logprobs_21.softmax(dim=-1)[:, 1]

    @property
    def p_first(self) -> Tensor:
        """``(B,)`` the mean of the two orders: P(answer 1 is better), position-debiased."""
        return (self.p_first_12 + self.p_first_21) / 2

    @property
    def p_position_a(self) -> Tensor:
        """``(B,)`` P("A") averaged over the two orders: 0.5 for a judge without position
        bias on average; above 0.5, it favours whatever is shown first."""
        return (self.p_first_12 + (1 - self.p_first_21)) / 2

    @property
    def consistent(self) -> Tensor:
        """``(B,)`` bool: both orders prefer the same answer (a probability of exactly 0.5
        prefers neither, so it is never consistent)."""
        a, b = self.p_first_12, self.p_first_21
        return ((a > 0.5) & (b > 0.5)) | ((a < 0.5) & (b < 0.5))

    @property
    def verdicts(self) -> tuple[str, ...]:
        """MT-Bench's reading of the two games: ``"first"``, ``"second"`` or
        ``"inconsistent"`` (counted as a tie)."""
        out = []
        for a, b in zip(self.p_first_12.tolist(), self.p_first_21.tolist(), strict=True):
            if a > 0.5 and b > 0.5:
                out.append("first")
            elif a < 0.5 and b < 0.5:
                out.append("second")
            else:
                out.append("inconsistent")
        return tuple(out)


def judge_pairwise(
    model: DecoderLM,
    tokenizer: TokenizerLike,
    questions: Sequence[str],
    answers_1: Sequence[str],
    answers_2: Sequence[str],
    *,
    template: str = PAIRWISE_TEMPLATE,
    system_prompt: str | None | EllipsisType = ...,
    batch_size: int = 8,
) -> PairwiseJudgement:
    """Compare ``answers_1[i]`` with ``answers_2[i]`` for ``questions[i]``, in both orders.

    ``template`` has the fields ``{question}``, ``{answer_a}`` and ``{answer_b}`` and
    should ask for a single letter, A or B. The ``2B`` prompts run in one batched pass.
    """
    questions, answers_1, answers_2 = _check_pairs(
        questions=questions, answers_1=answers_1, answers_2=answers_2
    )
    prompts = [
        render_prompt(template, system_prompt, question=q, answer_a=a, answer_b=b)
        for q, first, second in zip(questions, answers_1, answers_2, strict=True)
        for a, b in ((first, second), (second, first))
    ]  # 1 as A, then 1 as B, for each pair
    logprobs = option_logprobs(model, tokenizer, prompts, PAIR_OPTIONS, batch_size=batch_size)
    return PairwiseJudgement(logprobs_12=logprobs[0::2], logprobs_21=logprobs[1::2])


def position_consistency(judgement: PairwiseJudgement) -> float:
    """Share of pairs on which both orders agree (1.0: the order never changes the verdict)."""
    if not isinstance(judgement, PairwiseJudgement):
        raise TypeError(f"judgement must be a PairwiseJudgement, got {type(judgement).__name__}")
    if judgement.logprobs_12.shape[0] == 0:
        raise ValueError("judgement holds no pairs")
    return judgement.consistent.float().mean().item()


# ----------------------------------------------------------------------------- yes / no


@dataclass(frozen=True)
class YesNoJudgement:
    """A judge's answers to "does the answer meet this criterion?" for ``B`` answers.

    Attributes:
        logprobs: ``(B, 2)`` ``log P("Yes"), log P("No")`` over the whole vocabulary.
    """

    logprobs: Tensor

    def __post_init__(self) -> None:
        check_tensor("logprobs", self.logprobs, ndim=2, floating=True)
        if self.logprobs.shape[1] != 2:
            raise ValueError(f"logprobs must have shape (B, 2), got {tuple(self.logprobs.shape)}")

    @property
    def p_yes(self) -> Tensor:
        """``(B,)`` ``P(Yes) / (P(Yes) + P(No))``."""
        return self.logprobs.softmax(dim=-1)[:, 0]


def judge_yes_no(
    model: DecoderLM,
    tokenizer: TokenizerLike,
    questions: Sequence[str],
    answers: Sequence[str],
    criterion: str,
    *,
    template: str = YES_NO_TEMPLATE,
    system_prompt: str | None | EllipsisType = ...,
    batch_size: int = 8,
) -> YesNoJudgement:
    """Ask whether each answer meets ``criterion`` ("it gives a number", "it is polite").

    ``template`` has the fields ``{question}``, ``{answer}`` and ``{criterion}``.
    """
    questions, answers = _check_pairs(questions=questions, answers=answers)
    if not isinstance(criterion, str) or not criterion.strip():
        raise ValueError(f"criterion must be a non-empty str, got {criterion!r}")
    prompts = [
        render_prompt(template, system_prompt, question=q, answer=a, criterion=criterion)
        for q, a in zip(questions, answers, strict=True)
    ]
    return YesNoJudgement(
        option_logprobs(model, tokenizer, prompts, YES_NO_OPTIONS, batch_size=batch_size)
    )


# ------------------------------------------------------------------------------- checks


def _check_model(model: object) -> None:
    if not isinstance(model, DecoderLM):
        raise TypeError(f"model must be a DecoderLM, got {type(model).__name__}")


def _check_tokenizer(tokenizer: object) -> None:
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(
            f"tokenizer must have an encode(text) method, got {type(tokenizer).__name__}"
        )


def _check_texts(name: str, texts: object) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a list of str, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError(f"{name} must not be empty")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(t).__name__}")
    return list(texts)


def _check_pairs(**lists: object) -> tuple[list[str], ...]:
    """Each argument a non-empty list of str, all of the same length."""
    checked = {name: _check_texts(name, value) for name, value in lists.items()}
    lengths = {name: len(v) for name, v in checked.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{n} has {k}" for n, k in lengths.items())
        raise ValueError(f"{', '.join(lengths)} must have the same length, got: {detail}")
    return tuple(checked.values())
