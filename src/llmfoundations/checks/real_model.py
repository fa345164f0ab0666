"""Checks for the labs with the real model: SmolLM2 on the course's code (02-5), attention
in a real model (01-7) and the KV cache (06-2).

None of them loads the model: every check runs on small, seeded, synthetic inputs, so the
exercise sections of those labs run in a second. The cases are chosen so that the usual
mistakes fail:

- ``chatml``: no default system prompt, a default one added although the conversation
  has its own, a missing newline after ``<|im_end|>``, no generation prompt at the end;
- ``unpermute_qk``: the inverse permutation (llama.cpp's own; it equals the right one
  for a head size of 4, so the cases use 8 and more), treating all heads as one;
- ``dequantize_q4_1``: the 4-bit values read in the wrong order (low and high nibbles
  alternating instead of the low nibbles first), scale and minimum swapped, no minimum;
- ``top_attending_heads``: the weight read the wrong way round (key -> query), layer
  and head mixed up when unflattening, several key tokens combined by max, not summed;
- ``previous_token_scores``: the diagonal itself or the one above it, position 0
  counted although it has no previous token;
- ``kv_cache_bytes``: keys or values forgotten (no factor 2);
- ``attend_with_cache``: no causal mask among the new tokens, or a mask aligned with
  the first key instead of the last (what ``is_causal=True`` of PyTorch's
  ``scaled_dot_product_attention`` does when there are more keys than queries).

References: ``pretrained.apply_chat_template`` and ``pretrained.qk_rows_to_split_half``
(tested against Hugging Face in ``tests/test_pretrained.py``), a NumPy reading of
llama.cpp's ``Q4_1`` layout (tested against the ``gguf`` package), plain indexing, and
``torch.nn.functional.scaled_dot_product_attention`` over the whole sequence.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from llmfoundations.pretrained import apply_chat_template, qk_rows_to_split_half

from .core import check_callable, compare_with_reference, exercise_check

__all__ = [
    "check_chatml",
    "check_unpermute_qk",
    "check_dequantize_q4_1",
    "check_top_attending_heads",
    "check_previous_token_scores",
    "check_kv_cache_bytes",
    "check_attend_with_cache",
]

#: One ``Q4_1`` block: float16 scale ``d``, float16 minimum ``m``, 16 bytes of 4-bit values.
Q4_1_BLOCK_BYTES = 20
_Q4_1_WEIGHTS = 32



# ------------------------------------------------------------------------ 02-5 references


def reference_dequantize_q4_1(block: bytes) -> Tensor:
    """The 32 float32 weights of one ``Q4_1`` block (20 bytes, llama.cpp's layout).

    Bytes 0-1: scale ``d`` (float16, little-endian); bytes 2-3: minimum ``m`` (float16);
    bytes 4-19: 32 unsigned 4-bit values ``q``, two per byte: byte ``j`` holds weight ``j``
    in its low nibble and weight ``j + 16`` in its high nibble. Weight = ``d * q + m``.
    """
    if not isinstance(block, (bytes, bytearray)) or len(block) != Q4_1_BLOCK_BYTES:
        raise ValueError(f"block must be {Q4_1_BLOCK_BYTES} bytes, got {block!r:.60}")
    d, m = np.frombuffer(bytes(block[:4]), dtype="<f2").astype(np.float32)  # scale, minimum
    packed = np.frombuffer(bytes(block[4:]), dtype=np.uint8)  # (16,)
    q = np.concatenate([packed & 0x0F, packed >> 4]).astype(np.float32)  # (32,)
    return torch.from_numpy(d * q + m)


def _random_q4_1_block(rng: np.random.Generator, *, q: np.ndarray | None = None) -> bytes:
    d = np.float16(rng.uniform(0.001, 0.1))
    m = np.float16(rng.uniform(-1.0, 0.5))
    if q is None:
        q = rng.integers(0, 16, size=_Q4_1_WEIGHTS)
    packed = (q[:16] | (q[16:] << 4)).astype(np.uint8)
    return np.array([d, m], dtype="<f2").tobytes() + packed.tobytes()


# ----------------------------------------------------------------------------- 02-5 checks


@exercise_check
def check_chatml(student: Callable[[list[dict[str, str]]], str]) -> None:
    """Lab 02-5: ``chatml(messages)`` -> SmolLM2's ChatML prompt, ready for the reply.

    Every message becomes ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; a system
    message with ``DEFAULT_SYSTEM_PROMPT`` goes first unless the conversation starts with
    its own; the text ends with ``<|im_start|>assistant\\n``.
    """
    check_callable("chatml", student)
    conversations = [
        [{"role": "user", "content": "Hi!"}],
        [
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": "Where is the treasure?"},
        ],
        [
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3 + 3?"},
        ],
        [{"role": "user", "content": "Two lines:\nhere and\nhere."}],
        [{"role": "user", "content": ""}],
    ]
    for k, messages in enumerate(conversations, start=1):
        before = copy.deepcopy(messages)
        got = student(messages)
        if messages != before:
            raise AssertionError(
                f"chatml, case {k}: the function changed the messages it was given; build a "
                "new string and leave the list as it is"
            )
        want = apply_chat_template(before)
        if not isinstance(got, str):
            raise AssertionError(f"chatml, case {k}: expected a str, got {type(got).__name__}")
        if got != want:
            raise AssertionError(
                f"chatml, case {k} of {len(conversations)} (messages {before}):\n"
                f"expected {want!r}\n     got {got!r}"
            )
    print(f"✔ chatml: all {len(conversations)} cases match the reference")


@exercise_check
def check_unpermute_qk(student: Callable[[Tensor, int], Tensor]) -> None:
    """Lab 02-5: ``unpermute_qk(weight, n_heads)`` undoes llama.cpp's row order.

    ``weight`` is ``(n_heads * D, C)``; inside every head, GGUF row ``2i`` must go to row
    ``i`` and row ``2i + 1`` to row ``i + D/2``.
    """
    check_callable("unpermute_qk", student)
    g = torch.Generator().manual_seed(25)
    cases = []
    for n_heads, head_dim, width in [(1, 8, 3), (2, 8, 5), (3, 16, 4), (9, 64, 2)]:
        weight = torch.randn(n_heads * head_dim, width, generator=g)
        cases.append(((weight, n_heads), {}))
    compare_with_reference("unpermute_qk", student, qk_rows_to_split_half, cases, atol=0, rtol=0)


@exercise_check
def check_dequantize_q4_1(student: Callable[[bytes], Tensor]) -> None:
    """Lab 02-5: ``dequantize_q4_1(block)`` -> the 32 weights of one 20-byte ``Q4_1`` block."""
    check_callable("dequantize_q4_1", student)
    rng = np.random.default_rng(41)
    blocks = [_random_q4_1_block(rng) for _ in range(4)]
    blocks.append(_random_q4_1_block(rng, q=np.zeros(_Q4_1_WEIGHTS, dtype=np.int64)))  # all = m
    blocks.append(_random_q4_1_block(rng, q=np.arange(_Q4_1_WEIGHTS) % 16))  # order shows
    cases = [((block,), {}) for block in blocks]

    def as_float32(block: bytes) -> Tensor:
        got = student(block)
        if isinstance(got, np.ndarray):
            got = torch.from_numpy(got)
        if isinstance(got, Tensor):
            got = got.float()
        return got

    compare_with_reference(
        "dequantize_q4_1", as_float32, reference_dequantize_q4_1, cases, atol=1e-4, rtol=1e-3
    )


# ------------------------------------------------------------------------ 01-7 references


def reference_top_attending_heads(
    attn: Tensor, query_idx: int, key_idx: int | Sequence[int], k: int = 10
) -> list[tuple[int, int, float]]:
    """The ``k`` heads whose query ``query_idx`` gives the most weight to ``key_idx``.

    ``attn`` is ``(L, H, T, T)`` (layer, head, query, key); with several key positions
    their weights are summed. Returns ``(layer, head, weight)``, largest weight first.
    """
    keys = [key_idx] if isinstance(key_idx, int) else list(key_idx)
    weights = attn[:, :, query_idx, keys].sum(dim=-1)  # (L, H)
    top = weights.flatten().topk(min(k, weights.numel()))
    n_heads = attn.shape[1]
    return [
        (i // n_heads, i % n_heads, w)
        for w, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


def reference_previous_token_scores(attn: Tensor) -> Tensor:
    """``(L, H, T, T)`` -> ``(L, H)``: mean weight that positions ``1..T-1`` give to the
    position just before them (a "previous-token head" scores close to 1)."""
    below = torch.diagonal(attn, offset=-1, dim1=-2, dim2=-1)  # (L, H, T-1): [t, t-1]
    return below.mean(dim=-1)


def _random_attention(
    g: torch.Generator, n_layers: int, n_heads: int, t: int, causal: bool = True
) -> Tensor:
    """Seeded attention weights (L, H, T, T): softmax of random scores, rows sum to 1."""
    scores = torch.randn(n_layers, n_heads, t, t, generator=g) * 2.0
    if causal:
        allowed = torch.ones(t, t, dtype=torch.bool).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1)


def _as_head_list(name: str, got: Any, case: str) -> list[tuple[int, int, float]]:
    if not isinstance(got, (list, tuple)):
        raise AssertionError(
            f"{case}: {name} must return a list of (layer, head, weight), got {type(got).__name__}"
        )
    out = []
    for item in got:
        if not isinstance(item, (list, tuple)) or len(item) != 3:
            raise AssertionError(
                f"{case}: every entry must be a (layer, head, weight) tuple, got {item!r}"
            )
        layer, head, weight = item
        out.append((int(layer), int(head), float(weight)))
    return out


# ----------------------------------------------------------------------------- 01-7 checks


@exercise_check
def check_top_attending_heads(student: Callable[..., list[tuple[int, int, float]]]) -> None:
    """Lab 01-7: ``top_attending_heads(attn, query_idx, key_idx, k)`` ranks the heads."""
    check_callable("top_attending_heads", student)
    g = torch.Generator().manual_seed(17)
    cases = [
        (_random_attention(g, 4, 3, 6), 5, 1, 5),
        (_random_attention(g, 3, 5, 8), 6, [1, 2], 4),  # several key tokens: summed
        (_random_attention(g, 6, 2, 7, causal=False), 2, 4, 12),  # every head, in order
        (_random_attention(g, 2, 9, 5), 3, 0, 1),
    ]
    for n, (attn, query_idx, key_idx, k) in enumerate(cases, start=1):
        where = (
            f"top_attending_heads, case {n} of {len(cases)} (attn of shape {tuple(attn.shape)}, "
            f"query_idx={query_idx}, key_idx={key_idx}, k={k})"
        )
        want = reference_top_attending_heads(attn, query_idx, key_idx, k)
        got = _as_head_list(
            "top_attending_heads", student(attn.clone(), query_idx, key_idx, k), where
        )
        if len(got) != len(want):
            raise AssertionError(f"{where}: expected {len(want)} heads, got {len(got)}")
        for rank, ((gl, gh, gw), (wl, wh, ww)) in enumerate(zip(got, want, strict=True), start=1):
            if (gl, gh) != (wl, wh) or abs(gw - ww) > 1e-5:
                raise AssertionError(
                    f"{where}: at rank {rank} expected (layer {wl}, head {wh}, weight {ww:.5f}), "
                    f"got (layer {gl}, head {gh}, weight {gw:.5f})"
                )
    print(f"✔ top_attending_heads: all {len(cases)} cases match the reference")


@exercise_check
def check_previous_token_scores(student: Callable[[Tensor], Tensor]) -> None:
    """Lab 01-7: ``previous_token_scores(attn)`` -> ``(L, H)`` mean weight on the token before."""
    check_callable("previous_token_scores", student)
    g = torch.Generator().manual_seed(7)
    planted = _random_attention(g, 2, 3, 6)
    planted[1, 2] = torch.eye(6).roll(-1, dims=1).tril()  # a perfect previous-token head...
    planted[1, 2, 0, 0] = 1.0  # ...whose first token can only look at itself
    cases = [
        ((_random_attention(g, 3, 4, 5),), {}),
        ((planted,), {}),
        ((_random_attention(g, 1, 2, 9, causal=False),), {}),
    ]
    compare_with_reference(
        "previous_token_scores",
        student,
        reference_previous_token_scores,
        cases,
        atol=1e-6,
        rtol=1e-5,
    )


# ----------------------------------------------------------------------- 06-2 references


def _reference_kv_cache_bytes(
    n_layers: int,
    batch_size: int,
    n_kv_heads: int,
    head_dim: int,
    seq_len: int,
    bytes_per_value: int,
) -> int:
    return 2 * n_layers * batch_size * n_kv_heads * head_dim * seq_len * bytes_per_value


def reference_attend_with_cache(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    k_new: Tensor,
    v_new: Tensor,
) -> Tensor:
    """Causal attention of ``Tn`` new queries over ``P`` cached and ``Tn`` new keys.

    ``q``, ``k_new``, ``v_new``: (B, H, Tn, D); ``k_cache``, ``v_cache``: (B, H, P, D).
    New token ``i`` sits at position ``P + i`` and sees keys ``0 .. P + i``: the causal mask
    is aligned with the *last* key.
    """
    k = torch.cat([k_cache, k_new], dim=-2)  # (B, H, P + Tn, D)
    v = torch.cat([v_cache, v_new], dim=-2)
    p, tn = k_cache.shape[-2], q.shape[-2]
    allowed = torch.ones(tn, p + tn, dtype=torch.bool).tril(diagonal=p)  # (Tn, P + Tn)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, H, Tn, D)


# ----------------------------------------------------------------------------- 06-2 checks


@exercise_check
def check_kv_cache_bytes(student: Callable[..., int]) -> None:
    """Lab 06-2: ``kv_cache_bytes(n_layers, batch_size, n_kv_heads, head_dim, seq_len,
    bytes_per_value)`` -> bytes of keys and values for a whole model."""
    check_callable("kv_cache_bytes", student)
    cases = [
        ((32, 1, 32, 128, 4096, 2), {}),  # Llama-2-7B, one 4k sequence, 16-bit: 2 GiB
        ((30, 1, 3, 64, 8192, 4), {}),  # SmolLM2-135M, full context, float32
        ((30, 8, 9, 64, 1000, 2), {}),  # the same with multi-head attention, a batch of 8
        ((80, 4, 8, 128, 32768, 1), {}),  # Llama-3-70B-like, 8-bit cache
        ((1, 1, 1, 1, 1, 1), {}),
    ]

    def as_int(*args: int) -> int:
        got = student(*args)
        if isinstance(got, Tensor):
            got = got.item()
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        return got

    compare_with_reference("kv_cache_bytes", as_int, _reference_kv_cache_bytes, cases)


@exercise_check
def check_attend_with_cache(student: Callable[..., Tensor]) -> None:
    """Lab 06-2: ``attend_with_cache(q, k_cache, v_cache, k_new, v_new)``: the new tokens'
    attention output, as if the whole sequence had been computed at once."""
    check_callable("attend_with_cache", student)
    g = torch.Generator().manual_seed(62)
    cases = []
    for b, h, p, tn, d in [(1, 2, 5, 1, 4), (2, 3, 4, 3, 8), (1, 1, 0, 4, 4), (2, 2, 7, 5, 16)]:
        q, k_new, v_new = (torch.randn(b, h, tn, d, generator=g) for _ in range(3))
        k_cache, v_cache = (torch.randn(b, h, p, d, generator=g) for _ in range(2))
        cases.append(((q, k_cache, v_cache, k_new, v_new), {}))
    compare_with_reference(
        "attend_with_cache", student, reference_attend_with_cache, cases, atol=1e-5, rtol=1e-4
    )
