"""Tests of the timeline data (llmfoundations/timeline.yaml), its loader and its figures.

The schema is checked twice: by the loader (``load_timeline``) and, independently,
on the raw YAML here, so a loosened loader cannot hide a bad row. The facts
themselves rest on the cited sources; only a few anchor numbers are pinned.
"""

from __future__ import annotations

import dataclasses
import re
from importlib import resources

import plotly.graph_objects as go
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfoundations.evolution import (
    FIELDS,
    UNKNOWN,
    ModelRecord,
    as_rows,
    format_count,
    load_timeline,
    to_html,
)
from llmfoundations.scaling import CHINCHILLA_FIT, compute_optimal
from llmfoundations.viz import params_vs_tokens_figure, timeline_figure

# Every family named in the syllabus (chapter 2), spelled as in the YAML.
SYLLABUS_FAMILIES = [
    "Transformer",
    "GPT-1",
    "BERT",
    "GPT-2",
    "GPT-3",
    "InstructGPT",
    "GPT-3.5",
    "GPT-4",
    "LaMDA",
    "Gopher",
    "GLaM",
    "Chinchilla",
    "PaLM",
    "PaLM 2",
    "Gemini 1.0",
    "Gemini 1.5",
    "Gemma",
    "Gemma 2",
    "Llama 1",
    "Llama 2",
    "Llama 3",
    "Mixtral 8x7B",
    "o1",
    "DeepSeek-R1",
    "Qwen1.5",
    "Yi",
    "Grok-1",
    "Grok 3",
]

# The schema, written out independently of the module's FIELDS.
EXPECTED_FIELDS = {
    "name",
    "year",
    "month",
    "organisation",
    "parameters_total",
    "parameters_active",
    "training_tokens",
    "context_length",
    "architecture",
    "moe",
    "modalities",
    "open_weights",
    "licence",
    "sizes",
    "key_idea",
    "source",
    "extra_sources",
    "notes",
}
COUNT_FIELDS = ("parameters_total", "parameters_active", "training_tokens", "context_length")
# Spellings of "we don't know" that must never appear instead of the literal "unknown".
FORBIDDEN_UNKNOWNS = {"unknown", "n/a", "na", "none", "null", "?", "tbd", "undisclosed", "-"}


@pytest.fixture(scope="module")
def raw_rows() -> list[dict]:
    text = resources.files("llmfoundations").joinpath("timeline.yaml").read_text("utf-8")
    rows = yaml.safe_load(text)
    assert isinstance(rows, list)
    return rows


@pytest.fixture(scope="module")
def records() -> list[ModelRecord]:
    return load_timeline()


# --- the shipped data ---------------------------------------------------------------


def test_every_syllabus_family_is_present(records):
    names = {r.name for r in records}
    missing = [f for f in SYLLABUS_FAMILIES if f not in names]
    assert not missing, f"families missing from timeline.yaml: {missing}"


def test_every_row_has_exactly_the_schema_fields(raw_rows):
    assert set(FIELDS) == EXPECTED_FIELDS
    for row in raw_rows:
        assert set(row) == EXPECTED_FIELDS, row.get("name")


def test_no_duplicate_names(raw_rows):
    names = [row["name"].casefold() for row in raw_rows]
    assert len(names) == len(set(names))


def test_years_months_plausible_and_sorted(raw_rows, records):
    for row in raw_rows:
        assert type(row["year"]) is int and 2017 <= row["year"] <= 2025, row["name"]
        assert row["month"] == UNKNOWN or (type(row["month"]) is int and 1 <= row["month"] <= 12)
    keys = [r.decimal_year for r in records]
    assert keys == sorted(keys)


def test_sources_are_https_urls(raw_rows):
    url = re.compile(r"^https://[\w.-]+\.[a-z]{2,}(/\S*)?$")
    for row in raw_rows:
        assert url.match(row["source"]), (row["name"], row["source"])
        assert isinstance(row["extra_sources"], list)
        for extra in row["extra_sources"]:
            assert url.match(extra), (row["name"], extra)


