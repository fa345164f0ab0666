"""Tests of inference/quantization.py: int8 / int4 weights against torchao (bit for bit),
packing, QuantizedLinear and quantize_model, GPTQ against its column-by-column reference and
against round-to-nearest, and fake quantization with the straight-through estimator
against torchao's QAT ``FakeQuantizedLinear``."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from llmfoundations.inference.quantization import (
    QATLinear,
    QuantizedLinear,
    QuantizedWeight,
    dequantize_weight,
    fake_quantize,
    gptq_hessian,
    gptq_quantize,
    gptq_quantize_reference,
    pack_int4,
    prepare_qat,
    quant_params,
    quantize_model,
    quantize_weight,
    unpack_int4,
)
from llmfoundations.models import DecoderLM, ModelConfig

CONFIGS = [  # (bits, group_size, symmetric)
    (8, None, True),
    (8, 16, True),
    (4, 16, True),
    (4, 16, False),
    (4, None, True),
    (4, 32, False),
]


def _weight(shape, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return (0.05 * torch.randn(shape, generator=generator)).to(dtype)


def _inputs(n, c_in, seed=0, correlation=0.5):
    """Calibration inputs with correlated features, as a layer's activations are."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(c_in) + correlation * torch.randn(c_in, c_in, generator=g) / c_in**0.5
    return torch.randn(n, c_in, generator=g) @ mix  # (N, Cin)


def _output_error(w, qw, x):
    """The calibration objective ||X W^T - X W_hat^T||^2, in float64."""
    delta = dequantize_weight(qw).double() - w.double()  # (Cout, Cin)
    return float(((x.double() @ delta.T) ** 2).sum())


@pytest.fixture(scope="module")
def torchao():
    pytest.importorskip("torchao")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchao.quantization as tq
        import torchao.quantization.qat as qat
        import torchao.quantization.quant_primitives as prim
    return tq, prim, qat


# ----------------------------------------------------------------------------- closed forms


def test_symmetric_scale_is_absmax_over_half_the_code_range():
    w = torch.tensor([[0.3, -1.5, 0.75, 0.0], [2.0, 1.0, -0.5, 0.25]])
    for bits, half in ((8, 127.5), (4, 7.5)):
        scale, zero = quant_params(w, bits)
        assert zero is None
        torch.testing.assert_close(scale, torch.tensor([[1.5], [2.0]]) / half, rtol=0, atol=0)


def test_asymmetric_range_contains_zero_and_zero_point_is_an_integer():
    w = torch.tensor([[0.5, 1.0, 2.0, 3.5]])  # all positive: the range is [0, 3.5]
    scale, zero = quant_params(w, 4, symmetric=False)
    torch.testing.assert_close(scale, torch.tensor([[3.5 / 15]]), rtol=0, atol=0)
    assert zero.tolist() == [[0]]
    w = torch.tensor([[-1.0, 0.6, 2.0, 0.0]])  # range [-1, 2]: step 0.2, -1 at code 0
    scale, zero = quant_params(w, 4, symmetric=False)
    torch.testing.assert_close(scale, torch.tensor([[0.2]]))
    assert zero.tolist() == [[5]]
    qw = quantize_weight(w, 4, symmetric=False)
    assert unpack_int4(qw.codes).tolist() == [[0, 8, 15, 5]]  # 0.0 -> the zero point
    assert dequantize_weight(qw)[0, 3].item() == 0.0


def test_an_all_zero_group_dequantizes_to_zeros():
    w = torch.zeros(2, 8)
    w[1, 4:] = torch.tensor([1.0, -2.0, 3.0, 0.5])
    for bits, g, symmetric in CONFIGS:
        if g is not None and g > 8:
            continue
        qw = quantize_weight(w, bits, 4 if g else None, symmetric=symmetric)
        out = dequantize_weight(qw)
        assert torch.isfinite(out).all()
        assert (out[0] == 0).all() and (out[1, :4] == 0).all()


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 6),
    groups=st.integers(1, 4),
    group_size=st.sampled_from([2, 4, 16]),
    config=st.sampled_from([(8, True), (4, True), (4, False)]),
    per_channel=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_every_weight_is_within_half_a_step(rows, groups, group_size, config, per_channel, seed):
    bits, symmetric = config
    w = _weight((rows, groups * group_size), seed) * (1 + seed % 7)
    g = None if per_channel else group_size
    qw = quantize_weight(w, bits, g, symmetric=symmetric)
    step = qw.scale.repeat_interleave(qw.group_size, dim=1)  # (Cout, Cin)
    error = (dequantize_weight(qw) - w).abs()
    # half a step, plus float32 rounding of (c - z) * s relative to |w|
    assert (error <= step / 2 + 1e-6 * w.abs() + 1e-12).all()


