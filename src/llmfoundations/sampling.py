"""Sampling: how next-token logits become a chosen token, and how whole sequences are searched.

A language model ends every step with a vector of logits, one per vocabulary entry.
This module holds the decisions made after that point:

- Logits processors, pure functions ``(B, V) -> (B, V)`` that return new logits with
  the removed tokens set to ``-inf`` (the input is never modified):
  :func:`apply_temperature`, :func:`top_k_filter`, :func:`top_p_filter`
  (nucleus), :func:`min_p_filter` and :func:`repetition_penalty` (CTRL). Each one
  keeps exactly the tokens that the matching Hugging Face ``transformers``
  processor keeps; the tests hold them together, ties and extreme values included.
- Choosing one token: :func:`greedy` (argmax) and :func:`sample` (processors, then
  a draw from the softmax), and :class:`SamplingConfig`, which bundles the settings
  so that a generation loop only has to call ``config.choose(logits, ids, generator)``.
- Searching for a whole sequence: :func:`beam_search` (with length penalty and
  end-of-sequence handling), :func:`best_of_n` with any scorer, and the default
  scorer :func:`sequence_logprob`.
- Two small measures of the output used in the decoding lab: :func:`distinct_n`
  (diversity across texts) and :func:`repetition_rate` (repetition inside one text).

The order of the processors is the one ``transformers`` uses: repetition penalty on
the raw logits, then temperature, then top-k, then top-p, then min-p. Temperature comes
first so that the top-p and min-p thresholds are measured on the distribution that is
actually sampled from; each later filter sees the distribution renormalised over the
tokens the earlier ones kept.

Probabilities are computed in at least float32 (a float16 or bfloat16 softmax summed
over a 50k vocabulary loses too much); float32 and float64 logits give bit-for-bit the
same keep-sets as ``transformers``.

Checks: every public function validates its arguments (and that the logits hold no NaN or
+inf) and then calls an unchecked core (``_top_p_filter`` for ``top_p_filter``, ...).
:meth:`SamplingConfig.choose` validates once and runs the cores, and a generation loop
calls :meth:`SamplingConfig.choose_unchecked`, so a token costs one check, not one per
processor.

Left out: typical, epsilon, eta and top-h sampling, mirostat, contrastive search,
frequency/presence penalties, no-repeat-n-gram blocking, logit bias, a configurable
``filter_value`` (removed tokens are always ``-inf``), ``transformers``'
``prompt_ignore_length``, diverse (group) and constrained beam search, sampling inside
beam search, and a KV cache in :func:`beam_search` (``step_fn`` sees the whole prefix
every step; the cached generation loop is in the ``generate`` module).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from llmfoundations._validate import (
    check_int,
    check_positive,
    check_probability,
    check_same_device,
    check_tensor,
)

__all__ = [
    "apply_temperature",
    "top_k_filter",
    "top_p_filter",
    "min_p_filter",
    "repetition_penalty",
    "greedy",
    "sample",
    "SamplingConfig",
    "Hypothesis",
    "beam_search",
    "sequence_logprob",
    "BestOfN",
    "best_of_n",
    "distinct_n",
    "repetition_rate",
]

NEG_INF = float("-inf")


# ------------------------------------------------------------------------------- checks



def _check_logits(logits: object, name: str = "logits") -> Tensor:
    """Logits must be a non-empty float (B, V) tensor, free of NaN and +inf, and every
    row must keep at least one finite value (else its softmax is NaN)."""
    check_tensor(name, logits, ndim=2, floating=True, nonempty=True)
    assert isinstance(logits, Tensor)
    # One cheap pass: a row's max is NaN if it holds a NaN, +inf if it holds +inf,
    # and -inf if every entry is -inf. Only then look closer, to say which.
    row_max = logits.amax(dim=-1)  # (B,)
    if not torch.isfinite(row_max).all():
        if torch.isnan(logits).any() or torch.isposinf(logits).any():
            raise ValueError(f"{name} must not contain NaN or +inf")
        row = int(torch.isneginf(row_max).nonzero()[0, 0])
        raise ValueError(f"{name} row {row} is all -inf: no token is left to choose")
    return logits


def _check_generator(generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        kind = type(generator).__name__
        raise TypeError(f"generator must be a torch.Generator or None, got {kind}")


def _prob_dtype(x: Tensor) -> torch.dtype:
    """float32 for half-precision logits, the logits' own dtype otherwise."""
    return torch.promote_types(x.dtype, torch.float32)


