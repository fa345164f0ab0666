"""The generic machinery of the checks: run a student's function beside a reference.

Three things make a failing check useful to a student rather than merely strict:

- ``exercise_check`` marks a check function; a blank answer (the student version's
  ``raise NotImplementedError()``) then fails with "not attempted yet" and what to do,
  instead of a bare ``NotImplementedError``;
- ``compare_with_reference(..., hints=...)`` tries known wrong answers when the student's
  result differs and adds a ``Hint:`` line naming the mistake it reproduces;
- ``compare_with_reference(..., forbid=...)`` fails a function that calls a torch function
  the exercise asks the student not to use (``forbidding_torch_calls``);
  ``refuse_calling`` fails one that calls the course function it is rebuilding.

Left out: a hint is given only when a known mistake reproduces the student's result; the
forbidding watch sees calls made through ``torch`` (any spelling: ``F.x``, ``torch.x``,
``tensor.x``, an alias), not a call of some other library's implementation;
``refuse_calling`` sees the course function run (through any helper) or named in the
student's code, but not a copy of its code pasted in.
"""

from __future__ import annotations

import contextlib
import dis
import functools
import inspect
import io
import reprlib
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["compare_with_reference", "random_cases"]

Case = tuple[tuple, dict]
Hint = tuple[Callable[..., Any], str]  # (a known wrong answer, what to tell the student)

#: What a blank exercise's check says (after the exercise's name).
NOT_ATTEMPTED = (
    "not attempted yet: replace `raise NotImplementedError()` with your solution and run the cell again"
)


_SHORT = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_SHORT.maxlist = _SHORT.maxtuple = 12
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 40, 40


def _describe(x: Any) -> str:
    """A case's input as a message shows it: tensors by shape and dtype; numbers, strings
    and lists or tuples of them by value (long ones shortened with ``...``: short cases can
    be rerun from the message); anything else by its type."""
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {str(x.dtype).replace('torch.', '')}"
    if _plain(x):
        text = _SHORT.repr(x)
        return text if len(text) <= 160 else text[:159] + "…"
    return type(x).__name__


def _plain(x: Any, depth: int = 0) -> bool:
    if isinstance(x, (bool, int, float, str, bytes)) or x is None:
        return True
    return type(x) in (list, tuple) and depth < 3 and all(_plain(v, depth + 1) for v in x)


def check_callable(name: str, student: object) -> None:
    """Raise ``TypeError`` unless the student handed in a function (not its result)."""
    if not callable(student):
        raise TypeError(f"{name}: expected a function, got {type(student).__name__}")


# ------------------------------------------------------------------------ not attempted


def exercise_check(check: Callable[..., None]) -> Callable[..., None]:
    """Decorate the check of an exercise: a blank answer fails with "not attempted yet".

    A blank is a ``NotImplementedError`` without a message (what ``raise
    NotImplementedError()`` in the student version gives); it is re-raised as a
    ``NotImplementedError`` that says what to do. One with a message (an operation a library
    lacks) passes through unchanged. Every ``check_*`` the ``checks`` package exports must
    carry this decorator.
    """

    @functools.wraps(check)
    def run(student: Any, *args: Any, **kwargs: Any) -> None:
        try:
            return check(student, *args, **kwargs)
        except NotImplementedError as err:
            if str(err):
                raise
            name = getattr(student, "__name__", "")
            if not name.isidentifier():
                name = check.__name__.removeprefix("check_")
            raise NotImplementedError(f"{name}: {NOT_ATTEMPTED}") from None

    run.__exercise_check__ = True  # type: ignore[attr-defined]
    return run


# ---------------------------------------------------------------------- forbidden calls


class ForbiddenCall(AssertionError):
    """A student's function called a torch function its exercise rules out."""


