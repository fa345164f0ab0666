"""Argument checks shared by the whole package.

Every public function validates what it is given and raises a ``ValueError`` or
``TypeError`` that names the argument and what was seen, so a wrong shape or an
unknown option never turns into a silently wrong answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = [
    "check_tensor",
    "check_same_device",
    "check_choice",
    "check_positive",
    "check_probability",
    "check_divisible",
    "check_int",
    "check_bool",
    "check_str",
    "check_qkv",
    "check_logits_labels",
]


def check_tensor(
    name: str,
    x: object,
    *,
    ndim: int | Sequence[int] | None = None,
    min_ndim: int | None = None,
    dtype: torch.dtype | Iterable[torch.dtype] | None = None,
    floating: bool = False,
    nonempty: bool = False,
) -> Tensor:
    """Check that ``x`` is a tensor with the expected rank and dtype; return it.

    >>> check_tensor("q", torch.zeros(2, 3), ndim=2)
    tensor([[0., 0., 0.],
            [0., 0., 0.]])
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimensions, got shape {tuple(x.shape)}"
        )
    if dtype is not None:
        allowed_dtypes = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
        if x.dtype not in allowed_dtypes:
            want = ", ".join(str(d).replace("torch.", "") for d in allowed_dtypes)
            raise TypeError(
                f"{name} must have dtype {want}, got {str(x.dtype).replace('torch.', '')}"
            )
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    return x


def check_same_device(**tensors: Tensor | None) -> None:
    """Raise if the given tensors (``None`` ignored) live on different devices."""
    seen = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(seen.values())) > 1:
        detail = ", ".join(f"{n} on {d}" for n, d in seen.items())
        raise ValueError(f"tensors must be on the same device, got {detail}")


def check_choice(name: str, value: object, choices: Iterable[object]) -> None:
    """Raise if ``value`` is not one of ``choices`` (for string options)."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise unless ``value`` is a finite positive (or, with ``allow_zero``, non-negative) number.

    NaN and infinities fail: a temperature, learning rate or scale of ``inf`` is never meant.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < 0 if allow_zero else value <= 0:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")


def check_probability(name: str, value: float, *, low_open: bool = True) -> None:
    """Raise unless ``value`` lies in (0, 1] (or [0, 1] with ``low_open=False``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    ok = (0 < value <= 1) if low_open else (0 <= value <= 1)
    if not ok:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value}")


def check_divisible(name: str, value: int, by_name: str, by: int) -> None:
    """Raise unless ``value`` is a multiple of ``by``."""
    if by <= 0 or value % by != 0:
        raise ValueError(f"{name} ({value}) must be divisible by {by_name} ({by})")


def check_bool(name: str, value: object) -> None:
    """Raise unless ``value`` is a bool (``0`` and ``1`` are not)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_str(name: str, value: object) -> None:
    """Raise unless ``value`` is a str."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")


def check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    """Raise unless ``value`` is an int (not a bool), at least ``minimum`` if given."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_qkv(q: object, k: object, v: object) -> None:
    """The rules every attention shares: ``q`` (..., Tq, D), ``k`` (..., Tk, D) and ``v``
    (..., Tk, Dv) are non-empty floating tensors of one dtype on one device, ``q`` and
    ``k`` have the same head dimension D, and ``k`` and ``v`` the same number of keys Tk.

    How the leading dimensions must relate (broadcast, equal, grouped heads) is the
    caller's rule.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, min_ndim=2, floating=True, nonempty=True)
    check_same_device(q=q, k=k, v=v)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must share the last (head) dimension (q's head dimension D = {q.shape[-1]}, "
            f"k's {k.shape[-1]}), got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must agree on the number of keys (dimension -2), got k {tuple(k.shape)} "
            f"and v {tuple(v.shape)}"
        )


_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_logits_labels(logits: object, labels: object, ignore_index: int = -100) -> None:
    """``logits`` (B, T, V) floating and non-empty, ``labels`` (B, T) integer on the same
    device, every label ``ignore_index`` or in ``[0, V)``. Checking the values costs one
    device sync."""
    check_tensor("logits", logits, ndim=3, floating=True, nonempty=True)
    check_tensor("labels", labels, ndim=2, dtype=_LABEL_DTYPES)
    assert isinstance(logits, torch.Tensor) and isinstance(labels, torch.Tensor)
    if tuple(labels.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"labels (B, T) must match logits (B, T, V) = {tuple(logits.shape)}, got "
            f"{tuple(labels.shape)}"
        )
    if labels.device != logits.device:
        raise ValueError(f"labels are on {labels.device}, logits on {logits.device}")
    vocab = logits.shape[-1]
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        raise ValueError(
            f"labels must be {ignore_index} or lie in [0, V={vocab}), got {labels[bad][0].item()}"
        )