def _softmax(logits: Tensor) -> Tensor:
    return logits.softmax(dim=-1, dtype=_prob_dtype(logits))


# --------------------------------------------------------------------------- processors


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Divide the logits by ``temperature``: ``softmax(z / T)``.

    ``T < 1`` sharpens the distribution, ``T > 1`` flattens it, ``T = 1`` leaves it as is.
    ``T = 0`` is the limit of ever smaller temperatures: all the probability goes to the
    largest logit, so the result keeps only the argmax of each row (its logit unchanged,
    every other entry ``-inf``; on ties the first index wins, as with ``torch.argmax``).
    Sampling from that is greedy decoding. ``transformers`` refuses ``T = 0`` instead.

    >>> apply_temperature(torch.tensor([[2.0, 1.0]]), 0.5)
    tensor([[4., 2.]])
    >>> apply_temperature(torch.tensor([[1.0, 3.0, 3.0]]), 0)
    tensor([[-inf, 3., -inf]])
    """
    check_positive("temperature", temperature, allow_zero=True)
    return _apply_temperature(_check_logits(logits), temperature)


def _apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    # The core of apply_temperature, unchecked (see "Checks" in the module docstring).
    if temperature == 0:
        best = logits.argmax(dim=-1, keepdim=True)  # (B, 1), first index on ties
        only_best = torch.full_like(logits, NEG_INF)
        return only_best.scatter(-1, best, logits.gather(-1, best))
    return logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of each row (Fan et al., 2018, arXiv:1805.04833).

    Every token whose logit is at least the k-th largest value is kept, so ties at the
    boundary can keep more than ``k`` tokens (``[3, 2, 2, 1]`` with ``k=2`` keeps three);
    this is ``transformers``' ``TopKLogitsWarper``. ``k`` larger than the vocabulary keeps
    everything.

    >>> top_k_filter(torch.tensor([[3.0, 2.0, 2.0, 1.0]]), 2)
    tensor([[3., 2., 2., -inf]])
    """
    check_int("k", k, minimum=1)
    return _top_k_filter(_check_logits(logits), k)


def _top_k_filter(logits: Tensor, k: int) -> Tensor:
    # The core of top_k_filter, unchecked.
    k = min(k, logits.shape[-1])
    kth_largest = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_largest, NEG_INF)


def top_p_filter(logits: Tensor, p: float, min_tokens_to_keep: int = 1) -> Tensor:
    """Nucleus filtering (Holtzman et al., 2019, arXiv:1904.09751).

    Keep the smallest set of most likely tokens whose probabilities add up to at least
    ``p``. Computed from the other end, as ``transformers``' ``TopPLogitsWarper`` does:
    sort the tokens from least to most likely and drop them while the dropped *tail*
    holds at most ``1 - p`` of the probability. The kept mass is then at least ``p``,
    and keeping one token fewer would fall below ``p``.

    Boundary and ties, exactly as in ``transformers``:

    - a tail of mass exactly ``1 - p`` is dropped (``<=``), so the kept mass may equal ``p``;
    - tokens with equal logits are ordered by ``torch.sort`` (not a stable sort), so when
      the cut falls inside a group of tied tokens, some of them are kept and some are not;
    - with ``p = 1`` the tokens whose probability underflows to exactly 0 are dropped;
    - the ``min_tokens_to_keep`` most likely tokens are never dropped.

    >>> top_p_filter(torch.tensor([[0.1, 0.2, 0.3, 0.4]]).log(), 0.6)  # 0.4 + 0.3 >= 0.6
    tensor([[   -inf,    -inf, -1.2040, -0.9163]])
    """
    check_probability("p", p)
    check_int("min_tokens_to_keep", min_tokens_to_keep, minimum=1)
    return _top_p_filter(_check_logits(logits), p, min_tokens_to_keep)