def test_bits_per_parameter():
    w = _weight((16, 576))
    assert quantize_weight(w, 8).bits_per_parameter == pytest.approx(8 + 32 / 576)
    assert quantize_weight(w, 4, 64).bits_per_parameter == pytest.approx(4.5)
    assert quantize_weight(w, 4, 64, symmetric=False).bits_per_parameter == pytest.approx(4.625)
    qw = quantize_weight(w, 4, 32, symmetric=False)
    assert qw.nbytes == 16 * 288 + 16 * 18 * (4 + 1)


def test_input_dtype_is_recorded_and_16_bit_weights_quantize_in_float32():
    w = _weight((4, 32))
    for dtype in (torch.bfloat16, torch.float16):
        qw = quantize_weight(w.to(dtype), 4, 16)
        assert qw.dtype == dtype
        ref = quantize_weight(w.to(dtype).float(), 4, 16)
        assert torch.equal(qw.codes, ref.codes) and torch.equal(qw.scale, ref.scale)


# ----------------------------------------------------------------------------- packing


def test_pack_int4_puts_the_even_column_in_the_high_nibble():
    codes = torch.tensor([[1, 2, 15, 0], [0, 15, 7, 8]], dtype=torch.uint8)
    assert pack_int4(codes).tolist() == [[0x12, 0xF0], [0x0F, 0x78]]


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=0, max_size=2), half=st.integers(0, 6),
       seed=st.integers(0, 10_000))
def test_pack_unpack_round_trip(shape, half, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (*shape, 2 * half), generator=g, dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (*shape, half) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), codes)


def test_four_bit_weights_are_stored_in_half_a_byte():
    qw = quantize_weight(_weight((6, 64)), 4, 32)
    assert qw.codes.shape == (6, 32) and qw.codes.dtype == torch.uint8
    assert int(unpack_int4(qw.codes).max()) <= 15


# ----------------------------------------------------------------------------- torchao


@pytest.mark.parametrize("shape", [(16, 64), (7, 40), (576, 576)])
def test_int8_per_channel_equals_torchao_int8_weight_only(torchao, shape):
    tq, _, _ = torchao
    w = _weight(shape, seed=shape[0])
    model = nn.Sequential(nn.Linear(shape[1], shape[0], bias=False))
    with torch.no_grad():
        model[0].weight.copy_(w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq.quantize_(model, tq.Int8WeightOnlyConfig())
    theirs = model[0].weight
    ours = quantize_weight(w, 8)
    torch.testing.assert_close(dequantize_weight(ours), theirs.dequantize(), rtol=0, atol=0)
    torch.testing.assert_close(ours.scale, theirs.scale.reshape(shape[0], 1), rtol=0, atol=0)
    assert torch.equal(ours.codes.int() - 128, theirs.qdata.int())  # codes = q + 128


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [16, 32, 64])
def test_int4_groups_equal_torchao_affine_primitives(torchao, symmetric, group_size):
    _, prim, _ = torchao
    w = _weight((24, 128), seed=group_size)
    block = (1, group_size)
    if symmetric:  # signed codes [-8, 7], scale absmax / 7.5
        kind, dtype, qmin, qmax = prim.MappingType.SYMMETRIC, torch.int8, -8, 7
    else:  # unsigned codes [0, 15] with an integer zero point
        kind, dtype, qmin, qmax = prim.MappingType.ASYMMETRIC, torch.uint8, 0, 15
    scale, zero = prim.choose_qparams_affine(w, kind, block, dtype, qmin, qmax)
    q = prim.quantize_affine(w, block, scale, zero, dtype, qmin, qmax)
    theirs = prim.dequantize_affine(q, block, scale, zero, dtype, qmin, qmax)

    ours = quantize_weight(w, 4, group_size, symmetric=symmetric)
    torch.testing.assert_close(dequantize_weight(ours), theirs, rtol=0, atol=0)
    torch.testing.assert_close(ours.scale, scale.reshape(24, -1), rtol=0, atol=0)
    codes = unpack_int4(ours.codes).int()
    if symmetric:
        assert torch.equal(codes - 8, q.int())
    else:
        assert torch.equal(ours.zero_point.int(), zero.reshape(24, -1).int())
        assert torch.equal(codes, q.int())


