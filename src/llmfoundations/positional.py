"""Positional information: sinusoidal, learned and rotary (RoPE) encodings.

Attention by itself treats its input as a *set*: permute the tokens and the outputs are
permuted the same way. Word order therefore has to be put in explicitly. This module holds
the three schemes the course compares:

- ``sinusoidal_encoding``: the fixed sine/cosine table of Vaswani et al., 2017
  (https://arxiv.org/abs/1706.03762), added to the token embeddings.
- ``LearnedPositionalEmbedding``: one trained vector per absolute position (GPT-2, BERT),
  also added to the token embeddings; it cannot represent positions it was not built for.
- ``apply_rope``: rotary position embedding (Su et al., 2021, https://arxiv.org/abs/2104.09864)
  rotates each (query or key) pair of dimensions by an angle proportional to the position,
  so that the dot product of a query and a key depends only on their *distance*.

RoPE comes in two memory layouts that compute the same thing on differently ordered
dimensions, and mixing them up is a silent bug when loading weights:

- split-half (``interleaved=False``; GPT-NeoX, Llama in Hugging Face transformers): dimension
  ``i`` is paired with ``i + D/2``;
- interleaved (``interleaved=True``; the RoFormer paper, llama.cpp / GGUF): dimension ``2i`` is
  paired with ``2i + 1``.

Left out: context-extension schemes that rescale RoPE frequencies (NTK-aware scaling, YaRN,
Llama 3's frequency bands), ALiBi, relative-position biases (T5). Linear position
interpolation (Chen et al., 2023, https://arxiv.org/abs/2306.15595) needs no extra code:
``apply_rope`` accepts floating-point positions, so ``positions / factor`` does it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from llmfoundations._validate import check_int, check_positive, check_tensor

__all__ = [
    "sinusoidal_encoding",
    "LearnedPositionalEmbedding",
    "rope_frequencies",
    "rope_angles",
    "apply_rope",
    "rope_cos_sin",
    "rotate_pairs",
]


def sinusoidal_encoding(
    n_positions: int,
    d_model: int,
    base: float = 10000.0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The fixed sinusoidal table of the 2017 Transformer, shape ``(n_positions, d_model)``.

    For position ``p`` and ``i = 0, 1, ...``::

        PE[p, 2i]     = sin(p / base ** (2i / d_model))
        PE[p, 2i + 1] = cos(p / base ** (2i / d_model))

    Each pair of columns is a clock turning at its own speed: the first pair once every
    ``2 pi`` positions, the last one about ``base`` times slower. An odd ``d_model`` is allowed
    (the last column is then a sine). The table is computed in float64 and cast to ``dtype``.

    >>> sinusoidal_encoding(3, 4)[1]
    tensor([0.8415, 0.5403, 0.0100, 0.9999])
    """
    check_int("n_positions", n_positions, minimum=1)
    check_int("d_model", d_model, minimum=1)
    check_positive("base", base)
    position = torch.arange(n_positions, dtype=torch.float64, device=device)  # (T,)
    pair = torch.arange(d_model, device=device) // 2  # (C,) 0, 0, 1, 1, 2, 2, ...
    inv_freq = base ** (-2.0 * pair.to(torch.float64) / d_model)  # (C,)
    angle = position[:, None] * inv_freq[None, :]  # (T, C)
    is_even = torch.arange(d_model, device=device) % 2 == 0  # (C,)
    table = torch.where(is_even, torch.sin(angle), torch.cos(angle))  # (T, C)
    return table.to(dtype)


class LearnedPositionalEmbedding(nn.Module):
    """A trained vector per absolute position (GPT-2, BERT): ``weight`` is ``(max_positions, C)``.

    ``forward(positions)`` looks rows up: positions ``(..., T)`` (integers) give ``(..., T, C)``.
    Positions at or beyond ``max_positions`` have no row and raise a ``ValueError``: this is
    the hard length limit of learned positions. The weights start as N(0, 0.02^2), like GPT-2.
    """

    def __init__(self, max_positions: int, d_model: int) -> None:
        super().__init__()
        self.max_positions = check_int("max_positions", max_positions, minimum=1)
        self.d_model = check_int("d_model", d_model, minimum=1)
        self.weight = nn.Parameter(torch.empty(max_positions, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, positions: Tensor) -> Tensor:
        check_tensor("positions", positions, min_ndim=1)
        if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
            raise TypeError(f"positions must be an integer tensor, got dtype {positions.dtype}")
        if positions.numel() > 0:
            low, high = int(positions.min()), int(positions.max())
            if low < 0 or high >= self.max_positions:
                raise ValueError(
                    f"positions must lie in [0, max_positions={self.max_positions}), "
                    f"got values from {low} to {high}"
                )
        return self.weight[positions]  # (..., T, C)

    def extra_repr(self) -> str:
        return f"max_positions={self.max_positions}, d_model={self.d_model}"


def rope_frequencies(
    head_dim: int, theta: float = 10000.0, *, device: torch.device | str | None = None
) -> Tensor:
    """Rotation speeds of RoPE, shape ``(D/2,)``: ``theta ** (-2i / D)`` for ``i < D/2``.

    Pair ``i`` turns by ``positions * freq[i]`` radians. The same geometric ladder of speeds as
    the sinusoidal table; a larger ``theta`` (Llama 3 uses 500000) slows the slowest pairs
    so that distant positions stay distinguishable.
    """
    check_int("head_dim", head_dim, minimum=1)
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
    check_positive("theta", theta)
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    return 1.0 / (theta**exponent)  # (D/2,)


def _check_position_tensor(positions: object) -> Tensor:
    """Type and rank only (no look at the values, so no device sync)."""
    check_tensor("positions", positions, min_ndim=1)
    if positions.dtype == torch.bool or positions.is_complex():
        raise TypeError(f"positions must be an integer or real tensor, got dtype {positions.dtype}")
    return positions


def _check_positions(positions: object) -> Tensor:
    _check_position_tensor(positions)
    if positions.numel() and bool((positions < 0).any()):
        raise ValueError(f"positions must be >= 0, got min {positions.min().item()}")
    return positions


def rope_angles(positions: Tensor, head_dim: int, theta: float = 10000.0) -> Tensor:
    """Rotation angle of every pair at every position: ``(..., T)`` -> ``(..., T, D/2)``.

    Computed in float32 whatever the dtype of the positions (like Hugging Face's Llama).
    """
    positions = _check_positions(positions)
    freq = rope_frequencies(head_dim, theta, device=positions.device)  # (D/2,)
    return positions.to(torch.float32)[..., None] * freq  # (..., T, D/2)


def _align_positions(positions: Tensor, x: Tensor) -> Tensor:
    """Make ``positions`` broadcast against ``x[..., 0]`` (shape ``(..., T)``)."""
    t = x.shape[-2]
    if positions.shape[-1] != t:
        raise ValueError(
            f"positions must end with the sequence length T={t} of x {tuple(x.shape)}, "
            f"got positions of shape {tuple(positions.shape)}"
        )
    if positions.ndim == 2 and x.ndim > 3:
        # (B, T) per-row positions for x (B, H, T, D): put singleton axes for the heads.
        positions = positions.reshape(positions.shape[0], *([1] * (x.ndim - 3)), t)
    try:
        fits = torch.broadcast_shapes(positions.shape, x.shape[:-1]) == x.shape[:-1]
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"positions of shape {tuple(positions.shape)} do not broadcast against "
            f"x of shape {tuple(x.shape)} (expected (T,), (B, T) or a shape broadcastable "
            f"to {tuple(x.shape[:-1])})"
        )
    return positions


