"""Speculative decoding: a small draft model guesses, the large target model checks.

Decoding one token at a time leaves a large model mostly waiting on memory: each step
reads every weight to produce one token. Scoring ``γ + 1`` tokens in one pass costs about
the same as scoring one. Speculative decoding (Leviathan, Kalman and Matias, 2023,
https://arxiv.org/abs/2211.17192; Chen et al., 2023, https://arxiv.org/abs/2302.01318)
uses that: a cheap *draft* model proposes ``γ`` tokens ``x_1 .. x_γ`` one by one (from its
distributions ``q_1 .. q_γ``), the *target* reads them all in one forward pass and gets
its own distributions ``p_1 .. p_{γ+1}`` at the same positions, and then, left to right:

- accept ``x_i`` with probability ``min(1, p_i(x_i) / q_i(x_i))``;
- at the first rejection, draw the replacement from the residual
  ``normalize(max(0, p_i - q_i))`` and end the round;
- if all ``γ`` are accepted, draw a bonus token from ``p_{γ+1}``.

Each round costs one target pass and yields between 1 and ``γ + 1`` tokens, and the
tokens follow the target's distribution *exactly*. For one position, summing over the
two paths (the draft's ``x`` accepted, or rejected and replaced)::

    P(out = x) = q(x) min(1, p(x)/q(x)) + (1 - sum_y min(p(y), q(y))) r(x)
               = min(p(x), q(x)) + max(0, p(x) - q(x)) = p(x)

since ``r = max(0, p - q) / sum_y max(0, p(y) - q(y))`` and ``1 - sum min(p, q) = sum
max(0, p - q)``. The chance to accept is ``α = sum_x min(p(x), q(x)) = 1 - TV(p, q)``;
with a constant ``α`` a round yields ``(1 - α^(γ+1)) / (1 - α)`` tokens on average
(Leviathan et al., eq. 1). Greedy decoding is the limit case: accept while the draft's
token is the target's argmax, then take the target's argmax; the output is exactly the
target's own greedy output (up to float near-ties: the target scores several positions in
one pass, whose rounding differs from one-token passes).

Exactness needs ``q`` to be the distribution the draft *actually sampled from* and ``p``
the distribution the target *would sample from*: temperature, top-k, top-p and min-p are
applied to both before the rule (transformers#32867 and PR #33534: a greedy draft with a
sampling target broke this).

The KV caches. Both models keep a ``kv_cache.KVCache``; its ``length`` is a plain int,
and ``crop(n)`` forgets everything after position ``n`` without touching the buffers.
The target's cache holds every committed token but the last; a round feeds it the
missing committed tokens plus the ``γ`` drafts, and afterwards is cropped to the
committed prefix (rejected drafts are dropped; the replacement or bonus token is fed
next round). The first round feeds the whole prompt, so the prefill is the first
verification pass. The draft's cache is cropped the same way.

This module holds:

- the rule on probabilities: ``accept_probability(p, q, tokens)``,
  ``residual_distribution(p, q)``, ``speculative_sample_step(p, q, draft_tokens)`` (one
  draft token per row, vectorised over independent rows), and its exact output
  distribution ``speculative_step_distribution(p, q)`` (the sum over the two paths, equal
  to ``p``; for tests and labs);
- ``expected_acceptance(p, q)`` (``sum min(p, q)``) and ``expected_tokens_per_round(alpha,
  γ)``;
- ``PromptLookupDraft``: a drafter without a model (below);
- ``speculative_generate(target, draft, input_ids, max_new_tokens, num_draft_tokens,
  sampling)`` -> ``SpeculativeOutput``: the tokens and the statistics (acceptance rate,
  tokens per target forward pass). ``draft`` is a model or a ``PromptLookupDraft``.

Prompt lookup (Saxena, 2023, https://github.com/apoorvumang/prompt-lookup-decoding;
transformers' ``prompt_lookup_num_tokens``). When the output copies from its input
(editing a text, extracting from a document, rewriting code), the next tokens are often
already in the context. The drafter takes the last ``n`` committed tokens, finds an
earlier place in the context where the same ``n`` tokens occur, and proposes the tokens
that followed them there (trying ``n = max_ngram_size`` down to ``min_ngram_size``;
nothing is proposed when nothing matches, and the round is then a plain decoding step).
It costs no forward pass. Its proposal is deterministic, so its ``q`` is one-hot on the
proposed token: the rule accepts ``x`` with probability ``min(1, p(x) / 1) = p(x)`` and
replaces a rejected ``x`` from ``normalize(max(0, p - e_x))``, which is ``p`` with ``x``
removed. The output is still distributed exactly as ``p``. (transformers does the same
thing another way: it samples from ``p`` at each position and keeps drafts while they
equal the samples.)

Left out: batches of more than one sequence (rows accept different numbers of drafts,
so their caches would need per-row lengths), the repetition penalty (it would change
``p`` and ``q`` with every drafted token; refused), tree and multi-draft verification
(SpecInfer, Medusa, EAGLE), n-gram tables built from other text (only the context is
searched), an adaptive ``γ``, and drafts from a different tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from llmfoundations._validate import check_int, check_same_device, check_tensor
from llmfoundations.kv_cache import KVCache
from llmfoundations.sampling import SamplingConfig, _check_generator

__all__ = [
    "accept_probability",
    "residual_distribution",
    "speculative_sample_step",
    "speculative_step_distribution",
    "expected_acceptance",
    "expected_tokens_per_round",
    "PromptLookupDraft",
    "SpeculativeOutput",
    "speculative_generate",
]

GREEDY = SamplingConfig(do_sample=False)


# ----------------------------------------------------------------------------- the rule


def _check_distributions(p: object, q: object) -> None:
    """``p`` and ``q``: (N, V) float tensors of probabilities (rows sum to 1), same shape."""
    for name, x in (("p", p), ("q", q)):
        check_tensor(name, x, ndim=2, floating=True, nonempty=True)
        assert isinstance(x, Tensor)
        sums = x.sum(dim=-1)  # (N,)
        if not bool((x >= 0).all() & ((sums - 1).abs() <= 1e-4).all()):
            raise ValueError(
                f"{name} must hold probabilities (non-negative rows summing to 1; apply "
                f"softmax to logits first), got row sums {sums.tolist()[:4]}"
            )
    assert isinstance(p, Tensor) and isinstance(q, Tensor)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape (N, V), got {tuple(p.shape)} and {tuple(q.shape)}")
    check_same_device(p=p, q=q)


def _check_draft_tokens(tokens: object, q: Tensor) -> None:
    check_tensor("draft_tokens", tokens, ndim=1, dtype=(torch.int64, torch.int32))
    assert isinstance(tokens, Tensor)
    if tokens.shape[0] != q.shape[0]:
        raise ValueError(f"draft_tokens must have N={q.shape[0]} entries, got {tokens.shape[0]}")
    if bool(((tokens < 0) | (tokens >= q.shape[1])).any()):
        raise ValueError(f"draft_tokens must lie in [0, V={q.shape[1]}), got {tokens.tolist()}")
    if bool((q.gather(-1, tokens.long()[:, None]) <= 0).any()):
        raise ValueError(
            "every draft token must have q > 0 (it was sampled from q), got a token with q = 0"
        )


def _accept_probability(p: Tensor, q: Tensor, tokens: Tensor) -> Tensor:
    """Unchecked core of :func:`accept_probability`."""
    idx = tokens.long()[:, None]  # (N, 1)
    px, qx = p.gather(-1, idx).squeeze(-1), q.gather(-1, idx).squeeze(-1)  # (N,), (N,)
    return (px / qx).clamp(max=1.0)


def accept_probability(p: Tensor, q: Tensor, tokens: Tensor) -> Tensor:
    """``min(1, p(x) / q(x))`` for each row's draft token ``x``: (N,).

    ``p`` (N, V) target and ``q`` (N, V) draft probabilities; ``tokens`` (N,) the draft's
    tokens (each must have ``q > 0``: it was drawn from ``q``).

    >>> accept_probability(torch.tensor([[0.2, 0.8]]), torch.tensor([[0.5, 0.5]]), torch.tensor([0]))
    tensor([0.4000])
    """
    _check_distributions(p, q)
    _check_draft_tokens(tokens, q)
    return _accept_probability(p, q, tokens)


def _residual_distribution(p: Tensor, q: Tensor) -> Tensor:
    """Unchecked core of :func:`residual_distribution`."""
    excess = (p - q).clamp_min(0.0)  # (N, V)
    total = excess.sum(dim=-1, keepdim=True)  # (N, 1)
    # p == q leaves nothing to correct (and a rejection cannot happen); fall back to p.
    return torch.where(total > 0, excess / total.clamp_min(torch.finfo(p.dtype).tiny), p)


def residual_distribution(p: Tensor, q: Tensor) -> Tensor:
    """``normalize(max(0, p - q))``, row by row: where a rejected draft's replacement comes
    from. A row with ``p == q`` (no excess anywhere) returns ``p``.

    >>> residual_distribution(torch.tensor([[0.2, 0.3, 0.5]]), torch.tensor([[0.4, 0.4, 0.2]]))
    tensor([[0., 0., 1.]])
    """
    _check_distributions(p, q)
    return _residual_distribution(p, q)


def _speculative_sample_step(
    p: Tensor, q: Tensor, draft_tokens: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Unchecked core of :func:`speculative_sample_step` (the generation loop calls it)."""
    u = torch.rand(draft_tokens.shape, generator=generator, device=p.device, dtype=p.dtype)
    accepted = u < _accept_probability(p, q, draft_tokens)  # (N,) P = min(1, p/q)
    replacement = torch.multinomial(_residual_distribution(p, q), 1, generator=generator)
    tokens = torch.where(accepted, draft_tokens.long(), replacement.squeeze(-1))  # (N,)
    return tokens, accepted


