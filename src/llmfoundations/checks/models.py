"""Checks for Lab 01-4 (a tiny GPT, trained on a CPU) and Lab 01-5 (the three families).

Each check runs the student's function next to a reference on fixed, seeded inputs and
either prints one line of success or raises ``AssertionError`` naming the failing case.
When a wrong answer matches a common mistake exactly, the message says which one. The cases
are chosen so that these mistakes fail:

- ``causal_lm_loss``: no shift, a shift the wrong way, flattening *before* shifting (the last
  position of one row then predicts the first token of the next), averaging over ignored
  (``-100``) targets;
- ``count_parameters``: forgetting the biases, the learned positions or the final norm,
  counting the tied output layer a second time;
- ``residual_block``: normalising the sub-layer's output instead of its input (pre-norm),
  normalising the input instead of the sum (post-norm), pre and post swapped;
- ``causal_padding_mask``: the causal mask alone, the triangle the wrong way round, padding
  applied to the queries instead of the keys, a float mask;
- ``mask_tokens``: labels on every position, every chosen token replaced by ``[MASK]`` (no
  80/10/10), the random draws in another order or not from the given generator;
- ``cross_attention_mask``: a causal triangle (the source is known in full), padding ignored,
  the result transposed.

References: ``torch.nn.functional.cross_entropy``; ``DecoderLM.num_parameters`` and, for
GPT-2 small, its published size (124,439,808 parameters with tied embeddings);
``layers.TransformerBlock`` itself (two residual sub-layers of the student's must reproduce
it); ``attention.causal_mask``; and the written-out sampling rules of the exercise for
``mask_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from llmfoundations.attention import causal_mask
from llmfoundations.layers import TransformerBlock
from llmfoundations.models import IGNORE_INDEX, DecoderLM, ModelConfig

from .core import Case, check_callable, compare_with_reference, exercise_check

__all__ = [
    "check_causal_lm_loss",
    "check_count_parameters",
    "check_residual_block",
    "check_causal_padding_mask",
    "check_mask_tokens",
    "check_cross_attention_mask",
]


#: Parameters of GPT-2 small (V=50257, C=768, 12 layers, 1024 positions, tied output layer).
GPT2_SMALL_PARAMETERS = 124_439_808


# ------------------------------------------------------------------------------ helpers


def _returning(name: str, kind: str, student: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``student`` so a result of the wrong kind fails with a clear message."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        got = student(*args, **kwargs)
        if kind == "bool tensor" and not (
            isinstance(got, Tensor) and got.dtype == torch.bool
        ):
            seen = f"dtype {got.dtype}" if isinstance(got, Tensor) else type(got).__name__
            raise AssertionError(
                f"{name} must return a bool tensor (True = may attend), got {seen}"
            )
        if kind == "pair" and not (
            isinstance(got, (tuple, list))
            and len(got) == 2
            and all(isinstance(t, Tensor) for t in got)
        ):
            raise AssertionError(f"{name} must return a pair of tensors (inputs, labels)")
        return tuple(got) if kind == "pair" else got

    return wrapped


# ------------------------------------------------------------------- 01-4: the loss


def reference_causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of ``logits[:, t]`` (B, T, V) against ``labels[:, t + 1]`` (B, T),
    skipping targets equal to ``-100``."""
    shifted_logits = rearrange(logits[:, :-1], "b t v -> (b t) v")  # (B*(T-1), V)
    targets = rearrange(labels[:, 1:], "b t -> (b t)")  # (B*(T-1),)
    return F.cross_entropy(shifted_logits.float(), targets, ignore_index=IGNORE_INDEX)


def _loss_no_shift(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())


def _loss_shift_backwards(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits[:, 1:].flatten(0, 1).float(), labels[:, :-1].flatten())


def _loss_flatten_then_shift(logits: Tensor, labels: Tensor) -> Tensor:
    flat_logits, flat_labels = logits.flatten(0, 1), labels.flatten()  # (B*T, V), (B*T,)
    return F.cross_entropy(flat_logits[:-1].float(), flat_labels[1:])


def _loss_mean_over_all(logits: Tensor, labels: Tensor) -> Tensor:
    total = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), reduction="sum"
    )
    return total / labels[:, 1:].numel()