def test_field_types(raw_rows):
    for row in raw_rows:
        name = row["name"]
        for key in COUNT_FIELDS:
            value = row[key]
            assert value == UNKNOWN or (type(value) is int and value > 0), (name, key, value)
        for key in ("moe", "open_weights"):
            assert row[key] == UNKNOWN or type(row[key]) is bool, (name, key)
        assert row["architecture"] in {"encoder", "decoder", "encoder-decoder", UNKNOWN}
        mods = row["modalities"]
        allowed = {"text", "image", "audio", "video"}
        assert mods == UNKNOWN or (mods and set(mods) <= allowed and len(set(mods)) == len(mods))
        assert row["sizes"] == UNKNOWN or (
            isinstance(row["sizes"], list) and all(isinstance(s, str) for s in row["sizes"])
        ), name
        for key in ("name", "organisation", "licence", "key_idea", "notes"):
            assert isinstance(row[key], str), (name, key)
        assert len(row["key_idea"].split()) >= 8, f"{name}: key_idea should be a sentence"


def test_unknown_is_only_the_literal_string(raw_rows):
    def walk(value, where):
        assert value is not None, f"{where} is null"
        if isinstance(value, str) and value.strip().casefold() in FORBIDDEN_UNKNOWNS:
            assert value == UNKNOWN, f"{where} spells unknown as {value!r}"
        if isinstance(value, list):
            for item in value:
                walk(item, where)

    for row in raw_rows:
        for key, value in row.items():
            walk(value, f"{row['name']}.{key}")


def test_active_parameters_consistent_with_moe(raw_rows):
    for row in raw_rows:
        total, active = row["parameters_total"], row["parameters_active"]
        if UNKNOWN in (total, active):
            continue
        assert active <= total, row["name"]
        if row["moe"] is False:
            assert active == total, row["name"]
        if row["moe"] is True:
            assert active < total, row["name"]


def test_closed_weights_are_proprietary(raw_rows):
    for row in raw_rows:
        if row["open_weights"] is False:
            assert row["licence"] == "proprietary", row["name"]
        if row["open_weights"] is True:
            assert row["licence"] != "proprietary", row["name"]


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("GPT-3", "parameters_total", 175_000_000_000),
        ("GPT-3", "training_tokens", 300_000_000_000),
        ("GPT-3", "context_length", 2048),
        ("Chinchilla", "parameters_total", 70_000_000_000),
        ("Chinchilla", "training_tokens", 1_400_000_000_000),
        ("Gopher", "parameters_total", 280_000_000_000),
        ("PaLM", "training_tokens", 780_000_000_000),
        ("Llama 2", "context_length", 4096),
        ("Mixtral 8x7B", "parameters_active", 12_900_000_000),
        ("GLaM", "parameters_active", 96_600_000_000),
        ("DeepSeek-R1", "licence", "MIT"),
        ("Grok-1", "licence", "Apache-2.0"),
        ("Grok-1", "moe", True),
        ("GPT-4", "parameters_total", UNKNOWN),
        ("GPT-3.5", "parameters_total", UNKNOWN),
        ("o1", "parameters_total", UNKNOWN),
        ("Grok 3", "parameters_total", UNKNOWN),
    ],
)
def test_anchor_facts(records, name, field, value):
    record = next(r for r in records if r.name == name)
    assert getattr(record, field) == value


def test_records_are_frozen_dataclasses(records):
    with pytest.raises(dataclasses.FrozenInstanceError):
        records[0].name = "x"  # type: ignore[misc]
    assert isinstance(records[0].modalities, tuple)


# --- loader errors ------------------------------------------------------------------