def _top_p_filter(logits: Tensor, p: float, min_tokens_to_keep: int) -> Tensor:
    # The core of top_p_filter, unchecked.
    sorted_logits, order = torch.sort(logits, dim=-1)  # (B, V), least likely first
    tail_mass = _softmax(sorted_logits).cumsum(dim=-1)  # (B, V): this token and all below it
    drop_sorted = tail_mass <= 1 - p
    drop_sorted[:, -min_tokens_to_keep:] = False  # the most likely tokens always stay
    drop = torch.empty_like(drop_sorted).scatter(-1, order, drop_sorted)  # vocabulary order
    return logits.masked_fill(drop, NEG_INF)


def min_p_filter(logits: Tensor, p: float, min_tokens_to_keep: int = 1) -> Tensor:
    """Min-p filtering (Nguyen et al., 2024, arXiv:2407.01082).

    Keep the tokens whose probability is at least ``p`` times the probability of the most
    likely token. The cut adapts to the model's confidence: a peaked distribution keeps
    few tokens, a flat one keeps many. ``p = 0`` keeps everything, ``p = 1`` only the
    tokens tied with the maximum. The ``min_tokens_to_keep`` most likely tokens (chosen by
    ``torch.topk``) always stay. Same keep-set as ``transformers``' ``MinPLogitsWarper``.

    >>> min_p_filter(torch.tensor([[4.0, 2.0, 1.0]]).log(), 0.4)  # probs 4/7, 2/7, 1/7
    tensor([[1.3863, 0.6931,   -inf]])
    """
    check_probability("p", p, low_open=False)
    check_int("min_tokens_to_keep", min_tokens_to_keep, minimum=1)
    return _min_p_filter(_check_logits(logits), p, min_tokens_to_keep)


def _min_p_filter(logits: Tensor, p: float, min_tokens_to_keep: int) -> Tensor:
    # The core of min_p_filter, unchecked.
    probs = _softmax(logits)  # (B, V)
    threshold = p * probs.amax(dim=-1, keepdim=True)  # (B, 1)
    drop = probs < threshold
    k = min(min_tokens_to_keep, logits.shape[-1])
    keep_anyway = torch.topk(probs, k, dim=-1).indices  # (B, k)
    drop = drop.scatter(-1, keep_anyway, False)
    return logits.masked_fill(drop, NEG_INF)


def repetition_penalty(
    logits: Tensor, input_ids: Tensor, penalty: float
) -> Tensor:
    """CTRL's repetition penalty (Keskar et al., 2019, arXiv:1909.05858).

    Every token that occurs in ``input_ids`` (B, T) gets its logit pushed down: a positive
    logit is divided by ``penalty``, a negative one multiplied by it (dividing a negative
    logit would raise it). A token is penalised once, however often it occurs; the other
    tokens are untouched. ``penalty > 1`` discourages repetition, ``penalty < 1``
    encourages it, ``1`` does nothing. The paper suggests about 1.2.

    ``input_ids`` usually holds the prompt too, so prompt words are penalised as well.
    Unlike ``transformers``, which silently ignores ids outside the vocabulary, an id
    outside ``[0, V)`` raises a ``ValueError`` here.

    >>> repetition_penalty(torch.tensor([[2.0, -2.0, 2.0]]), torch.tensor([[0, 1, 1]]), 2.0)
    tensor([[ 1., -4.,  2.]])
    """
    check_positive("penalty", penalty)
    _check_logits(logits)
    _check_penalty_ids(input_ids, logits)
    return _repetition_penalty(logits, input_ids, penalty)


def _check_penalty_ids(input_ids: object, logits: Tensor) -> None:
    """``input_ids`` (B, T) long, one row per row of ``logits``, every id in ``[0, V)``."""
    check_tensor("input_ids", input_ids, ndim=2, dtype=torch.long)
    check_same_device(logits=logits, input_ids=input_ids)
    batch, vocab = logits.shape
    if input_ids.shape[0] != batch:
        raise ValueError(
            f"input_ids must have one row per row of logits ({batch}), "
            f"got shape {tuple(input_ids.shape)}"
        )
    if input_ids.numel() > 0:
        low, high = torch.stack([input_ids.min(), input_ids.max()]).tolist()  # one sync
        if low < 0 or high >= vocab:
            raise ValueError(f"input_ids must lie in [0, {vocab}), got values from {low} to {high}")


