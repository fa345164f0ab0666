"""The Lab 03-2 (LoRA) checks grade: right answers pass, plausible wrong ones fail.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
The references inside the checks are held against the package (``LoRALinear``,
``apply_lora``) and against hand-worked numbers (SmolLM2's 460,800).
"""

from __future__ import annotations

import math

import pytest
import torch

from llmfoundations import checks
from llmfoundations.checks import lora as ch

# ------------------------------------------------------------------ delta weight


def good_delta_weight(A, B, alpha, rslora=False):
    r = A.shape[0]
    scaling = alpha / math.sqrt(r) if rslora else alpha / r
    return scaling * B @ A


def test_delta_weight_check_passes_a_correct_answer(capsys):
    checks.check_lora_delta_weight(good_delta_weight)
    assert "✔ lora_delta_weight: all 8 cases" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda A, B, alpha, rslora=False: B @ A, "left out the scale"),
        (lambda A, B, alpha, rslora=False: alpha * B @ A, "not alpha: divide by the rank"),
        (lambda A, B, alpha, rslora=False: alpha * A.shape[0] * B @ A, "not multiplied"),
        (lambda A, B, alpha, rslora=False: alpha / B.shape[0] * B @ A, "A.shape\\[0\\]"),
        (lambda A, B, alpha, rslora=False: alpha / A.shape[0] * B @ A, "alpha / sqrt\\(r\\)"),
        (lambda A, B, alpha, rslora=False: alpha / A.shape[0] ** 0.5 * B @ A, "rsLoRA's scale"),
        (lambda A, B, alpha, rslora=False: good_delta_weight(A, B, alpha, rslora).T, None),
        (lambda A, B, alpha, rslora=False: good_delta_weight(A, B, alpha, not rslora), None),
    ],
)
def test_delta_weight_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="lora_delta_weight") as info:
        checks.check_lora_delta_weight(wrong)
    if hint is not None:
        assert "Hint:" in str(info.value)
        assert info.match(hint)


def test_delta_weight_a_times_b_fails_on_the_shapes():
    with pytest.raises(RuntimeError):  # (r, Cin) @ (Cout, r): the shapes do not chain
        checks.check_lora_delta_weight(lambda A, B, alpha, rslora=False: A @ B)


def test_delta_weight_reference_is_the_package_layer():
    layer = ch._layer(3, 12, 20, 4, 8.0, rslora=True)
    got = ch._reference_delta_weight(layer.lora_A.detach(), layer.lora_B.detach(), 8.0, True)
    torch.testing.assert_close(got, layer.delta_weight().detach())


def test_delta_weight_check_leaves_the_global_generator_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    checks.check_lora_delta_weight(good_delta_weight)
    torch.testing.assert_close(torch.rand(3), expected)


# ----------------------------------------------------------------------- forward


def good_forward(x, W, A, B, scaling):
    low_rank = x @ A.T  # (..., r)
    return x @ W.T + scaling * (low_rank @ B.T)


def merged_forward(x, W, A, B, scaling):  # also right: form dW, then one product
    return x @ (W + scaling * B @ A).T


def test_forward_check_passes_correct_answers(capsys):
    checks.check_lora_forward(good_forward)
    checks.check_lora_forward(merged_forward)
    assert capsys.readouterr().out.count("✔ lora_forward: all 4 cases") == 2


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda x, W, A, B, s: x @ W.T + (x @ A.T) @ B.T, "left out the scale"),
        (lambda x, W, A, B, s: s * (x @ W.T + (x @ A.T) @ B.T), "only the low-rank path"),
        (lambda x, W, A, B, s: x @ W + s * ((x @ A.T) @ B.T), None),  # shape error
        (lambda x, W, A, B, s: x @ W.T + s * ((x @ A) @ B), None),  # shape error
        (lambda x, W, A, B, s: x @ W.T, "frozen layer alone"),
        (lambda x, W, A, B, s: x @ W.T + ((x @ A.T) @ B.T) / s, None),
    ],
)
def test_forward_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises((AssertionError, RuntimeError)) as info:
        checks.check_lora_forward(wrong)
    if hint is not None:
        assert "Hint:" in str(info.value)
        assert info.match(hint)


# --------------------------------------------------------------- parameter count


def good_parameter_count(d_model, n_heads, n_kv_heads, d_ff, n_layers, targets, r):
    kv = n_kv_heads * (d_model // n_heads)
    sizes = {
        "q_proj": d_model + d_model,
        "k_proj": d_model + kv,
        "v_proj": d_model + kv,
        "o_proj": d_model + d_model,
        "gate_proj": d_model + d_ff,
        "up_proj": d_model + d_ff,
        "down_proj": d_ff + d_model,
    }
    return n_layers * r * sum(sizes[t] for t in targets)


def test_parameter_count_check_passes_a_correct_answer(capsys):
    checks.check_lora_parameter_count(good_parameter_count)
    assert "✔ lora_parameter_count: all 7 cases" in capsys.readouterr().out


def test_parameter_count_reference_matches_the_chapter():
    smol = (576, 9, 3, 1536, 30)
    assert ch._reference_parameter_count(*smol, ("q_proj", "v_proj"), 8) == 460_800
    assert ch._reference_parameter_count(*smol, ch._LINEARS, 8) == 2_442_240


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda d, h, hkv, f, n, t, r: good_parameter_count(d, h, h, f, n, t, r), "grouped-query"),
        (lambda d, h, hkv, f, n, t, r: good_parameter_count(d, h, hkv, f, 1, t, r), "n_layers"),
        (lambda d, h, hkv, f, n, t, r: good_parameter_count(d, h, hkv, f, n, t, r) + 1, None),
        (lambda d, h, hkv, f, n, t, r: n * r * len(t) * 2 * d, None),  # every layer d -> d
    ],
)
def test_parameter_count_check_rejects_wrong_answers(wrong, hint):
    with pytest.raises(AssertionError, match="lora_parameter_count") as info:
        checks.check_lora_parameter_count(wrong)
    if hint is not None:
        assert info.match(hint)