def _loss_cases() -> list[Case]:
    g = torch.Generator().manual_seed(14)
    cases = []
    for b, t, v in [(2, 5, 7), (3, 8, 11), (1, 2, 3), (4, 6, 5)]:
        logits = torch.randn(b, t, v, generator=g) * 2
        labels = torch.randint(0, v, (b, t), generator=g)
        cases.append(((logits, labels), {}))
    # targets not to learn (padding, a prompt): -100, including a whole row's tail
    logits = torch.randn(3, 9, 13, generator=g) * 2
    labels = torch.randint(0, 13, (3, 9), generator=g)
    labels[0, 6:] = IGNORE_INDEX
    labels[1, :4] = IGNORE_INDEX
    labels[2, 3] = IGNORE_INDEX
    cases.append(((logits, labels), {}))
    # the logits of a real (untrained) GPT on its own input
    with torch.random.fork_rng(devices=[]):  # leave the student's random state alone
        torch.manual_seed(0)
        model = DecoderLM(ModelConfig.gpt(vocab_size=17, d_model=16, n_layers=1, n_heads=2))
    ids = torch.randint(0, 17, (2, 10), generator=g)
    with torch.no_grad():
        cases.append(((model(ids).logits, ids), {}))
    return cases


@exercise_check
def check_causal_lm_loss(student: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Lab 01-4: next-token loss; ``logits[:, t]`` is scored against ``labels[:, t + 1]``."""
    check_callable("causal_lm_loss", student)
    hints = [
        (_loss_no_shift, "this is the loss without the shift: logits[:, t] must be scored "
         "against the *next* token, labels[:, t + 1]."),
        (_loss_shift_backwards, "the shift goes the wrong way: drop the *last* position of "
         "the logits and the *first* of the labels."),
        (_loss_flatten_then_shift, "you flattened before shifting, so the last position of "
         "each row is scored against the first token of the next row. Shift first "
         "(logits[:, :-1], labels[:, 1:]), then flatten."),
        (_loss_mean_over_all, "targets equal to -100 must be left out of the mean, not "
         "counted as zero loss (F.cross_entropy's ignore_index does this)."),
    ]  # fmt: skip
    compare_with_reference("causal_lm_loss", student, reference_causal_lm_loss, _loss_cases(),
                           hints=hints)


# ------------------------------------------------------------- 01-4: parameter count


def reference_count_parameters(
    vocab_size: int, d_model: int, n_layers: int, max_seq_len: int, d_ff: int | None = None
) -> int:
    """Parameters of ``DecoderLM(ModelConfig.gpt(...))``, in closed form."""
    c, f = d_model, 4 * d_model if d_ff is None else d_ff
    embeddings = vocab_size * c + max_seq_len * c  # tokens + learned positions
    attention = 4 * (c * c + c)  # q, k, v, o: weight and bias each
    ffn = (c * f + f) + (f * c + c)  # up and down projections with biases
    norms = 2 * (2 * c)  # two LayerNorms per block, scale and shift
    return embeddings + n_layers * (attention + ffn + norms) + 2 * c  # + final norm


def _count_forgot_biases(v: int, c: int, n: int, p: int, d_ff: int | None = None) -> int:
    f = 4 * c if d_ff is None else d_ff
    return v * c + p * c + n * (4 * c * c + 2 * c * f + 4 * c) + 2 * c


def _count_forgot_positions(v: int, c: int, n: int, p: int, d_ff: int | None = None) -> int:
    return reference_count_parameters(v, c, n, p, d_ff) - p * c


def _count_untied_head(v: int, c: int, n: int, p: int, d_ff: int | None = None) -> int:
    return reference_count_parameters(v, c, n, p, d_ff) + v * c


def _count_forgot_final_norm(v: int, c: int, n: int, p: int, d_ff: int | None = None) -> int:
    return reference_count_parameters(v, c, n, p, d_ff) - 2 * c


def _count_forgot_norms(v: int, c: int, n: int, p: int, d_ff: int | None = None) -> int:
    return reference_count_parameters(v, c, n, p, d_ff) - (4 * n + 2) * c


_COUNT_CONFIGS: list[tuple[tuple[int, int, int, int], dict]] = [
    ((65, 32, 2, 64), {}),
    ((100, 64, 4, 128), {}),
    ((17, 48, 3, 16), {"d_ff": 100}),
    ((300, 128, 1, 256), {}),
]


@exercise_check
def check_count_parameters(student: Callable[..., int]) -> None:
    """Lab 01-4: the number of parameters of a GPT-2-style ``DecoderLM``, in closed form.

    The reference for the small configurations is the model itself
    (``DecoderLM(ModelConfig.gpt(...)).num_parameters()``); the last case is GPT-2 small.
    """
    check_callable("count_parameters", student)

    def built(vocab_size: int, d_model: int, n_layers: int, max_seq_len: int, d_ff=None) -> int:
        if (vocab_size, d_model, n_layers, max_seq_len) == (50257, 768, 12, 1024):
            return GPT2_SMALL_PARAMETERS
        config = ModelConfig.gpt(
            vocab_size, d_model=d_model, n_layers=n_layers, n_heads=4,
            max_seq_len=max_seq_len, d_ff=d_ff,
        )  # fmt: skip
        return DecoderLM(config).num_parameters()

    cases = [*_COUNT_CONFIGS, ((50257, 768, 12, 1024), {})]
    hints = [
        (_count_forgot_biases, "every nn.Linear in the blocks has a bias (GPT-2 keeps them): "
         "d_model per attention projection, d_ff and d_model in the feed-forward network."),
        (_count_forgot_positions, "GPT-2 learns its positions: max_seq_len x d_model more."),
        (_count_untied_head, "the output layer shares its weight with the token embeddings "
         "(tie_embeddings=True), so it adds nothing."),
        (_count_forgot_final_norm, "a pre-norm model has one more LayerNorm after the last "
         "block (2 x d_model)."),
        (_count_forgot_norms, "each LayerNorm has a scale and a shift of d_model each: two per "
         "block and one at the end."),
    ]  # fmt: skip
    compare_with_reference("count_parameters", student, built, cases, hints=hints)


# --------------------------------------------------------------- 01-4: residual block


def reference_residual_block(
    x: Tensor, f: Callable[[Tensor], Tensor], norm: nn.Module, norm_position: str
) -> Tensor:
    """``x + f(norm(x))`` (pre-norm) or ``norm(x + f(x))`` (post-norm)."""
    if norm_position == "pre":
        return x + f(norm(x))
    if norm_position == "post":
        return norm(x + f(x))
    raise ValueError(f"norm_position must be 'pre' or 'post', got {norm_position!r}")


def _block_norm_output(x, f, norm, norm_position):
    return x + norm(f(x)) if norm_position == "pre" else norm(x) + f(x)


def _block_swapped(x, f, norm, norm_position):
    return reference_residual_block(x, f, norm, "post" if norm_position == "pre" else "pre")


def _block_no_residual(x, f, norm, norm_position):
    return f(norm(x)) if norm_position == "pre" else norm(f(x))


def _randomise_norms(module: nn.Module, generator: torch.Generator) -> None:
    """Give every norm a non-trivial scale and shift, so a misplaced norm shows."""
    for sub in module.modules():
        if isinstance(sub, nn.LayerNorm) or type(sub).__name__ in ("LayerNorm", "RMSNorm"):
            with torch.no_grad():
                sub.weight.copy_(1 + 0.5 * torch.randn(sub.weight.shape, generator=generator))
                if getattr(sub, "bias", None) is not None:
                    sub.bias.copy_(0.5 * torch.randn(sub.bias.shape, generator=generator))


@exercise_check
def check_residual_block(student: Callable[..., Tensor]) -> None:
    """Lab 01-4: one residual sub-layer, pre-norm or post-norm.

    Then two of the student's sub-layers (attention, then feed-forward) must reproduce the
    course's ``TransformerBlock`` with either norm position.
    """
    check_callable("residual_block", student)
    with torch.random.fork_rng(devices=[]):  # leave the student's random state alone
        torch.manual_seed(41)
        _check_residual_block(student)


def _check_residual_block(student: Callable[..., Tensor]) -> None:
    g = torch.Generator().manual_seed(41)
    c = 16
    linear = nn.Linear(c, c)
    norm = nn.LayerNorm(c)
    _randomise_norms(norm, g)

    def squash(h: Tensor) -> Tensor:
        return torch.tanh(linear(h))

    cases = []
    for shape in [(2, 5, c), (1, 3, c), (3, 7, c)]:
        x = torch.randn(*shape, generator=g) * 2 + 1
        for position in ("pre", "post"):
            cases.append(((x, squash, norm, position), {}))
    hints = [
        (_block_norm_output, "normalise the sub-layer's *input* in pre-norm, x + f(norm(x)); "
         "in post-norm normalise the *sum*, norm(x + f(x))."),
        (_block_swapped, "pre and post are swapped: pre-norm is x + f(norm(x)), post-norm is "
         "norm(x + f(x))."),
        (_block_no_residual, "the residual connection is missing: add x back."),
    ]  # fmt: skip
    with torch.no_grad():
        compare_with_reference("residual_block", student, reference_residual_block, cases,
                               hints=hints, quiet=True)  # fmt: skip

        blocks = {}
        for position in ("pre", "post"):
            block = TransformerBlock(
                c, n_heads=4, norm="layernorm", ffn="gelu", norm_position=position, bias=True
            ).eval()
            _randomise_norms(block, g)
            blocks[position] = block

        def two_sublayers(x: Tensor, position: str) -> Tensor:
            block = blocks[position]
            h = student(x, block.attn, block.norm1, position)  # attention sub-layer
            return student(h, block.ffn, block.norm2, position)  # feed-forward sub-layer

        x = torch.randn(2, 6, c, generator=g)
        block_cases = [((x, "pre"), {}), ((x, "post"), {})]
        compare_with_reference(
            "residual_block (two of them make a TransformerBlock)",
            two_sublayers,
            lambda x, position: blocks[position](x).hidden,
            block_cases,
            quiet=True,
        )
    print(f"✔ residual_block: all {len(cases)} cases match the reference, and two of them "
          "reproduce TransformerBlock (pre- and post-norm)")  # fmt: skip


# ------------------------------------------------------------------------- 01-5 masks


def _as_bool(pad_mask: Tensor) -> Tensor:
    return pad_mask if pad_mask.dtype == torch.bool else pad_mask != 0


def reference_causal_padding_mask(pad_mask: Tensor) -> Tensor:
    """(B, T) padding mask (1 = real token) -> (B, T, T) bool: query i may attend key j
    when ``j <= i`` and key ``j`` is a real token."""
    t = pad_mask.shape[-1]
    keys = rearrange(_as_bool(pad_mask), "b k -> b 1 k")  # (B, 1, T)
    return causal_mask(t, t, device=pad_mask.device)[None] & keys  # (B, T, T)


def _causal_only(pad_mask):
    b, t = pad_mask.shape
    return repeat(causal_mask(t, t), "q k -> b q k", b=b)


def _causal_upper(pad_mask):
    keys = _as_bool(pad_mask)[:, None, :]
    t = pad_mask.shape[-1]
    return torch.ones(t, t, dtype=torch.bool).triu()[None] & keys


def _padding_on_queries(pad_mask):
    t = pad_mask.shape[-1]
    return causal_mask(t, t)[None] & _as_bool(pad_mask)[:, :, None]


def _padding_on_both(pad_mask):
    queries = _as_bool(pad_mask)[:, :, None]
    return reference_causal_padding_mask(pad_mask) & queries


def _pad_mask_cases() -> list[Case]:
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)  # right padding
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]])  # left padding, int
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(1, 9, (4,), generator=g)
    ragged = torch.arange(8)[None, :] < lengths[:, None]  # (4, 8) bool
    return [((right,), {}), ((left,), {}), ((ragged,), {}), ((torch.ones(1, 1, dtype=torch.long),), {})]


@exercise_check
def check_causal_padding_mask(student: Callable[[Tensor], Tensor]) -> None:
    """Lab 01-5: a decoder's self-attention mask, causal and blind to padded keys."""
    check_callable("causal_padding_mask", student)
    hints = [
        (_causal_only, "the padding is ignored: a key j that is padding (pad_mask[b, j] == 0) "
         "must be False in every row."),
        (_causal_upper, "the triangle points the wrong way: query i may see keys j <= i "
         "(lower triangle, torch.tril), not the future."),
        (_padding_on_queries, "the padding mask must hide padded *keys* (columns), "
         "mask[b, i, j] = ... & pad_mask[b, j]; you applied it to the queries (rows)."),
        (_padding_on_both, "mask only the keys: rows of padding queries keep their causal "
         "pattern (their outputs are thrown away later anyway)."),
    ]  # fmt: skip
    wrapped = _returning("causal_padding_mask", "bool tensor", student)
    compare_with_reference("causal_padding_mask", wrapped, reference_causal_padding_mask,
                           _pad_mask_cases(), hints=hints)  # fmt: skip


def reference_cross_attention_mask(src_pad_mask: Tensor, tgt_len: int) -> Tensor:
    """(B, S) source padding mask -> (B, tgt_len, S) bool: every target position may attend
    every real source token (no causal constraint)."""
    return repeat(_as_bool(src_pad_mask), "b s -> b t s", t=tgt_len)


def _cross_causal(src_pad_mask, tgt_len):
    s = src_pad_mask.shape[-1]
    return causal_mask(tgt_len, s, offset=0)[None] & _as_bool(src_pad_mask)[:, None, :]


def _cross_no_padding(src_pad_mask, tgt_len):
    b, s = src_pad_mask.shape
    return torch.ones(b, tgt_len, s, dtype=torch.bool)


def _cross_on_queries(src_pad_mask, tgt_len):
    # only possible when the shapes happen to agree (tgt_len == S)
    return reference_cross_attention_mask(src_pad_mask, tgt_len).transpose(1, 2)


@exercise_check
def check_cross_attention_mask(student: Callable[[Tensor, int], Tensor]) -> None:
    """Lab 01-5: the mask of an encoder-decoder's cross-attention, (B, T_tgt, S)."""
    check_callable("cross_attention_mask", student)
    src = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    cases = [
        ((src, 3), {}),
        ((src, 5), {}),  # tgt_len == S: a transposed answer has the right shape
        ((torch.tensor([[1, 1, 1, 1]]), 6), {}),
        ((torch.tensor([[1, 0, 0], [1, 1, 0]]), 1), {}),
    ]
    hints = [
        (_cross_causal, "cross-attention has no causal mask: the whole source sentence is "
         "known before decoding starts, so every target position may read all of it."),
        (_cross_no_padding, "the padding is ignored: source positions with "
         "src_pad_mask[b, j] == 0 must be False in every row."),
        (_cross_on_queries, "the result is transposed: rows are target positions (queries), "
         "columns are source positions (keys)."),
    ]  # fmt: skip
    wrapped = _returning("cross_attention_mask", "bool tensor", student)
    compare_with_reference("cross_attention_mask", wrapped, reference_cross_attention_mask, cases,
                           hints=hints)  # fmt: skip


# ----------------------------------------------------------------- 01-5: BERT masking


def reference_mask_tokens(
    ids: Tensor, mask_id: int, vocab_size: int, p: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """BERT's corruption with three full-shape draws from ``generator``, in this order:

    1. ``chosen = rand(ids.shape) < p``;
    2. ``action = rand(ids.shape)``: ``< 0.8`` -> ``mask_id``; ``[0.8, 0.9)`` -> random id;
       ``>= 0.9`` -> unchanged (only where ``chosen``);
    3. ``random_ids = randint(vocab_size, ids.shape)``.

    Returns ``(inputs, labels)``: the corrupted ids, and the original ids where chosen,
    ``-100`` elsewhere. ``ids`` is not modified.
    """
    chosen = torch.rand(ids.shape, generator=generator) < p
    action = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator)
    inputs = torch.where(chosen & (action < 0.8), mask_id, ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    labels = torch.where(chosen, ids, IGNORE_INDEX)
    return inputs, labels


def _mask_all_chosen(ids, mask_id, vocab_size, p, generator):
    chosen = torch.rand(ids.shape, generator=generator) < p
    return torch.where(chosen, mask_id, ids), torch.where(chosen, ids, IGNORE_INDEX)


def _mask_labels_everywhere(ids, mask_id, vocab_size, p, generator):
    inputs, _ = reference_mask_tokens(ids, mask_id, vocab_size, p, generator)
    return inputs, ids.clone()


def _mask_random_ids_first(ids, mask_id, vocab_size, p, generator):
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator)
    chosen = torch.rand(ids.shape, generator=generator) < p
    action = torch.rand(ids.shape, generator=generator)
    inputs = torch.where(chosen & (action < 0.8), mask_id, ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, torch.where(chosen, ids, IGNORE_INDEX)


def _mask_random_then_keep(ids, mask_id, vocab_size, p, generator):
    # 10% unchanged first, then 10% random: [0.8, 0.9) keeps, >= 0.9 swaps
    chosen = torch.rand(ids.shape, generator=generator) < p
    action = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator)
    inputs = torch.where(chosen & (action < 0.8), mask_id, ids)
    inputs = torch.where(chosen & (action >= 0.9), random_ids, inputs)
    return inputs, torch.where(chosen, ids, IGNORE_INDEX)


def _mask_cases() -> list[Case]:
    g = torch.Generator().manual_seed(15)
    cases = []
    for shape, vocab, p in [((4, 16), 50, 0.15), ((8, 32), 30, 0.5), ((64,), 20, 0.3),
                            ((3, 10), 12, 1.0)]:  # fmt: skip
        ids = torch.randint(0, vocab - 1, shape, generator=g)  # vocab - 1 is [MASK]
        cases.append(((ids, vocab - 1, vocab, p, 100 + len(cases)), {}))
    return cases


def _with_seed(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Call ``fn`` with a fresh generator seeded by the case's seed (same draws each time)."""

    def call(ids, mask_id, vocab_size, p, seed):
        return fn(ids, mask_id, vocab_size, p, torch.Generator().manual_seed(seed))

    return call


@exercise_check
def check_mask_tokens(student: Callable[..., tuple[Tensor, Tensor]]) -> None:
    """Lab 01-5: BERT's 15% / 80-10-10 masking, with the exercise's exact random draws."""
    check_callable("mask_tokens", student)
    returning_pair = _returning("mask_tokens", "pair", student)

    def guarded(ids, mask_id, vocab_size, p, generator):
        before = ids.clone()
        got = returning_pair(ids, mask_id, vocab_size, p, generator)
        if not torch.equal(ids, before):
            raise AssertionError("mask_tokens changed ids in place; corrupt a copy instead")
        return got

    cases = _mask_cases()
    hints = [
        (_with_seed(_mask_labels_everywhere), "labels must be -100 wherever the token was not "
         "chosen: the loss only scores the chosen positions."),
        (_with_seed(_mask_all_chosen), "every chosen token became [MASK]: BERT replaces only "
         "80% of them (action < 0.8); 10% get a random id, 10% stay unchanged."),
        (_with_seed(_mask_random_ids_first), "the random draws are in the wrong order: first "
         "chosen (rand), then action (rand), then random_ids (randint)."),
        (_with_seed(_mask_random_then_keep), "0.8 <= action < 0.9 means a random id, and "
         "action >= 0.9 means unchanged, not the other way round."),
    ]  # fmt: skip

    def inputs_of(fn):
        return lambda *args: fn(*args)[0]

    def labels_of(fn):
        return lambda *args: fn(*args)[1]

    student_seeded = _with_seed(guarded)
    reference_seeded = _with_seed(reference_mask_tokens)
    compare_with_reference("mask_tokens (labels)", labels_of(student_seeded),
                           labels_of(reference_seeded), cases,
                           hints=[(labels_of(w), m) for w, m in hints], atol=0, rtol=0,
                           quiet=True)  # fmt: skip
    compare_with_reference("mask_tokens (inputs)", inputs_of(student_seeded),
                           inputs_of(reference_seeded), cases,
                           hints=[(inputs_of(w), m) for w, m in hints], atol=0, rtol=0,
                           quiet=True)  # fmt: skip
    print(f"✔ mask_tokens: inputs and labels match the reference in all {len(cases)} cases")
