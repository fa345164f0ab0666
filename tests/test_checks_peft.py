"""The lab 03-4 checks grade: right answers pass, plausible wrong ones fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.

The check's parameter formula is held against the models themselves: the trainable
parameters that ``apply_lora``, ``apply_qlora``, ``apply_adapters`` and ``SoftPrompt``
create on Llama-style ``DecoderLM``s, and the numbers the chapter page states for
SmolLM2-135M.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmfoundations import checks
from llmfoundations.checks import peft as ch
from llmfoundations.finetuning.adapters import apply_adapters
from llmfoundations.finetuning.lora import apply_lora
from llmfoundations.finetuning.nf4 import apply_qlora
from llmfoundations.finetuning.prompt_tuning import SoftPrompt
from llmfoundations.models import DecoderLM, ModelConfig

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# ------------------------------------------------------------- trainable parameters


def good_count(method, vocab_size, d_model, n_layers, d_ff, kv_dim, r=8, bottleneck=64,
               n_virtual=20):
    c, f, k = d_model, d_ff, kv_dim
    per_linear = {"q": (c, c), "k": (c, k), "v": (c, k), "o": (c, c), "gate": (c, f),
                  "up": (c, f), "down": (f, c)}
    if method == "full":
        weights = sum(a * b for a, b in per_linear.values())
        return vocab_size * c + n_layers * (weights + 2 * c) + c
    if method in ("lora", "qlora"):
        return n_layers * sum(r * (a + b) for a, b in per_linear.values())
    if method == "adapters":
        return n_layers * 2 * (c * bottleneck + bottleneck + bottleneck * c + c)
    return n_virtual * c


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("shape", [(16, 64, 2, 176, 32), (100, 48, 3, 128, 48)])
def test_reference_count_equals_the_models(shape):
    vocab, c, n_layers, f, k = shape
    config = ModelConfig.llama(vocab, d_model=c, n_layers=n_layers, n_heads=4,
                               n_kv_heads=4 * k // c, d_ff=f)
    assert config.kv_heads * config.head_dim == k
    ref = ch._reference_trainable
    assert _trainable(DecoderLM(config)) == ref("full", *shape)
    model = DecoderLM(config)
    apply_lora(model, LINEARS, r=4, alpha=8)
    assert _trainable(model) == ref("lora", *shape, r=4)
    model = DecoderLM(config)
    apply_qlora(model, LINEARS, r=4, alpha=8)
    assert _trainable(model) == ref("qlora", *shape, r=4)
    model = DecoderLM(config)
    apply_adapters(model, bottleneck=16)
    assert _trainable(model) == ref("adapters", *shape, bottleneck=16)
    prompt = SoftPrompt(8, c)
    assert prompt.weight.numel() == ref("prompt", *shape, n_virtual=8)


def test_reference_count_matches_the_chapter_page_for_smollm2():
    smol = (49_152, 576, 30, 1_536, 192)
    ref = ch._reference_trainable
    assert ref("full", *smol) == 134_515_008
    assert ref("lora", *smol) == ref("qlora", *smol) == 2_442_240
    assert ref("adapters", *smol) == 4_462_080
    assert ref("prompt", *smol) == 11_520


def test_count_check_passes_a_correct_answer(capsys):
    checks.check_peft_trainable_parameters(good_count)
    assert "✔ peft_trainable_parameters: all 23 cases" in capsys.readouterr().out


def test_count_check_accepts_an_integral_float_or_tensor():
    checks.check_peft_trainable_parameters(lambda *a, **k: float(good_count(*a, **k)))
    checks.check_peft_trainable_parameters(lambda *a, **k: torch.tensor(good_count(*a, **k)))


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ({"square": True}, "not every layer is C x C"),
        ({"half": True}, "both A"),
        ({"no_bias": True}, "biases"),
        ({"one_adapter": True}, "two adapters per block"),
        ({"untied": True}, "tied"),
        ({"prompt_vocab": True}, "not of the vocabulary"),
    ],
)
def test_count_check_names_the_mistake(mistake, hint):
    def wrong(*args, **kwargs):
        return ch._reference_trainable(*args, **kwargs, **mistake)

    with pytest.raises(AssertionError, match=hint):
        checks.check_peft_trainable_parameters(wrong)


def test_count_check_names_qlora_counted_differently():
    def wrong(method, *args, **kwargs):
        if method == "qlora":
            return good_count("lora", *args, **kwargs) // 2
        return good_count(method, *args, **kwargs)

    with pytest.raises(AssertionError, match="same adapters as LoRA"):
        checks.check_peft_trainable_parameters(wrong)


def test_count_check_rejects_a_wrong_type_and_a_wrong_default():
    with pytest.raises(AssertionError, match="must return an int"):
        checks.check_peft_trainable_parameters(lambda *a, **k: str(good_count(*a, **k)))

    def default_r_4(method, vocab_size, d_model, n_layers, d_ff, kv_dim, r=4, bottleneck=64,
                    n_virtual=20):
        return good_count(method, vocab_size, d_model, n_layers, d_ff, kv_dim, r, bottleneck,
                          n_virtual)

    with pytest.raises(AssertionError, match="peft_trainable_parameters"):
        checks.check_peft_trainable_parameters(default_r_4)


# ------------------------------------------------------------------- the adapter


def good_adapter(h, w_down, b_down, w_up, b_up):
    z = F.linear(h, w_down, b_down)  # (..., M)
    return h + F.linear(F.gelu(z), w_up, b_up)


def test_adapter_check_passes_a_correct_answer(capsys):
    checks.check_bottleneck_adapter(good_adapter)
    assert "✔ bottleneck_adapter: all 4 cases" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (ch._no_residual, "adds its input back"),
        (ch._relu, "not ReLU"),
        (ch._tanh_gelu, "exact GELU"),
        (ch._activation_last, "between W_down and W_up"),
        (ch._no_up_bias, "b_up"),
    ],
)
def test_adapter_check_names_the_mistake(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        checks.check_bottleneck_adapter(wrong)


def test_adapter_check_rejects_transposed_weights():
    def transposed(h, w_down, b_down, w_up, b_up):
        return h + F.gelu(h @ w_up + b_down) @ w_down + b_up

    with pytest.raises(AssertionError, match="bottleneck_adapter"):
        checks.check_bottleneck_adapter(transposed)
