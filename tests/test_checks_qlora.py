"""The Lab 03-3 checks grade: right answers pass, plausible wrong ones fail with a hint.

Blank answers and non-functions are covered for every check in ``tests/test_checks.py``.
The references inside the checks are held against independent ones here: an argmin over
the code (bitsandbytes' rule is the nearest value), unpacking by hand, and
``NF4Weight.nbytes`` of real quantized tensors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmfoundations import checks
from llmfoundations.checks import qlora as ch
from llmfoundations.finetuning.nf4 import NF4_CODE, quantize_nf4

# ----------------------------------------------------------------- blockwise_quantize


def good_blockwise_quantize(w, code, block_size):
    x = w.reshape(-1).float()
    n_blocks = -(-x.numel() // block_size)
    blocks = F.pad(x, (0, n_blocks * block_size - x.numel())).view(n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / absmax.clamp(min=1e-38)[:, None]  # divides (bitsandbytes multiplies)
    indices = (scaled.reshape(-1, 1) - code.reshape(1, -1)).abs().argmin(dim=1)[: x.numel()]
    return indices, absmax


def loop_blockwise_quantize(w, code, block_size):
    """A plain-Python loop over blocks, with int32 indices and a list-built absmax."""
    x = w.reshape(-1).tolist()
    indices, absmax = [], []
    for start in range(0, len(x), block_size):
        block = x[start : start + block_size]
        m = max(abs(v) for v in block)
        absmax.append(m)
        for v in block:
            s = v / m if m > 0 else 0.0
            indices.append(min(range(len(code)), key=lambda k: abs(s - code[k].item())))
    return torch.tensor(indices, dtype=torch.int32), torch.tensor(absmax)


@pytest.mark.parametrize("answer", [good_blockwise_quantize, loop_blockwise_quantize])
def test_blockwise_quantize_check_passes_correct_answers(answer, capsys):
    checks.check_blockwise_quantize(answer)
    assert "✔ blockwise_quantize: all 6 cases" in capsys.readouterr().out


def test_blockwise_reference_is_the_packages_nf4():
    for (w, code, block_size), _ in ch._blockwise_cases():
        if code is not NF4_CODE:
            continue
        indices, absmax = ch._ref_blockwise_quantize(w, code, block_size)
        q = quantize_nf4(w, block_size)
        unpacked = torch.stack([q.packed >> 4, q.packed & 15], dim=1).reshape(-1)[: w.numel()]
        assert torch.equal(indices, unpacked.long())
        assert torch.equal(absmax, q.absmax)
        mine, my_absmax = good_blockwise_quantize(w, code, block_size)
        assert torch.equal(mine, indices) and torch.equal(my_absmax, absmax)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (ch._wrong_global_absmax, "one absmax per block"),
        (ch._wrong_signed_max, "largest magnitude"),
        (ch._wrong_column_major, "row by row"),
        (ch._wrong_round_down, "nearest code value"),
        (ch._wrong_drop_last_block, "last block"),
    ],
)
def test_blockwise_quantize_check_rejects_known_mistakes_with_a_hint(wrong, hint):
    with pytest.raises(AssertionError, match="blockwise_quantize") as err:
        checks.check_blockwise_quantize(wrong)
    assert hint in str(err.value)


def test_blockwise_quantize_check_rejects_other_wrong_answers():
    def no_tuple(w, code, block_size):
        return good_blockwise_quantize(w, code, block_size)[0]

    def dequantized(w, code, block_size):  # values instead of indices
        idx, m = good_blockwise_quantize(w, code, block_size)
        return code[idx], m

    for wrong in (no_tuple, dequantized):
        with pytest.raises(AssertionError, match="blockwise_quantize"):
            checks.check_blockwise_quantize(wrong)


# ----------------------------------------------------------------------- pack_nibbles


def good_pack_nibbles(indices):
    if indices.numel() % 2:
        indices = torch.cat([indices, torch.tensor([7])])
    pairs = indices.view(-1, 2)
    return (pairs[:, 0] * 16 + pairs[:, 1]).to(torch.uint8)


def test_pack_nibbles_check_passes_a_correct_answer(capsys):
    checks.check_pack_nibbles(good_pack_nibbles)
    assert "✔ pack_nibbles: all 5 cases" in capsys.readouterr().out


def test_pack_reference_round_trips_by_hand():
    idx = torch.tensor([12, 5, 8, 0, 3])
    packed = ch._ref_pack_nibbles(idx)
    assert packed.tolist() == [0xC5, 0x80, 0x37]
    assert [v for b in packed.tolist() for v in (b >> 4, b & 15)] == [12, 5, 8, 0, 3, 7]


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (ch._wrong_low_first, "HIGH nibble"),
        (ch._wrong_pad_zero, "pad an odd length with index 7"),
        (ch._wrong_int64, "uint8"),
    ],
)
def test_pack_nibbles_check_rejects_known_mistakes_with_a_hint(wrong, hint):
    with pytest.raises(AssertionError, match="pack_nibbles") as err:
        checks.check_pack_nibbles(wrong)
    assert hint in str(err.value)


def test_pack_nibbles_check_rejects_dropping_the_odd_index():
    def drops_last(indices):
        return good_pack_nibbles(indices[: indices.numel() // 2 * 2])

    with pytest.raises(AssertionError, match="pack_nibbles"):
        checks.check_pack_nibbles(drops_last)


# ------------------------------------------------------------------------- nf4_nbytes


def good_nf4_nbytes(n, block_size=64, double_quant=False):
    n_blocks = -(-n // block_size)
    if double_quant:
        return -(-n // 2) + n_blocks + 4 * -(-n_blocks // 256) + 4
    return -(-n // 2) + 4 * n_blocks


def test_nf4_nbytes_check_passes_a_correct_answer(capsys):
    checks.check_nf4_nbytes(good_nf4_nbytes)
    assert "✔ nf4_nbytes: all 7 cases" in capsys.readouterr().out


@pytest.mark.parametrize("n", [1, 64, 100, 331_776, 64 * 257])
@pytest.mark.parametrize("double_quant", [False, True])
def test_nbytes_formula_equals_real_tensors(n, double_quant):
    q = quantize_nf4(torch.randn(n), 64, double_quant=double_quant)
    assert good_nf4_nbytes(n, 64, double_quant) == q.nbytes
    stored = q.packed.numel() + (
        q.absmax.codes.numel() + 4 * q.absmax.scale.numel() + 4 if double_quant else 4 * q.absmax.numel()
    )
    assert stored == q.nbytes


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (ch._wrong_no_absmax, "count the scales"),
        (ch._wrong_fp16_absmax, "float32: 4 bytes"),
        (ch._wrong_floor_blocks, "round up"),
        (ch._wrong_no_mean, "mean of the absmax"),
        (ch._wrong_no_scales, "one float32 scale per 256"),
    ],
)
def test_nf4_nbytes_check_rejects_known_mistakes_with_a_hint(wrong, hint):
    with pytest.raises(AssertionError, match="nf4_nbytes") as err:
        checks.check_nf4_nbytes(wrong)
    assert hint in str(err.value)


def test_nf4_nbytes_check_rejects_bits_and_floats():
    with pytest.raises(AssertionError, match="nf4_nbytes"):
        checks.check_nf4_nbytes(lambda n, block_size=64, double_quant=False: 8 * good_nf4_nbytes(n, block_size, double_quant))
    with pytest.raises(AssertionError, match="int"):
        checks.check_nf4_nbytes(lambda n, block_size=64, double_quant=False: float(good_nf4_nbytes(n, block_size, double_quant)))