class _Forbid(TorchFunctionMode):
    """Raises ``ForbiddenCall`` on any torch call whose name is a key of ``advice``."""

    def __init__(self, advice: Mapping[str, str]) -> None:
        super().__init__()
        self.advice = dict(advice)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.advice:
            raise ForbiddenCall(
                f"your function calls {name}, which this exercise asks you not to use; "
                f"{self.advice[name]}"
            )
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def forbidding_torch_calls(advice: Mapping[str, str]) -> Iterator[None]:
    """Inside the block, a torch call named in ``advice`` raises ``ForbiddenCall``.

    ``advice`` maps a torch function's name (``"scaled_dot_product_attention"``) to what
    to do instead. It is a ``TorchFunctionMode``, so it sees every spelling of the call
    (``F.x``, ``torch.x``, ``tensor.x``, ``from ... import x as y``) and leaves torch itself
    untouched. Only calls made from Python are seen: what happens inside a torch call is not.
    For example, ``with forbidding_torch_calls({"softmax": "write it yourself"}):
    F.softmax(x, -1)`` raises "your function calls softmax, which this exercise asks you
    not to use; write it yourself".
    """
    if not isinstance(advice, Mapping):
        raise TypeError(f"advice must map torch function names to advice, got {type(advice).__name__}")
    if not advice:
        yield
        return
    with _Forbid(advice):
        yield


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return None


def _global_loads(code: types.CodeType) -> Iterator[str]:
    """Names ``code`` reads as globals (not attribute names, which share ``co_names``)."""
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            yield instruction.argval


def refuse_calling(
    name: str, student: Callable[..., Any], rebuilt: Callable[..., Any], advice: str
) -> Callable[..., Any]:
    """``student`` (the exercise's function ``name``), guarded against using ``rebuilt``,
    the course function the exercise asks the student to write.

    Fails at once if ``student`` is ``rebuilt``, or its code (or that of a function or lambda
    defined inside it) reads a global or closure variable bound to it (``from ... import f as
    g``). The function returned runs ``student`` and raises ``ForbiddenCall`` if ``rebuilt``
    ran meanwhile, however it was reached (``module.f(...)``, a helper): a profile hook sees
    every Python call. An attribute that merely shares the name (``self.f``) is no call."""
    why = f"{rebuilt.__name__}, the function this exercise rebuilds (and the check's reference)"
    if student is rebuilt:
        raise AssertionError(f"{name} is {why}; {advice}")
    cells = getattr(student, "__closure__", None) or ()
    if any(_cell(c) is rebuilt for c in cells):  # a variable of an enclosing function
        raise AssertionError(f"{name} calls {why}; {advice}")
    code = getattr(student, "__code__", None)
    scope = getattr(student, "__globals__", {})
    stack = [code] if isinstance(code, types.CodeType) else []
    while stack:
        code = stack.pop()
        if any(scope.get(n) is rebuilt for n in _global_loads(code)):
            raise AssertionError(f"{name} calls {why}; {advice}")
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    target = inspect.unwrap(rebuilt).__code__

    @functools.wraps(student)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        seen = False

        def profile(frame: types.FrameType, event: str, _arg: object) -> None:
            nonlocal seen
            if event == "call" and frame.f_code is target:
                seen = True

        previous = sys.getprofile()
        sys.setprofile(profile)
        try:
            result = student(*args, **kwargs)
        except Exception:
            if seen:  # (student raised afterwards: this is the message that helps)
                raise ForbiddenCall(f"{name} calls {why}; {advice}") from None
            raise
        finally:
            sys.setprofile(previous)
        if seen:
            raise ForbiddenCall(f"{name} calls {why}; {advice}")
        return result

    return guarded


# -------------------------------------------------------------------------------- hints


def _same(got: Any, expected: Any, atol: float, rtol: float) -> bool:
    """Whether two results agree (tensors within tolerance, NaN equal to NaN; else ``==``)."""
    if isinstance(expected, Tensor):
        if not isinstance(got, Tensor) or got.shape != expected.shape:
            return False
        return torch.allclose(got.double(), expected.double(), atol=atol, rtol=rtol, equal_nan=True)
    if isinstance(expected, tuple):
        return (
            isinstance(got, tuple)
            and len(got) == len(expected)
            and all(_same(g, e, atol, rtol) for g, e in zip(got, expected, strict=True))
        )
    return bool(got == expected)


def diagnose(
    student: Callable[..., Any],
    reference: Callable[..., Any],
    cases: Sequence[Case],
    hints: Sequence[Hint],
    atol: float,
    rtol: float,
) -> str | None:
    """The message of the known mistake that best explains the student's wrong results.

    A mistake that reproduces the student's result in every case wins; otherwise the first
    one that reproduces the first wrong case. None when no mistake matches (or the student's
    function raises: the first run already reported that).
    """
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            results = [student(*args, **kwargs) for args, kwargs in cases]
    except Exception:  # noqa: BLE001 - the first run already reported the real error
        return None
    for wrong, message in hints:
        if all(
            _same(got, wrong(*args, **kwargs), atol, rtol)
            for got, (args, kwargs) in zip(results, cases, strict=True)
        ):
            return message
    for got, (args, kwargs) in zip(results, cases, strict=True):
        if _same(got, reference(*args, **kwargs), atol, rtol):
            continue
        for wrong, message in hints:
            if _same(got, wrong(*args, **kwargs), atol, rtol):
                return message
        return None
    return None


