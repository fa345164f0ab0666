"""Tests of benchmarks/_machine.py: the paired ratios, their formatting and the verdicts
every benchmark page draws from them (a page must not call one server ahead when the
rounds disagree)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _machine as machine  # noqa: E402
from _machine import command, compare, fmt_ratio, paired, percentile  # noqa: E402


def test_paired_takes_each_ratio_within_its_round():
    # a machine twice as slow in round 2: per-round ratios are both 2, best-of would say 4
    assert paired([2.0, 1.0], [1.0, 0.5]) == (2.0, 2.0, 2.0)
    assert paired([4.0, 1.0, 3.0], [1.0, 1.0, 1.0]) == (3.0, 1.0, 4.0)
    assert paired([1.0, 3.0], [1.0, 1.0])[0] == 2.0  # an even count: the middle of the two


def test_paired_refuses_unequal_or_empty_rounds():
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired([], [])


def test_fmt_ratio_shows_the_range_unless_it_rounds_away():
    assert fmt_ratio((1.18, 1.08, 1.32)) == "1.18 (1.08-1.32)"
    assert fmt_ratio((1.001, 1.0, 1.002)) == "1.00"
    assert fmt_ratio((8.84, 8.6, 9.1), 1) == "8.8 (8.6-9.1)"


def test_compare_needs_every_round_on_one_side():
    words = ("ahead", "behind", "mixed")
    assert compare((1.2, 1.01, 1.3), *words) == "ahead"
    assert compare((0.9, 0.8, 0.99), *words) == "behind"
    assert compare((1.2, 0.95, 1.3), *words) == "mixed"  # a median above 1 is not enough
    assert compare((1.0, 1.0, 1.0), *words) == "mixed"


def test_percentile_is_numpys_linear_default():
    np = pytest.importorskip("numpy")
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    for q in (0.0, 0.5, 0.9, 0.95, 1.0):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, 100 * q)))


def test_command_records_the_flags(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["serving.py", "--rounds", "2"])
    assert command("serving.py") == "python benchmarks/serving.py --rounds 2"


# ------------------------------------- from a mutation review (each kills a surviving mutant)


def test_paired_divides_within_each_round_not_the_sorted_lists():
    # sorted separately, [1, 2] / [1, 2] would say 1.00 every round
    assert machine.paired([1.0, 2.0], [2.0, 1.0]) == (1.25, 0.5, 2.0)


def test_compare_says_below_only_when_every_round_is_under_one():
    words = ("ahead", "behind", "mixed")
    assert machine.compare((0.95, 0.9, 1.05), *words) == "mixed"  # a median under 1 is not enough


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 6
model\t\t: 85
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2

"""


@pytest.mark.parametrize(
    "flags, isa",
    [("avx2 avx512f avx512_bf16", "AVX-512 with BF16"), ("avx2 avx512f", "AVX-512"), ("avx2", "AVX2")],
)
def test_cpu_name_gives_the_first_processors_family_model_and_widest_isa(monkeypatch, flags, isa):
    text = CPUINFO.replace("avx avx2 avx512f avx512_bf16", flags, 1)
    monkeypatch.setattr(machine, "_model_name", lambda: "AMD EPYC")
    monkeypatch.setattr(
        machine, "Path", lambda p: types.SimpleNamespace(read_text=lambda: text)
    )
    assert machine.cpu_name() == f"AMD EPYC (family 25 model 17, {isa})"


def test_publish_writes_nothing_on_a_mismatch_or_when_told_not_to(tmp_path, capsys):
    path = tmp_path / "results.md"
    with pytest.raises(SystemExit, match="not written: outputs differ"):
        machine.publish(["| a |"], path, mismatch="outputs differ")
    assert not path.exists()
    machine.publish(["| a |"], path, write=False)
    assert not path.exists()
    machine.publish(["| a |"], path)
    assert path.read_text() == "| a |\n"
    assert "| a |" in capsys.readouterr().out