def _good_row(**changes) -> dict:
    row = {
        "name": "Toy",
        "year": 2020,
        "month": 1,
        "organisation": "Lab",
        "parameters_total": 1_000,
        "parameters_active": 1_000,
        "training_tokens": UNKNOWN,
        "context_length": 512,
        "architecture": "decoder",
        "moe": False,
        "modalities": ["text"],
        "open_weights": True,
        "licence": "MIT",
        "sizes": ["1K"],
        "key_idea": "A toy model used to test the loader of the timeline file.",
        "source": "https://example.org/paper",
        "extra_sources": [],
        "notes": "",
    }
    row.update(changes)
    return row


def _write(tmp_path, rows) -> str:
    path = tmp_path / "timeline.yaml"
    path.write_text(yaml.safe_dump(rows), "utf-8")
    return str(path)


def test_loader_accepts_a_good_file(tmp_path):
    (record,) = load_timeline(_write(tmp_path, [_good_row()]))
    assert record.name == "Toy" and record.date == "2020-01"
    (record,) = load_timeline(_write(tmp_path, [_good_row(month=UNKNOWN)]))
    assert record.date == "2020" and record.decimal_year == 2020.5


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"parameters_total": None}, ValueError, "parameters_total is empty"),
        ({"training_tokens": "Unknown"}, ValueError, "training_tokens must spell unknown"),
        ({"training_tokens": 1.4e12}, TypeError, "training_tokens must be an int"),
        ({"context_length": 0}, ValueError, "context_length must be > 0"),
        ({"parameters_active": 2_000}, ValueError, "parameters_active .* exceeds"),
        ({"moe": True}, ValueError, "MoE model should have fewer"),
        ({"parameters_active": 500}, ValueError, "dense model"),
        ({"year": 2016}, ValueError, "year must be in 2017..2025"),
        ({"year": "2020"}, TypeError, "year must be an int"),
        ({"month": 13}, ValueError, "month must be in 1..12"),
        ({"architecture": "rnn"}, ValueError, "architecture must be one of"),
        ({"modalities": ["smell"]}, ValueError, "modalities must be one of"),
        ({"modalities": []}, ValueError, "modalities must not be empty"),
        ({"modalities": ["text", "text"]}, ValueError, "modalities has duplicates"),
        ({"moe": "maybe"}, TypeError, "moe must be true, false"),
        ({"source": "http://example.org"}, ValueError, "source must be an https:// URL"),
        ({"extra_sources": ["ftp://x"]}, ValueError, "extra_sources must be an https://"),
        ({"open_weights": False}, ValueError, "licence must be 'proprietary'"),
        ({"licence": "proprietary"}, ValueError, "licence must be 'proprietary'"),
        ({"key_idea": " "}, ValueError, "key_idea must not be empty"),
        ({"sizes": "7B"}, TypeError, "sizes must be a list"),
        ({"colour": "red"}, ValueError, "unknown fields"),
    ],
)
def test_loader_rejects_bad_rows(tmp_path, changes, error, match):
    with pytest.raises(error, match=match):
        load_timeline(_write(tmp_path, [_good_row(**changes)]))


def test_loader_rejects_missing_fields_duplicates_and_bad_files(tmp_path):
    row = _good_row()
    del row["licence"]
    with pytest.raises(ValueError, match=r"missing fields \['licence'\]"):
        load_timeline(_write(tmp_path, [row]))
    with pytest.raises(ValueError, match="duplicate record name 'Toy'"):
        load_timeline(_write(tmp_path, [_good_row(), _good_row()]))
    with pytest.raises(ValueError, match="non-empty list of records"):
        load_timeline(_write(tmp_path, []))
    with pytest.raises(TypeError, match="record must be a mapping"):
        load_timeline(_write(tmp_path, ["GPT-3"]))
    with pytest.raises(TypeError, match="path must be a str or Path"):
        load_timeline(42)  # type: ignore[arg-type]