# --------------------------------------------------------------------------- comparison


def _compare_one(where: str, got: Any, expected: Any, atol: float, rtol: float) -> None:
    """Raise ``AssertionError`` (prefixed by ``where``) unless ``got`` matches ``expected``."""
    if isinstance(expected, Tensor):
        if not isinstance(got, Tensor):
            raise AssertionError(f"{where}: expected a tensor, got {type(got).__name__}")
        if got.shape != expected.shape:
            raise AssertionError(f"{where}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}")
        try:
            torch.testing.assert_close(got, expected.to(got.dtype), atol=atol, rtol=rtol)
        except AssertionError as err:
            raise AssertionError(f"{where}: values differ from the reference.\n{err}") from None
    elif got != expected:
        if _hashes(expected) and isinstance(got, (list, tuple)) and list(got) != list(expected):
            raise AssertionError(f"{where}: {_hash_difference(got, expected)}")
        raise AssertionError(f"{where}: expected {expected!r}, got {got!r}")


def _hashes(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(v, bytes) for v in x)


def _hash_difference(got: Sequence[Any], expected: Sequence[bytes]) -> str:
    """Where a list of digests (block hashes) first differs, in words, each digest by the
    first 12 hex digits: a dump of raw bytes tells a student nothing. (Equal items in
    another kind of sequence get the plain message, which names both types.)"""

    def short(v: Any) -> str:
        return v.hex()[:12] + "…" if isinstance(v, bytes) else _SHORT.repr(v)

    j = next((j for j, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None)
    if j is None:
        return (f"expected {len(expected)} hashes (one per full block), got {len(got)}; "
                f"the first {min(len(got), len(expected))} agree")
    same = "" if j == 0 else "hash 0 agrees, " if j == 1 else f"hashes 0..{j - 1} agree, "
    return (f"{same}hash {j} differs: expected {short(expected[j])}, got {short(got[j])} "
            f"({len(expected)} expected, {len(got)} given)")


def compare_with_reference(
    name: str,
    student: Callable[..., Any],
    reference: Callable[..., Any],
    cases: Sequence[Case],
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    hints: Sequence[Hint] = (),
    forbid: Mapping[str, str] | None = None,
    quiet: bool = False,
) -> None:
    """Run ``student`` and ``reference`` on every ``(args, kwargs)`` case and compare.

    Tensors are compared with ``torch.testing.assert_close``; other values with ``==``.
    On a difference, each ``(wrong, message)`` of ``hints`` is tried and the message of a
    mistake that reproduces the student's result is added as a ``Hint:`` line. ``forbid``
    maps torch function names the exercise rules out to advice (see
    ``forbidding_torch_calls``); the student's function fails if it calls one. ``quiet``
    leaves out the line printed on success.
    """
    check_callable(name, student)
    try:
        for i, (args, kwargs) in enumerate(cases, start=1):
            where = f"{name}, case {i} of {len(cases)} (inputs: {', '.join(_describe(a) for a in args)})"
            expected = reference(*args, **kwargs)
            try:
                with forbidding_torch_calls(forbid or {}):
                    got = student(*args, **kwargs)
            except ForbiddenCall as err:
                raise ForbiddenCall(f"{where}: {err}") from None
            _compare_one(where, got, expected, atol, rtol)
    except ForbiddenCall as err:
        raise AssertionError(str(err)) from None
    except AssertionError as err:
        hint = diagnose(student, reference, cases, hints, atol, rtol) if hints else None
        if hint is None:
            raise
        raise AssertionError(f"{err}\nHint: {hint}") from None
    if not quiet:
        print(f"✔ {name}: all {len(cases)} cases match the reference")


def random_cases(shapes: Sequence[tuple[int, ...]], seed: int = 0, scale: float = 3.0):
    """One ``((tensor,), {})`` case per shape, seeded, entries ~ N(0, scale²)."""
    g = torch.Generator().manual_seed(seed)
    return [((torch.randn(*s, generator=g) * scale,), {}) for s in shapes]