@pytest.mark.parametrize(
    "bits, group_size", [(4, 16), (4, 32), (8, None)], ids=["int4-g16", "int4-g32", "int8-channel"]
)
def test_fake_quantize_equals_torchao_fake_quantized_linear(torchao, bits, group_size):
    _, _, qat = torchao
    dtype = torch.int4 if bits == 4 else torch.int8
    if group_size is None:
        config = qat.IntxFakeQuantizeConfig(dtype, "per_channel", is_symmetric=True)
    else:
        config = qat.IntxFakeQuantizeConfig(dtype, group_size=group_size, is_symmetric=True)
    torch.manual_seed(0)
    theirs = qat.FakeQuantizedLinear(64, 12, bias=True, weight_config=config)
    ours = QATLinear(64, 12, bias=True, bits=bits, group_size=group_size)
    with torch.no_grad():
        ours.weight.copy_(theirs.weight)
        ours.bias.copy_(theirs.bias)
    x = torch.randn(5, 64)
    grad_out = torch.randn(5, 12)
    out_theirs, out_ours = theirs(x), ours(x)
    torch.testing.assert_close(out_ours, out_theirs, rtol=0, atol=0)
    out_theirs.backward(grad_out)
    out_ours.backward(grad_out)
    # torchao's gradient is grad * s * (1 / s): equal up to one rounding
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, rtol=0, atol=0)


# ----------------------------------------------------------------------------- layers


@pytest.mark.parametrize("bits, group_size, symmetric", CONFIGS)
def test_quantized_linear_is_f_linear_with_the_dequantized_weight(bits, group_size, symmetric):
    torch.manual_seed(0)
    linear = nn.Linear(64, 10)
    layer = QuantizedLinear.from_linear(linear, bits, group_size, symmetric=symmetric)
    x = torch.randn(2, 3, 64)
    qw = quantize_weight(linear.weight.detach(), bits, group_size, symmetric=symmetric)
    expected = F.linear(x, dequantize_weight(qw), linear.bias.detach())
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    assert layer(x).shape == (2, 3, 10)
    assert not any(True for _ in layer.parameters())  # frozen: buffers only
    rel = (layer(x) - linear(x)).norm() / linear(x).norm()
    assert rel < (0.01 if bits == 8 else 0.2)


def test_quantized_linear_from_a_quantized_weight_and_in_bfloat16():
    w = _weight((8, 32))
    layer = QuantizedLinear(quantize_weight(w, 4, 16), bias=None)
    x = torch.randn(3, 32)
    out = layer(x.bfloat16())
    assert out.dtype == torch.bfloat16
    expected = F.linear(x.bfloat16(), layer.dequantized_weight().bfloat16())
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert "bits=4" in repr(layer) and "group_size=16" in repr(layer)


def _tiny_llama(tie=True):
    torch.manual_seed(0)
    return DecoderLM(ModelConfig.llama(vocab_size=50, d_model=32, n_layers=2, n_heads=4,
                                       tie_embeddings=tie))


def test_quantize_model_swaps_the_block_linears_and_skips_embeddings_and_head():
    model = _tiny_llama()
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    names = quantize_model(model, 8)
    assert names == [n for n in linears if n != "lm_head"]
    assert all(isinstance(model.get_submodule(n), QuantizedLinear) for n in names)
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.embed.weight
    assert type(model.embed) is nn.Embedding
    with torch.no_grad():
        after = model(ids).logits
    assert (after - before).abs().max() < 0.05 * before.abs().max()


def test_quantize_model_never_quantizes_a_tied_head_and_quantizes_an_untied_one():
    tied, untied = _tiny_llama(tie=True), _tiny_llama(tie=False)
    assert "lm_head" not in quantize_model(tied, 4, 8, skip=())
    assert "lm_head" in quantize_model(untied, 4, 8, skip=())