def _repetition_penalty(logits: Tensor, input_ids: Tensor, penalty: float) -> Tensor:
    # The core of repetition_penalty, unchecked.
    if input_ids.numel() == 0:
        return logits.clone()
    seen = logits.gather(-1, input_ids)  # (B, T): logit of each token already in the text
    penalised = torch.where(seen < 0, seen * penalty, seen / penalty)  # (B, T)
    return logits.scatter(-1, input_ids, penalised)  # repeated ids write the same value


# --------------------------------------------------------------------- choosing a token


def greedy(logits: Tensor) -> Tensor:
    """The most likely token of each row: ``(B, V) -> (B,)`` long; first index on ties.

    >>> greedy(torch.tensor([[0.1, 2.0, 2.0], [5.0, 0.0, 1.0]]))
    tensor([1, 0])
    """
    return _check_logits(logits).argmax(dim=-1)


@dataclass(frozen=True)
class SamplingConfig:
    """How a generation loop turns each step's logits into the next token (frozen: make a
    variant with ``dataclasses.replace(config, top_p=0.8)``, which validates it again).

    Attributes:
        temperature: ``> 0`` divides the logits; ``0`` means greedy.
        top_k: keep the ``top_k`` most likely tokens (``None``: off).
        top_p: nucleus threshold in ``(0, 1]`` (``None``: off).
        min_p: min-p threshold in ``[0, 1]`` (``None``: off).
        repetition_penalty: CTRL penalty ``> 0`` for tokens already in the sequence
            (``None``: off). Applies to greedy decoding too.
        do_sample: ``False`` decodes greedily (after the repetition penalty) and ignores
            temperature, top-k, top-p and min-p, as ``transformers`` does.

    A generation loop calls ``config.choose(next_logits, ids_so_far, generator)``.

    >>> cfg = SamplingConfig(temperature=0.7, top_p=0.9)
    >>> g = torch.Generator().manual_seed(0)
    >>> cfg.choose(torch.tensor([[5.0, 1.0, 0.0]]), torch.tensor([[2]]), g)
    tensor([0])
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    do_sample: bool = True

    def __post_init__(self) -> None:
        check_positive("temperature", self.temperature, allow_zero=True)
        if self.top_k is not None:
            check_int("top_k", self.top_k, minimum=1)
        if self.top_p is not None:
            check_probability("top_p", self.top_p)
        if self.min_p is not None:
            check_probability("min_p", self.min_p, low_open=False)
        if self.repetition_penalty is not None:
            check_positive("repetition_penalty", self.repetition_penalty)
        if not isinstance(self.do_sample, bool):
            raise TypeError(f"do_sample must be a bool, got {type(self.do_sample).__name__}")

    @property
    def is_greedy(self) -> bool:
        """True when :meth:`choose` never draws at random."""
        return not self.do_sample or self.temperature == 0

    def process(self, logits: Tensor, input_ids: Tensor | None = None) -> Tensor:
        """Apply the configured processors in order; returns new (B, V) logits.

        Order: repetition penalty, temperature, top-k, top-p, min-p (only the first when
        ``do_sample`` is False). ``input_ids`` (B, T) is needed only for the penalty.
        """
        self._check_inputs(logits, input_ids)
        return self._process(logits, input_ids)

    def _check_inputs(self, logits: object, input_ids: object) -> None:
        _check_logits(logits)
        if self.repetition_penalty is not None:
            if input_ids is None:
                raise ValueError("input_ids is required when repetition_penalty is set, got None")
            _check_penalty_ids(input_ids, logits)

    def _process(self, logits: Tensor, input_ids: Tensor | None) -> Tensor:
        # process() without its checks: the processors' cores, in order.
        if self.repetition_penalty is not None:
            logits = _repetition_penalty(logits, input_ids, self.repetition_penalty)
        if not self.do_sample:
            return logits
        if self.temperature != 1:
            logits = _apply_temperature(logits, self.temperature)
        if self.top_k is not None:
            logits = _top_k_filter(logits, self.top_k)
        if self.top_p is not None:
            logits = _top_p_filter(logits, self.top_p, 1)
        if self.min_p is not None:
            logits = _min_p_filter(logits, self.min_p, 1)
        return logits

    def choose(
        self,
        logits: Tensor,
        input_ids: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Process ``logits`` (B, V) and pick one token per row: (B,) long.

        Greedy when ``do_sample`` is False or the temperature is 0; otherwise one draw
        per row from the softmax of the processed logits, reproducible with a seeded
        ``generator``.
        """
        _check_generator(generator)
        self._check_inputs(logits, input_ids)
        return self.choose_unchecked(logits, input_ids, generator)

    def choose_unchecked(
        self,
        logits: Tensor,
        input_ids: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """:meth:`choose` without its argument checks, for loops whose inputs are valid by
        construction (``generate`` checks the model's logits once per step, all rows
        together, and its ids are in range by construction). Invalid input here gives
        torch's errors or a wrong token, never a clear message: call :meth:`choose`.
        """
        processed = self._process(logits, input_ids)  # (B, V)
        if self.is_greedy:
            return processed.argmax(dim=-1)  # (B,) first index on ties
        probs = _softmax(processed)  # (B, V), zero where filtered
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


def sample(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row of ``logits`` (B, V): (B,) long.

    Temperature, then top-k, then top-p, then min-p (see the module docstring for why),
    then a draw from the softmax of what is left. ``temperature=0`` returns
    :func:`greedy`. A seeded ``torch.Generator`` makes the draw reproducible.

    >>> g = torch.Generator().manual_seed(0)
    >>> sample(torch.tensor([[0.0, 0.0, 9.0]]), top_k=1, generator=g)
    tensor([2])
    """
    config = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    return config.choose(logits, generator=generator)


# -------------------------------------------------------------------------- beam search


StepFn = Callable[[Tensor], Tensor]


class Hypothesis(NamedTuple):
    """A finished beam: ``sequence`` (prompt + generated tokens, 1-D long) and ``score``
    (sum of the generated tokens' log-probabilities / number generated ** length_penalty)."""

    sequence: Tensor
    score: float


def _call_step_fn(step_fn: StepFn, ids: Tensor, vocab: int | None) -> Tensor:
    """Run ``step_fn`` on ``ids`` (N, T) and check it returned (N, V) float logits."""
    with torch.no_grad():
        logits = step_fn(ids)
    _check_logits(logits, name="step_fn output")  # (N, V) float, no NaN / +inf
    n = ids.shape[0]
    if logits.shape[0] != n or (vocab is not None and logits.shape[1] != vocab):
        want = f"({n}, {vocab if vocab is not None else 'V'})"
        raise ValueError(f"step_fn output must have shape {want}, got {tuple(logits.shape)}")
    return logits


@dataclass
class _Beams:
    """The search state of one prompt.

    ``running`` (n, T') holds the live partial sequences (prompt included) and
    ``logprob`` (n,) their summed log-probabilities; ``finished`` keeps the best
    ``num_beams`` hypotheses found so far, best first.
    """

    running: Tensor
    logprob: Tensor
    finished: list[Hypothesis]
    prompt_len: int
    num_beams: int
    max_new_tokens: int
    length_penalty: float
    eos_token_id: int | None

    def score(self, logprob: float, n_generated: int) -> float:
        return logprob / n_generated**self.length_penalty

    def finish(self, sequence: Tensor, logprob: float) -> None:
        n_generated = sequence.shape[0] - self.prompt_len
        self.finished.append(Hypothesis(sequence, self.score(logprob, n_generated)))
        self.finished.sort(key=lambda h: h.score, reverse=True)  # stable: earlier wins ties
        del self.finished[self.num_beams :]

    def best_possible(self, logprob: float, n_generated: int) -> float:
        """Upper bound on the final score of a running beam with this ``logprob <= 0``.

        It can only lose log-probability, and it will end with a length in
        ``[n_generated + 1, max_new_tokens]``; a negative number divided by the largest
        ``length ** length_penalty`` in that range is the bound.
        """
        longest = self.length_penalty > 0
        return self.score(logprob, self.max_new_tokens if longest else n_generated + 1)

    def advance(self, logprobs: Tensor, step: int) -> bool:
        """Extend the beams by one token given ``logprobs`` (n, V) of the next token.

        Returns whether this prompt still needs more steps.
        """
        vocab = logprobs.shape[1]
        last_step = step == self.max_new_tokens
        total = self.logprob[:, None] + logprobs  # (n, V) score of every one-token extension
        flat = rearrange(total, "n v -> (n v)")
        # 2 * num_beams candidates: at most n <= num_beams of them end, so enough stay live.
        top = torch.topk(flat, min(2 * self.num_beams, flat.numel()))
        keep_beam, keep_token, keep_logprob = [], [], []
        ranked = zip(top.values.tolist(), top.indices.tolist(), strict=True)
        for rank, (logprob, index) in enumerate(ranked):
            if logprob == NEG_INF or len(keep_beam) == self.num_beams:
                break
            beam, token = divmod(index, vocab)
            if last_step or token == self.eos_token_id:
                if rank < self.num_beams:  # only the num_beams best candidates may finish
                    token_t = self.running.new_tensor([token])
                    self.finish(torch.cat([self.running[beam], token_t]), logprob)
                continue
            keep_beam.append(beam)
            keep_token.append(token)
            keep_logprob.append(logprob)
        if last_step or not keep_beam:
            return False
        new_tokens = self.running.new_tensor(keep_token)[:, None]  # (n', 1)
        self.running = torch.cat([self.running[keep_beam], new_tokens], dim=1)  # (n', T' + 1)
        self.logprob = self.logprob.new_tensor(keep_logprob)  # (n',)
        if len(self.finished) < self.num_beams:
            return True
        return self.best_possible(keep_logprob[0], step) > self.finished[-1].score


def beam_search(
    step_fn: StepFn,
    input_ids: Tensor,
    num_beams: int,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    length_penalty: float = 1.0,
) -> list[list[Hypothesis]]:
    """Beam search: keep the ``num_beams`` best partial sequences at every step.

    Args:
        step_fn: ``ids (N, T') -> logits (N, V)`` for the next token after each row (a
            model wrapper such as ``lambda ids: model(ids)[:, -1]``; no cache needed).
            The beams of all prompts go through it together, one call per step.
        input_ids: (B, T) prompts; each row is searched on its own.
        num_beams: beams kept per prompt (1 is greedy decoding).
        max_new_tokens: the most tokens generated per hypothesis.
        eos_token_id: token that ends a hypothesis (``None``: every hypothesis runs to
            ``max_new_tokens``).
        length_penalty: the exponent ``alpha`` in the score
            ``sum of log-probs / (generated tokens) ** alpha``. The count includes the
            end token and excludes the prompt (as in ``transformers``). ``0`` ranks by raw
            log-probability, which favours short hypotheses; ``1`` by the average.

    Returns:
        For each prompt, up to ``num_beams`` :class:`Hypothesis` ``(sequence, score)``,
        best first; ``sequence`` is the prompt followed by the generated tokens.
        ``best_ids, best_score = beam_search(f, ids, 4, 20)[0][0]``.

    Each step extends every running beam by every token and ranks the candidates by
    summed log-probability. The end token is only accepted from the ``num_beams`` best
    candidates; such a hypothesis joins the finished set, which keeps the ``num_beams``
    best by score, and the best non-ending candidates become the next beams. At the
    last step the ``num_beams`` best candidates all finish. A prompt's search stops
    early only when no running beam can still beat the worst kept finished hypothesis:
    an exact test (``transformers``' ``early_stopping="never"``; its default uses a
    cheaper guess that may stop sooner). Log-probabilities are summed in float32 (or in
    float64 for float64 logits).
    """
    check_tensor("input_ids", input_ids, ndim=2, dtype=torch.long, nonempty=True)
    check_int("num_beams", num_beams, minimum=1)
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    if eos_token_id is not None:
        check_int("eos_token_id", eos_token_id, minimum=0)
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
        raise TypeError(f"length_penalty must be a number, got {type(length_penalty).__name__}")
    if not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be finite, got {length_penalty}")

    searches = [
        _Beams(
            running=row[None],  # (1, T): one beam to start with, so no duplicates
            logprob=torch.zeros(1),
            finished=[],
            prompt_len=input_ids.shape[1],
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            length_penalty=float(length_penalty),
            eos_token_id=eos_token_id,
        )
        for row in input_ids
    ]
    active = searches
    vocab: int | None = None
    for step in range(1, max_new_tokens + 1):
        ids = torch.cat([s.running for s in active])  # (N, T') the beams of every prompt
        logits = _call_step_fn(step_fn, ids, vocab)  # (N, V)
        if vocab is None:
            vocab = logits.shape[1]
            if eos_token_id is not None and eos_token_id >= vocab:
                raise ValueError(
                    f"eos_token_id must be < the vocabulary size {vocab}, got {eos_token_id}"
                )
            for s in searches:
                s.logprob = s.logprob.to(device=logits.device, dtype=_prob_dtype(logits))
        logprobs = F.log_softmax(logits, dim=-1, dtype=_prob_dtype(logits))  # (N, V)
        per_prompt = logprobs.split([s.running.shape[0] for s in active])  # n_b rows each
        active = [s for s, lp in zip(active, per_prompt, strict=True) if s.advance(lp, step)]
        if not active:
            break
    return [s.finished for s in searches]


# --------------------------------------------------------------------------- best-of-N


def sequence_logprob(
    model: Callable[[Tensor], Tensor], ids: Tensor, prompt_len: int
) -> Tensor:
    """Sum of the log-probabilities of ``ids[:, prompt_len:]`` given what precedes them.

    ``model`` is either a full model, ``ids (B, T) -> logits (B, T, V)`` (one forward
    pass, teacher forcing), or a ``step_fn`` as in :func:`beam_search`,
    ``ids (B, T) -> logits (B, V)`` for the next token only (then one call per scored
    token). Which one is told by the rank of what it returns. Returns (B,) in the
    log-probabilities' dtype (at least float32). A sum favours short continuations;
    divide by the number of scored tokens for a per-token average.
    """
    check_tensor("ids", ids, ndim=2, dtype=torch.long, nonempty=True)
    check_int("prompt_len", prompt_len, minimum=1)
    batch, length = ids.shape
    if prompt_len > length:
        raise ValueError(f"prompt_len must be <= the sequence length {length}, got {prompt_len}")
    if prompt_len == length:
        return torch.zeros(batch, device=ids.device)
    out = model(ids[:, :-1])
    check_tensor("model output", out, ndim=(2, 3), floating=True)
    targets = ids[:, prompt_len:]  # (B, G) the scored tokens
    if out.ndim == 3:  # (B, T - 1, V): position t predicts token t + 1
        if out.shape[:2] != (batch, length - 1):
            raise ValueError(
                f"model output must have shape ({batch}, {length - 1}, V), got {tuple(out.shape)}"
            )
        logits = out[:, prompt_len - 1 :]  # (B, G, V)
    else:  # (B, V): the prediction for the last token; the earlier ones need more calls
        if out.shape[0] != batch:
            raise ValueError(f"model output must have shape ({batch}, V), got {tuple(out.shape)}")
        earlier = [model(ids[:, :t]) for t in range(prompt_len, length - 1)]  # each (B, V)
        logits = torch.stack([*earlier, out], dim=1)  # (B, G, V)
    logprobs = F.log_softmax(logits, dim=-1, dtype=_prob_dtype(logits))  # (B, G, V)
    picked = logprobs.gather(-1, targets[..., None]).squeeze(-1)  # (B, G)
    return picked.sum(dim=-1)  # (B,)


@dataclass
class BestOfN:
    """What :func:`best_of_n` saw: the winner and every candidate with its score."""

    sequence: Tensor
    score: float
    candidates: list[Tensor]
    scores: list[float]


def best_of_n(
    generate_fn: Callable[[], Tensor],
    n: int,
    scorer: Callable[[Tensor], float | Tensor] | None = None,
    *,
    model: Callable[[Tensor], Tensor] | None = None,
    prompt_len: int | None = None,
) -> BestOfN:
    """Generate ``n`` candidates and return the one the scorer likes best.

    ``generate_fn()`` returns one 1-D sequence (say, a sampled continuation with the
    prompt in front); it is called ``n`` times, so it should sample (a fixed seeded
    generator inside gives ``n`` different, reproducible draws). ``scorer(sequence)``
    returns a number, higher is better: a reward model, a test that runs generated code,
    a length-normalised log-probability... Without one, the score is the sequence's
    log-probability under ``model`` (:func:`sequence_logprob` from ``prompt_len`` on).
    The first candidate wins ties.
    """
    check_int("n", n, minimum=1)
    if scorer is None:
        if model is None or prompt_len is None:
            raise ValueError("best_of_n needs a scorer, or a model and prompt_len for the default")
        check_int("prompt_len", prompt_len, minimum=1)

        def score_fn(sequence: Tensor) -> float | Tensor:
            with torch.no_grad():
                return sequence_logprob(model, sequence[None], prompt_len)[0]

    elif callable(scorer):
        score_fn = scorer
    else:
        raise TypeError(f"scorer must be callable, got {type(scorer).__name__}")
    candidates: list[Tensor] = []
    scores: list[float] = []
    for i in range(n):
        sequence = generate_fn()
        check_tensor(f"generate_fn() result {i}", sequence, ndim=1, nonempty=True)
        score = float(score_fn(sequence))
        if math.isnan(score):
            raise ValueError(f"scorer returned NaN for candidate {i}")
        candidates.append(sequence)
        scores.append(score)
    best = max(range(n), key=lambda i: scores[i])  # first index on ties
    return BestOfN(candidates[best], scores[best], candidates, scores)


# ---------------------------------------------------------------------------- diversity


Tokens = str | Sequence[int] | Sequence[str] | Tensor


def _as_tokens(name: str, text: object) -> tuple:
    """A string is split on whitespace; a 1-D tensor or a sequence is taken as tokens."""
    if isinstance(text, str):
        return tuple(text.split())
    if isinstance(text, Tensor):
        check_tensor(name, text, ndim=1)
        return tuple(text.tolist())
    if isinstance(text, Sequence):
        return tuple(text)
    kind = type(text).__name__
    raise TypeError(f"{name} must be a str, a sequence of tokens or a 1-D tensor, got {kind}")


def _ngrams(tokens: tuple, n: int) -> list[tuple]:
    return [tokens[i : i + n] for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[Tokens], n: int) -> float:
    """Distinct-n (Li et al., 2016, arXiv:1510.03055): distinct n-grams / all n-grams.

    Pooled over all ``texts`` (n-grams do not cross from one text into the next), so it
    measures how varied a set of generations is: 1.0 when no n-gram occurs twice, near 0
    when every output says the same thing. Strings are split on whitespace; token-id
    lists and 1-D tensors are used as they are. Returns 0.0 when no text has ``n`` tokens.

    >>> distinct_n(["the cat sat", "the cat ran"], 2)
    0.75
    """
    check_int("n", n, minimum=1)
    if isinstance(texts, (str, Tensor)) or not isinstance(texts, Sequence):
        raise TypeError(
            f"texts must be a list of texts or token sequences, got {type(texts).__name__}"
            " (wrap a single text in a list)"
        )
    grams = [g for i, t in enumerate(texts) for g in _ngrams(_as_tokens(f"texts[{i}]", t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(tokens: Tokens, n: int) -> float:
    """Share of the n-grams of one text that repeat an n-gram seen earlier in it.

    ``1 - distinct / total`` within the text: 0.0 for no repetition, close to 1 for a
    degenerate loop such as "the the the the". A string is split on whitespace. Returns
    0.0 when the text has fewer than ``n`` tokens.

    >>> repetition_rate("a b a b a b", 2)
    0.6
    """
    check_int("n", n, minimum=1)
    grams = _ngrams(_as_tokens("tokens", tokens), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0