def apply_rope(
    x: Tensor, positions: Tensor, theta: float = 10000.0, interleaved: bool = False
) -> Tensor:
    """Rotate every pair of dimensions of ``x`` by an angle proportional to its position.

    Args:
        x: queries or keys ``(..., T, D)`` with ``D`` even, typically ``(B, H, T, D)``.
        positions: absolute positions (integers, or floats for position interpolation) of the
            ``T`` rows. Accepted shapes:

            - ``(T,)``: the same positions for every sequence;
            - ``(B, T)``: per-row positions (left-padded batches); for ``x`` of shape
              ``(B, H, T, D)`` the head axis is inserted for you;
            - any shape that broadcasts against ``x.shape[:-1]``, e.g. ``(B, 1, T)``.
        theta: base of the rotation speeds (see ``rope_frequencies``).
        interleaved: ``False`` pairs dimension ``i`` with ``i + D/2`` (Llama in Hugging Face,
            GPT-NeoX); ``True`` pairs ``2i`` with ``2i + 1`` (RoFormer, GGUF files).

    For a pair ``(a, b)`` and angle ``phi = position * freq`` the result is the 2x2 rotation::

        a' = a cos(phi) - b sin(phi)
        b' = a sin(phi) + b cos(phi)

    The rotation is done in float32 and cast back to ``x.dtype``. Lengths are preserved, and
    the dot product of a query at position ``m`` with a key at position ``n`` depends on
    ``m - n`` only.
    """
    check_tensor("x", x, min_ndim=2, floating=True)
    if x.shape[-1] % 2:
        raise ValueError(f"x must have an even last dimension for RoPE, got shape {tuple(x.shape)}")
    if not isinstance(interleaved, bool):
        raise TypeError(f"interleaved must be a bool, got {type(interleaved).__name__}")
    positions = _align_positions(_check_positions(positions), x)
    cos, sin = rope_cos_sin(positions.to(x.device), x.shape[-1], theta)  # (..., T, D/2) each
    return rotate_pairs(x, cos, sin, interleaved)


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """Cosine and sine of every rotation angle, ``(..., T)`` -> two ``(..., T, D/2)`` (float32).

    They depend only on the positions, so a model computes them once per forward pass and
    hands them to every layer (``rope_cos_sin=`` of ``MultiHeadAttention.forward``) instead
    of recomputing them for the queries and keys of each layer.
    """
    return _rope_cos_sin(_check_positions(positions), head_dim, theta)


def _rope_cos_sin(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """:func:`rope_cos_sin` without checking ``positions`` (models check them once, at entry)."""
    freq = rope_frequencies(head_dim, theta, device=positions.device)  # (D/2,)
    angle = positions.to(torch.float32)[..., None] * freq  # (..., T, D/2)
    return angle.cos(), angle.sin()


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    """Rotate the pairs of ``x`` ``(..., T, D)`` by precomputed angles (``rope_cos_sin``).

    ``cos`` and ``sin`` are ``(..., T, D/2)`` and broadcast against ``x[..., ::2]``. The
    rotation is done in float32 and cast back to ``x.dtype``; ``apply_rope`` is this plus
    computing the angles from positions.
    """
    x32 = x.to(torch.float32)
    # The two layouts differ only in which dimensions form a pair (a, b): split-half pairs
    # (i, i + D/2), interleaved pairs (2i, 2i + 1). Plain slicing rather than einops: this
    # runs twice per layer per decoding step, and einops' per-call overhead showed up there.
    a, b = (x32[..., 0::2], x32[..., 1::2]) if interleaved else x32.chunk(2, dim=-1)  # (..., T, D/2)
    a, b = a * cos - b * sin, a * sin + b * cos
    out = torch.stack((a, b), dim=-1).flatten(-2) if interleaved else torch.cat((a, b), dim=-1)
    return out.to(x.dtype)  # (..., T, D)