def test_quantize_model_skips_routers_and_raises_before_changing_anything():
    model = nn.Sequential()
    model.add_module("gate", nn.Linear(16, 4))
    model.add_module("up", nn.Linear(16, 16))
    model.add_module("odd", nn.Linear(24, 16))
    with pytest.raises(ValueError, match="group_size \\(16\\) must divide.*odd.*24"):
        quantize_model(model, 4, 16)
    assert all(type(m) is nn.Linear for m in model)  # nothing was swapped
    assert quantize_model(model, 4, 8) == ["up", "odd"]


# ----------------------------------------------------------------------------- GPTQ


def test_gptq_hessian_is_two_x_transpose_x_over_n():
    x = torch.randn(3, 5, 8)
    rows = x.reshape(-1, 8).double()
    torch.testing.assert_close(gptq_hessian(x), 2 * rows.T @ rows / 15)


@settings(max_examples=20, deadline=None)
@given(
    c_out=st.integers(1, 6),
    groups=st.integers(1, 4),
    group_size=st.sampled_from([4, 8]),
    blocks_per=st.integers(1, 3),
    config=st.sampled_from([(4, True), (4, False), (8, True)]),
    per_channel=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_gptq_blocked_equals_the_column_by_column_reference(
    c_out, groups, group_size, blocks_per, config, per_channel, seed
):
    bits, symmetric = config
    c_in = groups * group_size
    w = _weight((c_out, c_in), seed)
    h = gptq_hessian(_inputs(3 * c_in, c_in, seed))
    g = None if per_channel else group_size
    fast = gptq_quantize(w, h, bits, g, block_size=blocks_per * group_size, symmetric=symmetric)
    slow = gptq_quantize_reference(w, h, bits, g, symmetric=symmetric)
    assert torch.equal(fast.codes, slow.codes)
    torch.testing.assert_close(fast.scale, slow.scale, rtol=1e-6, atol=0)
    if not symmetric:
        assert torch.equal(fast.zero_point, slow.zero_point)


def test_gptq_does_not_depend_on_the_block_size():
    w, h = _weight((8, 64)), gptq_hessian(_inputs(256, 64))
    results = [gptq_quantize(w, h, 4, 16, block_size=b) for b in (16, 32, 48, 64, 128)]
    for qw in results[1:]:
        assert torch.equal(qw.codes, results[0].codes)


def test_gptq_with_uncorrelated_inputs_is_round_to_nearest():
    """A diagonal H: no column's error can be cancelled by another, so nothing moves."""
    w = _weight((8, 32))
    h = torch.diag(torch.rand(32, generator=torch.Generator().manual_seed(0)) + 0.5).double()
    for bits, g, symmetric in [(4, 16, True), (4, 8, False), (8, None, True)]:
        qw = gptq_quantize(w, h, bits, g, block_size=16, symmetric=symmetric)
        rtn = quantize_weight(w, bits, g, symmetric=symmetric)
        assert torch.equal(qw.codes, rtn.codes)
        torch.testing.assert_close(qw.scale, rtn.scale, rtol=0, atol=0)


@settings(max_examples=15, deadline=None)
@given(
    c_out=st.integers(16, 40),
    c_in=st.sampled_from([32, 64]),
    samples_per_column=st.integers(2, 6),
    correlation=st.sampled_from([0.0, 0.5, 1.0]),
    config=st.sampled_from([(4, 16, True), (4, 32, False), (8, None, True), (4, None, True)]),
    seed=st.integers(0, 10_000),
)
def test_gptq_beats_round_to_nearest_on_the_calibration_objective(
    c_out, c_in, samples_per_column, correlation, config, seed
):
    """GPTQ is greedy, so this is not a theorem: on a single row it can lose (found: a
    1 x 24 weight 1.7 times worse). Summed over >= 16 rows it won in 1,600 of 1,600 random
    trials here (worst ratio 0.97, uncorrelated inputs), so the test keeps to that regime."""
    bits, g, symmetric = config
    x = _inputs(samples_per_column * c_in, c_in, seed, correlation)
    w = _weight((c_out, c_in), seed + 1)
    gptq = gptq_quantize(w, gptq_hessian(x), bits, g, block_size=32, symmetric=symmetric)
    rtn = quantize_weight(w, bits, g, symmetric=symmetric)
    assert _output_error(w, gptq, x) <= _output_error(w, rtn, x)


def test_gptq_roughly_halves_the_output_error_on_correlated_inputs():
    x = _inputs(512, 128, correlation=1.0)
    w = _weight((64, 128))
    gptq = gptq_quantize(w, gptq_hessian(x), 4, 32, symmetric=False)
    rtn = quantize_weight(w, 4, 32, symmetric=False)
    assert _output_error(w, gptq, x) < 0.7 * _output_error(w, rtn, x)


def test_gptq_zeroes_a_column_whose_input_was_always_zero():
    x = _inputs(128, 16)
    x[:, 5] = 0
    w = _weight((4, 16))
    qw = gptq_quantize(w, gptq_hessian(x), 4, 8, symmetric=False)
    assert (dequantize_weight(qw)[:, 5] == 0).all()


# ----------------------------------------------------------------------------- QAT


@pytest.mark.parametrize("bits, group_size, symmetric", CONFIGS)
def test_fake_quantize_forward_is_quantize_then_dequantize(bits, group_size, symmetric):
    w = _weight((6, 64), seed=3)
    expected = dequantize_weight(quantize_weight(w, bits, group_size, symmetric=symmetric))
    got = fake_quantize(w, bits, group_size, symmetric=symmetric)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert fake_quantize(w.bfloat16(), bits, group_size, symmetric=symmetric).dtype == torch.bfloat16


@pytest.mark.parametrize("bits, group_size, symmetric", CONFIGS)
def test_straight_through_gradient_is_the_identity_inside_the_range(bits, group_size, symmetric):
    w = _weight((6, 64), seed=4).requires_grad_()
    upstream = torch.randn(6, 64)
    (grad,) = torch.autograd.grad(fake_quantize(w, bits, group_size, symmetric=symmetric), w,
                                  upstream)
    qw = quantize_weight(w.detach(), bits, group_size, symmetric=symmetric)
    g = qw.group_size
    scale = qw.scale.repeat_interleave(g, dim=1)
    zero = 2.0 ** (bits - 1) if symmetric else qw.zero_point.float().repeat_interleave(g, dim=1)
    unclipped = torch.round(w.detach() * (1 / scale)) + zero
    inside = (unclipped >= 0) & (unclipped <= 2**bits - 1)
    assert torch.equal(grad[inside], upstream[inside])  # exactly the identity
    assert (grad[~inside] == 0).all()
    if symmetric:  # the largest weight of each group is the one clipped, by half a step
        assert int((~inside).sum()) <= qw.scale.numel()


def test_qat_linear_converts_to_the_quantized_linear_it_imitated():
    model = _tiny_llama()
    names = prepare_qat(model, 4, 8)
    assert "lm_head" not in names and all(
        isinstance(model.get_submodule(n), QATLinear) for n in names
    )
    ids = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(ids).logits.logsumexp(-1).mean().backward()  # any loss: the weights move
    opt.step()
    with torch.no_grad():
        trained = model(ids).logits
    assert quantize_model(model, 4, 8) == names
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, trained, rtol=0, atol=0)


