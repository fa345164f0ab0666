"""Tests of benchmarks/_machine.py: the paired ratios, their formatting and the verdicts
every benchmark page draws from them (a page must not call one server ahead when the
rounds disagree)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
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
