"""The generic machinery of the checks: run a student's function beside a reference."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["compare_with_reference", "random_cases"]


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {str(x.dtype).replace('torch.', '')}"
    return type(x).__name__


def check_callable(name: str, student: object) -> None:
    """Raise ``TypeError`` unless the student handed in a function (not its result)."""
    if not callable(student):
        raise TypeError(f"{name}: expected a function, got {type(student).__name__}")


def compare_with_reference(
    name: str,
    student: Callable[..., Any],
    reference: Callable[..., Any],
    cases: Sequence[tuple[tuple, dict]],
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """Run ``student`` and ``reference`` on every ``(args, kwargs)`` case and compare.

    Tensors are compared with ``torch.testing.assert_close``; other values with ``==``.
    """
    check_callable(name, student)
    for i, (args, kwargs) in enumerate(cases, start=1):
        expected = reference(*args, **kwargs)
        got = student(*args, **kwargs)
        where = f"{name}, case {i} of {len(cases)} (inputs: {', '.join(_describe(a) for a in args)})"
        if isinstance(expected, torch.Tensor):
            if not isinstance(got, torch.Tensor):
                raise AssertionError(f"{where}: expected a tensor, got {_describe(got)}")
            if got.shape != expected.shape:
                raise AssertionError(
                    f"{where}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
                )
            try:
                torch.testing.assert_close(got, expected.to(got.dtype), atol=atol, rtol=rtol)
            except AssertionError as err:
                raise AssertionError(f"{where}: values differ from the reference.\n{err}") from None
        elif got != expected:
            raise AssertionError(f"{where}: expected {expected!r}, got {got!r}")
    print(f"✔ {name}: all {len(cases)} cases match the reference")


def random_cases(shapes: Sequence[tuple[int, ...]], seed: int = 0, scale: float = 3.0):
    """One ``((tensor,), {})`` case per shape, seeded, entries ~ N(0, scale²)."""
    g = torch.Generator().manual_seed(seed)
    return [((torch.randn(*s, generator=g) * scale,), {}) for s in shapes]