def speculative_sample_step(
    p: Tensor, q: Tensor, draft_tokens: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The rule for one draft token per row: returns ``(tokens, accepted)``, both (N,).

    Row ``i`` keeps ``draft_tokens[i]`` with probability ``min(1, p_i(x) / q_i(x))``
    (``u < p/q`` with ``u ~ U[0, 1)``), otherwise takes a draw from
    ``residual_distribution(p_i, q_i)``. If ``draft_tokens[i]`` was drawn from ``q_i``,
    ``tokens[i]`` is distributed exactly as ``p_i`` (see
    :func:`speculative_step_distribution`). Rows are independent (a batch of trials, or
    the ``γ`` positions of one round: the generation loop keeps the leading accepts).
    """
    _check_distributions(p, q)
    _check_draft_tokens(draft_tokens, q)
    _check_generator(generator)
    return _speculative_sample_step(p, q, draft_tokens, generator)


def speculative_step_distribution(p: Tensor, q: Tensor) -> Tensor:
    """The exact distribution (N, V) of :func:`speculative_sample_step`'s output when the
    draft token is drawn from ``q``: the sum over both paths,

        sum_x q(x) [ a(x) e_x + (1 - a(x)) r ],   a = min(1, p/q),  r = residual,

    computed from the same pieces the sampler uses. It equals ``p`` (up to rounding):
    that is the theorem, and the tests check it.

    >>> p, q = torch.tensor([[0.2, 0.3, 0.5]]), torch.tensor([[0.4, 0.4, 0.2]])
    >>> speculative_step_distribution(p, q)
    tensor([[0.2000, 0.3000, 0.5000]])
    """
    _check_distributions(p, q)
    ratio = p / q.clamp_min(torch.finfo(q.dtype).tiny)  # (N, V)
    accept = torch.where(q > 0, ratio.clamp(max=1.0), 0.0)  # (N, V): a(x), for every x
    kept = q * accept  # (N, V): x proposed and accepted
    rejected = (q * (1 - accept)).sum(dim=-1, keepdim=True)  # (N, 1): any rejection
    return kept + rejected * _residual_distribution(p, q)


def expected_acceptance(p: Tensor, q: Tensor) -> Tensor:
    """``α = sum_x min(p(x), q(x)) = 1 - TV(p, q)``: the probability that a draft token
    drawn from ``q`` is accepted, per row (N,)."""
    _check_distributions(p, q)
    return torch.minimum(p, q).sum(dim=-1)


def expected_tokens_per_round(alpha: float, num_draft_tokens: int) -> float:
    """Tokens a round yields on average with acceptance ``alpha`` at every position:
    ``(1 - α^(γ+1)) / (1 - α)`` (``γ + 1`` when ``α = 1``; Leviathan et al., eq. 1).

    >>> round(expected_tokens_per_round(0.8, 4), 4)
    3.3616
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    check_int("num_draft_tokens", num_draft_tokens, minimum=0)
    if alpha == 1:
        return float(num_draft_tokens + 1)
    return (1 - alpha ** (num_draft_tokens + 1)) / (1 - alpha)

# ----------------------------------------------------------------------------- prompt lookup


@dataclass(frozen=True)
class PromptLookupDraft:
    """A drafter without a model: propose what followed the last ``n`` tokens the previous
    time they occurred in the context (prompt and generated text).

    - ``max_ngram_size``, ``min_ngram_size``: the lengths ``n`` tried, longest first
      (transformers: ``max_matching_ngram_size``, default 2; Saxena: 3, down to 1);
    - ``match``: which earlier occurrence to copy from when there are several:
      ``"last"`` (the most recent, the default here) or ``"first"`` (the earliest, as
      transformers and Saxena do).

    Pass it as ``draft`` to :func:`speculative_generate`; ``num_draft_tokens`` caps how many
    tokens a round proposes (the continuation may be shorter, or empty).

    >>> PromptLookupDraft(max_ngram_size=2).propose([5, 6, 7, 8, 9, 5, 6], 3)
    [7, 8, 9]
    >>> PromptLookupDraft(max_ngram_size=2).propose([1, 2, 3], 3)  # no earlier match
    []
    """

    max_ngram_size: int = 3
    min_ngram_size: int = 1
    match: Literal["last", "first"] = "last"

    def __post_init__(self) -> None:
        check_int("max_ngram_size", self.max_ngram_size, minimum=1)
        check_int("min_ngram_size", self.min_ngram_size, minimum=1)
        if self.min_ngram_size > self.max_ngram_size:
            raise ValueError(
                f"min_ngram_size must be <= max_ngram_size, got {self.min_ngram_size} > "
                f"{self.max_ngram_size}"
            )
        if self.match not in ("last", "first"):
            raise ValueError(f"match must be 'last' or 'first', got {self.match!r}")

    def propose(self, context: Sequence[int] | Tensor, num_tokens: int) -> list[int]:
        """Up to ``num_tokens`` token ids continuing ``context`` (a list of ints or a 1-D
        tensor), or ``[]`` when no n-gram of the allowed sizes matches earlier on."""
        check_int("num_tokens", num_tokens, minimum=0)
        ids = context.tolist() if isinstance(context, Tensor) else list(context)
        return self._propose(torch.tensor(ids, dtype=torch.long), num_tokens).tolist()

    def _propose(self, context: Tensor, num_tokens: int) -> Tensor:
        """The search on a (L,) long tensor: returns (k,) with ``0 <= k <= num_tokens``."""
        length = context.shape[0]
        if num_tokens == 0:
            return context[:0]
        for n in range(min(self.max_ngram_size, length - 1), self.min_ngram_size - 1, -1):
            windows = context.unfold(0, n, 1)  # (L - n + 1, n): every n-gram, by start
            # Starts whose n-gram equals the suffix and is followed by at least one token
            # (the suffix itself, at start L - n, is followed by nothing: excluded).
            hits = (windows[: length - n] == context[length - n :]).all(dim=1).nonzero()  # (H, 1)
            if hits.numel():
                start = int(hits[-1 if self.match == "last" else 0, 0]) + n
                return context[start : start + num_tokens]
        return context[:0]


# ----------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class SpeculativeOutput:
    """What :func:`speculative_generate` returns.

    - ``sequences`` (1, T_prompt + n): the prompt followed by the ``n`` new tokens;
    - ``prompt_length``: ``T_prompt``;
    - ``num_target_forwards``: target forward passes (one per round; the first also
      reads the prompt);
    - ``num_draft_forwards``: draft forward passes (``γ`` per round, fewer at the end; 0
      with prompt lookup);
    - ``num_proposed``, ``num_accepted``: draft tokens proposed and accepted in all;
    - ``accepted_per_round``: drafts accepted in each round (each round adds one more
      token: the replacement or the bonus);
    - ``stopped``: whether a stop token ended generation.
    """

    sequences: Tensor
    prompt_length: int
    num_target_forwards: int
    num_draft_forwards: int
    num_proposed: int
    num_accepted: int
    accepted_per_round: tuple[int, ...]
    stopped: bool

    @property
    def new_tokens(self) -> Tensor:
        """(1, n): the generated tokens."""
        return self.sequences[:, self.prompt_length :]

    @property
    def num_new_tokens(self) -> int:
        return self.sequences.shape[1] - self.prompt_length

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed draft tokens (0.0 when nothing was proposed)."""
        return self.num_accepted / self.num_proposed if self.num_proposed else 0.0

    @property
    def tokens_per_target_forward(self) -> float:
        """New tokens per target pass: 1 for plain decoding, up to ``γ + 1`` here (0.0
        when nothing was generated)."""
        if not self.num_target_forwards:
            return 0.0
        return self.num_new_tokens / self.num_target_forwards


def _check_model(name: str, model: object) -> int:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module (a DecoderLM), got {type(model).__name__}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(vocab, int):
        raise TypeError(f"{name} must have a config with an int vocab_size (a DecoderLM)")
    return vocab


def _check_prompt(input_ids: object, vocab: int) -> Tensor:
    """A (1, T) integer tensor or a list of ints -> (1, T) long; batch size 1 only."""
    if isinstance(input_ids, Tensor):
        check_tensor("input_ids", input_ids, ndim=(1, 2), dtype=(torch.int64, torch.int32))
        ids = input_ids.long().reshape(1, -1) if input_ids.ndim == 1 else input_ids.long()
        if input_ids.ndim == 2 and input_ids.shape[0] != 1:
            raise ValueError(
                f"speculative_generate decodes one sequence (batch size 1), got input_ids of "
                f"shape {tuple(input_ids.shape)}"
            )
    elif isinstance(input_ids, Sequence) and not isinstance(input_ids, (str, bytes)):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in input_ids):
            raise TypeError("input_ids given as a list must hold ints (one prompt; batch size 1)")
        ids = torch.tensor([list(input_ids)], dtype=torch.long)
    else:
        raise TypeError(f"input_ids must be a (1, T) tensor or a list of ints, got {type(input_ids).__name__}")
    if ids.shape[1] == 0:
        raise ValueError("input_ids must hold at least one token")
    if bool(((ids < 0) | (ids >= vocab)).any()):
        raise ValueError(f"input_ids must lie in [0, vocab_size={vocab})")
    return ids


def _check_fits(name: str, model: nn.Module, total: int) -> None:
    config = model.config
    if getattr(config, "positional", None) in ("learned", "rope") and total - 1 > config.max_seq_len:
        raise ValueError(
            f"prompt length + max_new_tokens = {total} needs {total - 1} positions, more than "
            f"the {name}'s max_seq_len={config.max_seq_len}"
        )


def speculative_generate(
    target: nn.Module,
    draft: nn.Module | PromptLookupDraft,
    input_ids: Tensor | Sequence[int],
    max_new_tokens: int,
    num_draft_tokens: int = 4,
    sampling: SamplingConfig | None = None,
    *,
    stop_token_ids: int | Iterable[int] = (),
    generator: torch.Generator | None = None,
) -> SpeculativeOutput:
    """Continue one prompt by up to ``max_new_tokens`` tokens, drafting ``γ`` at a time.

    Args:
        target: the model whose distribution the output follows (a ``DecoderLM``).
        draft: a cheaper ``DecoderLM`` with the same vocabulary, or a
            :class:`PromptLookupDraft` (no model: it copies from the context).
        input_ids: one prompt, a ``(1, T)`` (or ``(T,)``) long tensor or a list of ints.
        max_new_tokens: at most this many new tokens (the last round drafts fewer so as
            not to overshoot).
        num_draft_tokens: ``γ >= 1``, tokens the draft proposes per round.
        sampling: ``None`` or a greedy config: accept while the draft's token is the
            target's argmax (the output is the target's greedy output). Otherwise the
            processors (temperature, top-k, top-p, min-p) are applied to both models'
            logits and the rejection rule keeps the output distributed as the target's
            processed distribution. The repetition penalty is refused.
        stop_token_ids: generation ends after the first of these (kept in the output).
        generator: a seeded ``torch.Generator`` on the models' device makes sampling
            reproducible.

    Both models run in eval mode under ``torch.inference_mode`` (their modes are
    restored) and must be on one device.

    >>> from llmfoundations.models import DecoderLM, ModelConfig
    >>> _ = torch.manual_seed(0)
    >>> target = DecoderLM(ModelConfig.llama(vocab_size=50))
    >>> out = speculative_generate(target, target, [1, 2, 3], max_new_tokens=6, num_draft_tokens=2)
    >>> out.num_new_tokens, out.num_target_forwards, out.acceptance_rate  # the target drafts for itself
    (6, 2, 1.0)
    >>> out = speculative_generate(target, PromptLookupDraft(), [1, 2, 3], max_new_tokens=6)
    >>> out.num_draft_forwards  # prompt lookup runs no draft model
    0
    """
    vocab = _check_model("target", target)
    lookup = isinstance(draft, PromptLookupDraft)
    draft_vocab = vocab if lookup else _check_model("draft", draft)
    if draft_vocab != vocab:
        raise ValueError(
            f"draft and target must share one vocabulary, got vocab_size {draft_vocab} (draft) "
            f"and {vocab} (target)"
        )
    check_int("max_new_tokens", max_new_tokens, minimum=0)
    check_int("num_draft_tokens", num_draft_tokens, minimum=1)
    if sampling is not None and not isinstance(sampling, SamplingConfig):
        raise TypeError(f"sampling must be a SamplingConfig or None, got {type(sampling).__name__}")
    if sampling is not None and sampling.repetition_penalty is not None:
        raise ValueError(
            "sampling.repetition_penalty is not supported: it changes p and q with every "
            "drafted token (got repetition_penalty="
            f"{sampling.repetition_penalty})"
        )
    _check_generator(generator)
    if isinstance(stop_token_ids, int) and not isinstance(stop_token_ids, bool):
        stop_token_ids = (stop_token_ids,)
    if isinstance(stop_token_ids, (str, bytes)) or not isinstance(stop_token_ids, Iterable):
        raise TypeError(f"stop_token_ids must be an int or an iterable of ints, got {type(stop_token_ids).__name__}")
    stop_ids = frozenset(stop_token_ids)
    for s in stop_ids:
        check_int("stop_token_ids", s, minimum=0)
        if s >= vocab:
            raise ValueError(f"stop_token_ids must be < vocab_size={vocab}, got {s}")
    device = next(target.parameters()).device
    if not lookup:
        assert isinstance(draft, nn.Module)
        draft_device = next(draft.parameters()).device
        if draft_device != device:
            raise ValueError(f"draft and target must be on one device, got {draft_device} and {device}")
    ids = _check_prompt(input_ids, vocab).to(device)
    _check_fits("target", target, ids.shape[1] + max_new_tokens)
    if not lookup:
        _check_fits("draft", draft, ids.shape[1] + max_new_tokens)

    modules = [target] if lookup else [target, draft]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        out = _speculative_loop(
            target, draft, ids, max_new_tokens, num_draft_tokens, sampling or GREEDY, stop_ids, generator
        )
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)
    # A clone made outside inference mode is an ordinary tensor (usable with autograd later).
    return SpeculativeOutput(**{**vars(out), "sequences": out.sequences.clone()})


@torch.inference_mode()
def _speculative_loop(
    target: nn.Module,
    draft: nn.Module | PromptLookupDraft,
    ids: Tensor,  # (1, T) the prompt
    max_new_tokens: int,
    gamma: int,
    sampling: SamplingConfig,
    stop_ids: frozenset[int],
    generator: torch.Generator | None,
) -> SpeculativeOutput:
    """The rounds, without argument checks (``speculative_generate`` made them)."""
    prompt_length = ids.shape[1]
    max_len = prompt_length + max_new_tokens
    target_cache = KVCache.for_model(target, 1, max_len)
    # The caches' lengths are ints, so the forward passes need no checks and no sync.
    target_forward = getattr(target, "forward_unchecked", target)
    lookup = draft if isinstance(draft, PromptLookupDraft) else None
    if lookup is None:
        assert isinstance(draft, nn.Module)
        draft_cache = KVCache.for_model(draft, 1, max_len)
        draft_forward = getattr(draft, "forward_unchecked", draft)
    greedy = sampling.is_greedy
    seq = ids  # (1, L) committed tokens
    n_target = n_draft = n_proposed = n_accepted = 0
    per_round: list[int] = []
    stopped = False

    while seq.shape[1] - prompt_length < max_new_tokens and not stopped:
        length = seq.shape[1]  # L
        g = min(gamma, max_new_tokens - (length - prompt_length) - 1)  # never overshoot

        # 1. The draft proposes g tokens and keeps its q's.
        if lookup is not None:
            # No model: copy from the context. The proposal is deterministic, so its q is
            # one-hot on each proposed token (it may be shorter than g, even empty).
            draft_ids = lookup._propose(seq[0], g)[None]  # (1, g') with g' <= g
            g = draft_ids.shape[1]
            if not greedy and g:
                q_rows = [torch.zeros(g, target.config.vocab_size, device=seq.device)]
                q_rows[0][torch.arange(g, device=seq.device), draft_ids[0]] = 1.0  # (g, V)
        else:
            drafts, q_rows = [], []
            feed = seq[:, draft_cache.length :]  # committed tokens it has not read yet
            for _ in range(g):
                logits = draft_forward(feed, kv_cache=draft_cache).logits[:, -1].float()  # (1, V)
                processed = sampling._process(logits, None)  # (1, V)
                if greedy:
                    token = processed.argmax(dim=-1)  # (1,)
                else:
                    q = processed.softmax(dim=-1)  # (1, V) what the draft samples from
                    token = torch.multinomial(q, 1, generator=generator).squeeze(-1)  # (1,)
                    q_rows.append(q)
                drafts.append(token)
                feed = token[:, None]  # (1, 1)
            n_draft += g
            draft_ids = torch.stack(drafts, dim=1) if drafts else seq[:, :0]  # (1, γ)

        # 2. The target reads what it has not seen plus the drafts: one pass, g + 1 scores.
        feed = torch.cat([seq[:, target_cache.length :], draft_ids], dim=1)
        logits = target_forward(feed, kv_cache=target_cache).logits[0, -(g + 1) :].float()
        processed = sampling._process(logits, None)  # (γ+1, V)
        n_target += 1

        # 3. Accept a prefix of the drafts, then one token from the target.
        if greedy:
            choice = processed.argmax(dim=-1)  # (γ+1,) the target's own picks
            matches = draft_ids[0] == choice[:g]  # (γ,)
            n = int(matches.long().cumprod(dim=0).sum())  # leading agreements (one sync)
            extra = choice[n : n + 1]  # the correction, or the bonus if n == g
        else:
            p = processed.softmax(dim=-1)  # (γ+1, V)
            if g:
                q = torch.cat(q_rows, dim=0)  # (γ, V)
                tokens, accepted = _speculative_sample_step(p[:g], q, draft_ids[0], generator)
                n = int(accepted.long().cumprod(dim=0).sum())  # leading accepts (one sync)
            else:
                n = 0
            if n < g:
                extra = tokens[n : n + 1]  # drawn from the residual at the first rejection
            else:
                extra = torch.multinomial(p[g], 1, generator=generator)  # bonus from p_{γ+1}
        new = torch.cat([draft_ids[0, :n], extra])  # (n + 1,)
        n_proposed += g
        n_accepted += n
        per_round.append(n)

        # 4. Stop tokens: keep up to the first one.
        if stop_ids:
            hits = [i for i, t in enumerate(new.tolist()) if t in stop_ids]
            if hits:
                new = new[: hits[0] + 1]
                stopped = True
        seq = torch.cat([seq, new[None]], dim=1)  # (1, L + n + 1)

        # 5. Roll the caches back to the committed prefix: the target keeps L + n positions
        # (every committed token but the newest); the draft read at most L + g - 1.
        target_cache.crop(length + n)
        if lookup is None:
            draft_cache.crop(min(draft_cache.length, length + n))

    return SpeculativeOutput(
        sequences=seq,
        prompt_length=prompt_length,
        num_target_forwards=n_target,
        num_draft_forwards=n_draft,
        num_proposed=n_proposed,
        num_accepted=n_accepted,
        accepted_per_round=tuple(per_round),
        stopped=stopped,
    )