# --- formatting ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (117_000_000, "117M"),
        (1_542_000_000, "1.54B"),
        (175_000_000_000, "175B"),
        (1_400_000_000_000, "1.4T"),
        (8192, "8.19K"),
        (512, "512"),
        (UNKNOWN, UNKNOWN),
    ],
)
def test_format_count_examples(n, text):
    assert format_count(n) == text


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=10**16))
def test_format_count_round_trips_to_three_digits(n):
    text = format_count(n)
    match = re.fullmatch(r"([\d.e+]+)([KMBT]?)", text)
    assert match, text
    scale = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[match.group(2)]
    assert abs(float(match.group(1)) * scale - n) <= 5e-3 * n


def test_format_count_errors():
    with pytest.raises(TypeError, match="n must be a number"):
        format_count("175B")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be >= 0"):
        format_count(-1)


def test_rows_and_html(records):
    rows = as_rows(records)
    assert len(rows) == len(records)
    mixtral = next(r for r in rows if r["name"] == "Mixtral 8x7B")
    assert mixtral["parameters"] == "46.7B (12.9B active)"
    assert mixtral["architecture"] == "decoder (MoE)"
    page = to_html(records)
    assert page.count("<tr>") == len(records) + 1
    assert '<a href="https://arxiv.org/abs/2203.15556">arxiv.org</a>' in page
    assert "<th>key idea</th>" in to_html(records, columns=["name", "key idea"])
    with pytest.raises(ValueError, match="columns must be one of"):
        to_html(records, columns=["name", "colour"])
    evil = dataclasses.replace(records[0], name="<script>x</script>")
    assert "<script>" not in to_html([evil]) and "&lt;script&gt;" in to_html([evil])
    with pytest.raises(TypeError, match=r"records\[0\] must be a ModelRecord"):
        as_rows([{"name": "GPT-3"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="records must not be empty"):
        to_html([])


# --- figures (llmfoundations.viz) ---------------------------------------------------


def _points(fig: go.Figure) -> list[tuple]:
    return [
        (x, y) for trace in fig.data if trace.mode and "text" in trace.mode
        for x, y in zip(trace.x, trace.y, strict=True)
    ]


def test_timeline_figure_has_one_point_per_record(records):
    fig = timeline_figure(records)
    assert isinstance(fig, go.Figure)
    points = _points(fig)
    assert len(points) == len(records)
    ys = {y for _, y in points}
    assert {f"{r.name} · {r.organisation}" for r in records} == ys
    assert list(fig.layout.yaxis.categoryarray)[0].startswith("Transformer")


def test_params_vs_tokens_figure(records):
    both = [r for r in records if UNKNOWN not in (r.parameters_active, r.training_tokens)]
    fig = params_vs_tokens_figure(records)
    (families,) = [t for t in fig.data if t.name == "model families"]
    assert sorted(families.text) == sorted(r.name for r in both)
    assert len(both) >= 10
    assert not [t for t in fig.data if t.name == "compute-optimal frontier of the fit"]

    fig = params_vs_tokens_figure(records, fit=CHINCHILLA_FIT)
    (frontier,) = [t for t in fig.data if t.name == "compute-optimal frontier of the fit"]
    n_opt, d_opt = compute_optimal(frontier.customdata, CHINCHILLA_FIT)
    assert list(frontier.x) == pytest.approx(list(n_opt), rel=1e-12)
    assert list(frontier.y) == pytest.approx(list(d_opt), rel=1e-12)


def test_figure_errors(records):
    with pytest.raises(ValueError, match="records must not be empty"):
        timeline_figure([])
    with pytest.raises(TypeError, match="single ModelRecord"):
        timeline_figure(records[0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"records\[1\] must be a ModelRecord"):
        params_vs_tokens_figure([records[0], "GPT-3"])  # type: ignore[list-item]
    gpt4 = next(r for r in records if r.name == "GPT-4")
    with pytest.raises(ValueError, match="no record has both"):
        params_vs_tokens_figure([gpt4])
    with pytest.raises(ValueError, match="params is missing"):
        params_vs_tokens_figure(records, fit={"E": 1.0})