def test_qat_linear_copies_a_linear():
    linear = nn.Linear(32, 8)
    qat = QATLinear.from_linear(linear, 8)
    assert torch.equal(qat.weight, linear.weight) and qat.weight is not linear.weight
    assert qat.group_size == 32 and "bits=8" in repr(qat)


# ----------------------------------------------------------------------------- bad inputs


def test_bad_arguments_raise_with_the_argument_named():
    w = _weight((4, 32))
    with pytest.raises(ValueError, match="bits must be 4 or 8, got 3"):
        quantize_weight(w, 3)
    with pytest.raises(TypeError, match="bits must be an int"):
        quantize_weight(w, True)
    with pytest.raises(TypeError, match="bits must be an int"):
        quantize_weight(w, 8.0)
    with pytest.raises(ValueError, match="group_size \\(12\\) must divide.*32"):
        quantize_weight(w, 4, 12)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        quantize_weight(w, 8, 1)
    with pytest.raises(TypeError, match="group_size must be an int"):
        quantize_weight(w, 8, 16.0)
    with pytest.raises(ValueError, match="even Cin"):
        quantize_weight(_weight((4, 33)), 4)
    with pytest.raises(TypeError, match="w must have dtype float32, bfloat16, float16, got int64"):
        quantize_weight(torch.ones(4, 32, dtype=torch.long), 8)
    with pytest.raises(ValueError, match="w must have 2 dimensions"):
        quantize_weight(torch.ones(32), 8)
    with pytest.raises(ValueError, match="w must not be empty"):
        quantize_weight(torch.ones(0, 32), 8)
    with pytest.raises(ValueError, match="finite"):
        quantize_weight(torch.full((2, 8), float("nan")), 8)
    with pytest.raises(TypeError, match="symmetric must be a bool"):
        quantize_weight(w, 4, 16, symmetric=1)
    with pytest.raises(TypeError, match="qw must be a QuantizedWeight"):
        dequantize_weight(w)
    with pytest.raises(TypeError, match="codes must have dtype uint8"):
        pack_int4(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="even last dimension"):
        pack_int4(torch.tensor([1, 2, 3], dtype=torch.uint8))
    with pytest.raises(ValueError, match="< 16"):
        pack_int4(torch.tensor([1, 16], dtype=torch.uint8))
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        fake_quantize(w, 2)
    with pytest.raises(ValueError, match="group_size \\(24\\) must divide"):
        prepare_qat(nn.Sequential(nn.Linear(32, 4)), 4, 24)
    with pytest.raises(TypeError, match="x must have dtype"):
        gptq_hessian(torch.ones(4, 3, dtype=torch.long))


