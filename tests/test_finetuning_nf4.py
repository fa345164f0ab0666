"""Tests of finetuning/nf4.py: the NF4 code, block-wise quantization against bitsandbytes,
double quantization, NF4Linear and QLoRA against peft over ``bnb.nn.Linear4bit``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from llmfoundations.finetuning.lora import lora_layers
from llmfoundations.finetuning.nf4 import (
    NF4_CODE,
    NF4Linear,
    NF4Weight,
    QLoRALinear,
    QuantizedAbsmax,
    apply_qlora,
    dequantize_absmax,
    dequantize_nf4,
    dynamic_code,
    nf4_code_from_quantiles,
    quantize_absmax,
    quantize_nf4,
)
from llmfoundations.models import DecoderLM, ModelConfig

V = 50
# shapes and dtypes for the bit-exact comparison: whole blocks, a short last block, an odd
# number of elements, 16-bit inputs, and a SmolLM2-sized projection (5,184 blocks)
ORACLE_CASES = [
    ((96, 128), torch.float32),
    ((7, 45), torch.float32),
    ((33,), torch.float16),
    ((64, 64), torch.bfloat16),
    ((576, 576), torch.float32),
]


@pytest.fixture(scope="module")
def bnbf():
    """bitsandbytes.functional (its CPU kernels are the oracle)."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as bnb_functional

    return bnb_functional