def test_bad_gptq_arguments_raise():
    w = _weight((4, 32))
    h = gptq_hessian(_inputs(64, 32))
    with pytest.raises(ValueError, match="hessian must be \\(Cin, Cin\\)"):
        gptq_quantize(w, h[:16, :16], 4, 16)
    with pytest.raises(TypeError, match="hessian must have dtype"):
        gptq_quantize(w, h.half(), 4, 16)
    bad = h.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="hessian must be finite"):
        gptq_quantize(w, bad, 4, 16)
    with pytest.raises(ValueError, match="damp must be >= 0"):
        gptq_quantize(w, h, 4, 16, damp=-0.1)
    with pytest.raises(ValueError, match="block_size \\(24\\) must be a multiple of group_size \\(16\\)"):
        gptq_quantize(w, h, 4, 16, block_size=24)
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        gptq_quantize(w, h, 4, 16, block_size=0)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        gptq_quantize_reference(w, h, 2, 16)
    with pytest.raises(ValueError, match="group_size \\(5\\) must divide"):
        gptq_quantize_reference(w, h, 8, 5)


def test_bad_layers_and_containers_raise():
    w = _weight((4, 32))
    qw = quantize_weight(w, 4, 16)
    with pytest.raises(TypeError, match="weight must be a QuantizedWeight"):
        QuantizedLinear(w)
    with pytest.raises(ValueError, match="bias must have 4 elements"):
        QuantizedLinear(qw, torch.zeros(5))
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        QuantizedLinear.from_linear(nn.Conv1d(2, 2, 1), 8)
    with pytest.raises(ValueError, match="codes must have shape \\(4, 16\\)"):
        QuantizedWeight(qw.codes[:, :8], qw.scale, None, 4, 16, (4, 32), torch.float32)
    with pytest.raises(ValueError, match="scale must have shape \\(4, 2\\)"):
        QuantizedWeight(qw.codes, qw.scale[:, :1], None, 4, 16, (4, 32), torch.float32)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        QuantizedWeight(qw.codes, qw.scale, None, 2, 16, (4, 32), torch.float32)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        quantize_model("model", 8)
    with pytest.raises(TypeError, match="skip must be a sequence of str"):
        quantize_model(nn.Sequential(nn.Linear(4, 4)), 8, skip="lm_head")
    with pytest.raises(ValueError, match="group_size \\(16\\) must divide the in-features of the layer"):
        QATLinear(24, 4, bits=4, group_size=16)
    with pytest.raises(TypeError, match="model is itself an nn.Linear"):
        quantize_model(nn.Linear(4, 4), 8)