def _weight(shape, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (0.05 * torch.randn(shape, generator=generator)).to(dtype)


# ----------------------------------------------------------------------------- the codes


def test_code_from_normal_quantiles_is_the_table_bit_for_bit():
    code = nf4_code_from_quantiles()
    assert torch.equal(code, NF4_CODE)
    assert code.shape == (16,) and torch.equal(code, code.sort().values)
    assert code[0] == -1 and code[-1] == 1 and code[7] == 0
    assert (code > 0).sum() == 8 and (code < 0).sum() == 7
    # another offset gives another (still valid) code
    other = nf4_code_from_quantiles(0.99)
    assert other[0] == -1 and other[-1] == 1 and not torch.equal(other, code)


def test_codes_equal_bitsandbytes(bnbf):
    assert torch.equal(NF4_CODE, bnbf.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(dynamic_code(), bnbf.create_dynamic_map())
    dyn = dynamic_code()
    assert dyn.shape == (256,) and torch.equal(dyn, dyn.sort().values)
    assert (dyn == 0).sum() == 1 and dyn[-1] == 1 and dyn[dyn > 0].min() < 1e-6


# ----------------------------------------------------------------------------- vs bitsandbytes


@pytest.mark.parametrize("shape, dtype", ORACLE_CASES)
def test_quantize_and_dequantize_are_bit_exact_against_bitsandbytes(bnbf, shape, dtype):
    w = _weight(shape, dtype)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    q = quantize_nf4(w, block_size=64)
    assert torch.equal(q.packed, packed.flatten())
    assert torch.equal(q.absmax, state.absmax)
    theirs = bnbf.dequantize_4bit(packed, state)
    ours = dequantize_nf4(q)
    assert ours.dtype == theirs.dtype == dtype and ours.shape == theirs.shape
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("shape, dtype", ORACLE_CASES)
def test_double_quantization_against_bitsandbytes(bnbf, shape, dtype):
    """Everything equal except where bitsandbytes' CPU search misses the nearest 8-bit
    code: there the codes differ by one step and ours is the nearer one."""
    w = _weight(shape, dtype)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    q = quantize_nf4(w, block_size=64, double_quant=True)
    assert q.double_quant and isinstance(q.absmax, QuantizedAbsmax)
    assert torch.equal(q.packed, packed.flatten())
    assert torch.equal(q.absmax.offset, state.offset)
    assert torch.equal(q.absmax.scale, state.state2.absmax)
    n_blocks = q.absmax.codes.numel()
    ours_idx, theirs_idx = q.absmax.codes.long(), state.absmax.long()
    differ = (ours_idx != theirs_idx).nonzero().flatten()
    if n_blocks > 1:  # one block: absmax - mean = 0, and bitsandbytes divides 0 by 0
        assert len(differ) <= max(1, n_blocks // 200)
        code = dynamic_code().double()
        absmax = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")[1].absmax  # (Nb,)
        scale = q.absmax.scale.repeat_interleave(256)[:n_blocks]  # (Nb,)
        scaled = ((absmax - q.absmax.offset) * (1.0 / scale)).double()  # what is rounded
        for i in differ.tolist():
            assert abs(ours_idx[i] - theirs_idx[i]) == 1
            assert abs(scaled[i] - code[ours_idx[i]]) <= abs(scaled[i] - code[theirs_idx[i]])
    # dequantizing bitsandbytes' own double-quantized state gives its values bit for bit
    theirs_state = NF4Weight(
        packed.flatten(),
        QuantizedAbsmax(state.absmax, state.state2.absmax, state.offset),
        tuple(shape),
        dtype,
        64,
    )
    assert torch.equal(dequantize_nf4(theirs_state), bnbf.dequantize_4bit(packed, state))


# ----------------------------------------------------------------------------- properties


def test_packing_puts_the_first_code_in_the_high_nibble():
    w = NF4_CODE[[15, 0, 7, 8, 3]] * 2.0  # exact code values, absmax 2
    q = quantize_nf4(w, block_size=8)
    assert q.packed.tolist() == [0xF0, 0x78, 0x37]  # odd length: padded with 7 (= 0.0)
    assert q.absmax.tolist() == [2.0]
    assert torch.equal(dequantize_nf4(q), w)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 300),
    block_size=st.sampled_from([2, 16, 64, 100]),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_round_trip_error_and_idempotence(n, block_size, scale, seed):
    w = scale * torch.randn(n, generator=torch.Generator().manual_seed(seed))
    q = quantize_nf4(w, block_size=block_size)
    w_hat = dequantize_nf4(q)
    # every value lands on the nearest code: the error is at most half the widest gap
    # between neighbouring codes (0.7230 -> 1.0), times its block's absmax
    half_gap = (NF4_CODE[1:] - NF4_CODE[:-1]).max() / 2
    absmax = q.absmax.repeat_interleave(block_size)[:n]
    assert ((w_hat - w).abs() <= half_gap * absmax * (1 + 1e-6)).all()
    # the largest magnitude of every block is kept exactly
    blocks = F.pad(w, (0, -n % block_size)).view(-1, block_size)
    torch.testing.assert_close(q.absmax, blocks.abs().amax(1), atol=0, rtol=0)
    # quantizing the dequantized tensor changes nothing
    again = quantize_nf4(w_hat, block_size=block_size)
    assert torch.equal(again.packed, q.packed) and torch.equal(again.absmax, q.absmax)


def test_zero_blocks_and_double_quant_accuracy():
    w = torch.zeros(3, 64)
    w[1] = torch.randn(64)
    assert torch.equal(dequantize_nf4(quantize_nf4(w)), dequantize_nf4(quantize_nf4(w)))
    assert (dequantize_nf4(quantize_nf4(w))[[0, 2]] == 0).all()
    absmax = 0.01 + torch.rand(1000, generator=torch.Generator().manual_seed(0))
    rebuilt = dequantize_absmax(quantize_absmax(absmax))
    assert (rebuilt - absmax).abs().max() < 0.01 * absmax.max()


def test_bits_per_parameter_exact():
    q = quantize_nf4(torch.randn(64 * 256 * 2))  # 512 blocks of 64, 2 blocks of 256 scales
    assert q.nbytes == 16384 + 4 * 512
    assert q.bits_per_parameter == 4.5
    dq = quantize_nf4(torch.randn(64 * 256 * 2), double_quant=True)
    assert dq.nbytes == 16384 + 512 + 4 * 2 + 4  # codes, 8-bit absmax, 2 scales, offset
    assert dq.bits_per_parameter == 4 + 8 / 64 + 32 / (64 * 256) + 32 / (64 * 256 * 2)


def test_quantize_errors():
    with pytest.raises(TypeError, match="w must have dtype float32, bfloat16, float16, got int64"):
        quantize_nf4(torch.ones(8, dtype=torch.long))
    with pytest.raises(TypeError, match="got float64"):
        quantize_nf4(torch.ones(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="w must not be empty"):
        quantize_nf4(torch.ones(0))
    with pytest.raises(ValueError, match="w must be finite"):
        quantize_nf4(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="block_size must be >= 2, got 1"):
        quantize_nf4(torch.ones(8), block_size=1)
    with pytest.raises(TypeError, match="block_size must be an int"):
        quantize_nf4(torch.ones(8), block_size=64.0)
    with pytest.raises(TypeError, match="double_quant must be a bool"):
        quantize_nf4(torch.ones(8), double_quant=1)
    with pytest.raises(TypeError, match="q must be an NF4Weight, got Tensor"):
        dequantize_nf4(torch.ones(8))
    with pytest.raises(TypeError, match="absmax must have dtype float32"):
        quantize_absmax(torch.ones(8, dtype=torch.float16))
    with pytest.raises(TypeError, match="q must be a QuantizedAbsmax"):
        dequantize_absmax(torch.ones(8))
    with pytest.raises(ValueError, match=r"offset must be a float in \(0.5, 1\)"):
        nf4_code_from_quantiles(1.0)


# ----------------------------------------------------------------------------- layers


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_linear_is_the_dequantized_layer(double_quant):
    torch.manual_seed(0)
    linear = nn.Linear(128, 48)
    layer = NF4Linear(linear, double_quant=double_quant)
    q = quantize_nf4(linear.weight.detach(), double_quant=double_quant)
    x = torch.randn(2, 3, 128)
    expected = F.linear(x, dequantize_nf4(q), linear.bias)
    torch.testing.assert_close(layer(x), expected, atol=0, rtol=0)
    assert torch.equal(dequantize_nf4(layer.quantized_weight()), layer.dequantized_weight())
    assert not any(p.requires_grad for p in layer.parameters())
    names = set(layer.state_dict())
    assert names == (
        {"packed", "absmax_codes", "absmax_scale", "absmax_offset", "bias"}
        if double_quant
        else {"packed", "absmax", "bias"}
    )


def _peft_over_bnb_linear4bit(linear: nn.Linear, ours: QLoRALinear):
    bnb = pytest.importorskip("bitsandbytes")
    peft = pytest.importorskip("peft")
    base = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=torch.float32,
        quant_type="nf4",  # the default is "fp4"
        compress_statistics=False,
    )
    base.weight = bnb.nn.Params4bit(
        linear.weight.detach().clone(),
        requires_grad=False,
        quant_type="nf4",
        blocksize=64,
        compress_statistics=False,
    )
    base.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    base = base.to("cpu")  # quantizes

    class Holder(nn.Module):
        def __init__(self, proj):
            super().__init__()
            self.proj = proj

        def forward(self, x):
            return self.proj(x)

    config = peft.LoraConfig(
        r=ours.r, lora_alpha=ours.alpha, target_modules=["proj"], init_lora_weights=False
    )
    layer = peft.get_peft_model(Holder(base), config).base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(ours.lora_A)
        layer.lora_B["default"].weight.copy_(ours.lora_B)
    return layer, base


def test_qlora_equals_peft_lora_over_bnb_linear4bit():
    torch.manual_seed(0)
    linear = nn.Linear(128, 96)
    ours = QLoRALinear(copy.deepcopy(linear), r=8, alpha=16)
    with torch.no_grad():
        ours.lora_B.normal_(0, 0.02)
    theirs, base = _peft_over_bnb_linear4bit(linear, ours)
    assert torch.equal(ours.base.packed, base.weight.data.flatten())
    x = torch.randn(4, 7, 128, requires_grad=True)
    x_theirs = x.detach().clone().requires_grad_(True)
    y, y_theirs = ours(x), theirs(x_theirs)
    torch.testing.assert_close(y, y_theirs, atol=1e-6, rtol=1e-6)
    y.square().sum().backward()
    y_theirs.square().sum().backward()
    torch.testing.assert_close(
        ours.lora_A.grad, theirs.lora_A["default"].weight.grad, atol=1e-5, rtol=1e-6
    )
    torch.testing.assert_close(
        ours.lora_B.grad, theirs.lora_B["default"].weight.grad, atol=1e-5, rtol=1e-6
    )
    torch.testing.assert_close(x.grad, x_theirs.grad, atol=1e-6, rtol=1e-6)


def test_qlora_layer_trains_adapters_only_and_refuses_to_merge():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    layer = QLoRALinear(copy.deepcopy(linear), r=4, alpha=8, double_quant=True)
    trainable = {n: p.numel() for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A": 4 * 64, "lora_B": 32 * 4}
    x = torch.randn(5, 64)
    torch.testing.assert_close(layer(x), layer.base(x), atol=0, rtol=0)  # B = 0
    with pytest.raises(RuntimeError, match="cannot merge into its 4-bit weight"):
        layer.merge()
    with pytest.raises(RuntimeError, match="never merged"):
        layer.unmerge()
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.05)
    merged = layer.to_linear()
    assert isinstance(merged, nn.Linear) and merged.weight.dtype == torch.float32
    torch.testing.assert_close(merged(x), layer(x), atol=1e-5, rtol=1e-5)


def test_apply_qlora_on_a_decoder():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig.llama(V, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2)).eval()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    reference = copy.deepcopy(model)
    with torch.no_grad():  # the same model with its targets' weights rounded to NF4
        for name, module in reference.named_modules():
            if name.rsplit(".", 1)[-1] in targets:
                module.weight.copy_(dequantize_nf4(quantize_nf4(module.weight)))
    names = apply_qlora(model, targets, r=4, alpha=8)
    assert len(names) == 14 and all(isinstance(m, QLoRALinear) for m in lora_layers(model).values())
    ids = torch.randint(0, V, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-6, rtol=1e-6)
    model.train()
    model(ids, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        is_adapter = name.endswith(("lora_A", "lora_B"))
        assert param.requires_grad == is_adapter and (param.grad is not None) == is_adapter, name
    with pytest.raises(TypeError, match="double_quant must be a bool"):
        apply_qlora(copy.deepcopy(reference), ["q_proj"], r=2, alpha=4, double_quant="yes")
    with pytest.raises(ValueError, match="no module named 'query'"):
        apply_qlora(copy.deepcopy(reference), ["query"], r=2, alpha=4)
