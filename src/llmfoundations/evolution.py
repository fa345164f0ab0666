"""The LLM timeline of chapter 2: one checked record per model family.

The facts live in ``timeline.yaml`` next to this module, one readable block per
family (the Transformer of 2017 to Grok 3), each with the paper or official report
its numbers come from. :func:`load_timeline` reads that file and checks every field
with the same rules the tests use, so a typo (a float where a count belongs, a
``null``, an active parameter count above the total) fails loudly.

Conventions, also written at the top of the YAML file:

- ``year``/``month``: first public release or announcement of the family.
- ``parameters_total``: the largest model of the family as its source names it
  (the nominal "7B", not an exact count); ``sizes`` lists the others.
- ``parameters_active``: parameters used per token. Equal to the total for a dense
  model, smaller for a mixture of experts (``moe: true``).
- ``training_tokens``: pre-training tokens of that largest model as stated by the
  source; ``notes`` says when a source gives only a dataset size.
- ``context_length`` in tokens; ``modalities`` are *input* modalities.
- Anything unpublished is the literal string ``"unknown"`` (:data:`UNKNOWN`), never
  ``None``, zero or a guess.

>>> records = load_timeline()
>>> gpt3 = next(r for r in records if r.name == "GPT-3")
>>> format_count(gpt3.parameters_total), format_count(gpt3.training_tokens)
('175B', '300B')

What this module leaves out: benchmark scores (they age fast and depend on the
prompt format), training compute in FLOPs (rarely published; estimate it with
``6 * N * D`` from :mod:`llmfoundations.scaling` where both are known), and model
versions within a family beyond the ``sizes`` and ``notes`` fields. The test
validates the schema, not the facts: the facts rest on the cited sources.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml

from llmfoundations._validate import check_choice

__all__ = [
    "UNKNOWN",
    "ARCHITECTURES",
    "MODALITIES",
    "FIELDS",
    "ModelRecord",
    "load_timeline",
    "is_known",
    "format_count",
    "as_rows",
    "TABLE_COLUMNS",
    "to_html",
]

UNKNOWN = "unknown"
"""The one spelling of an unpublished fact."""

Unknown = Literal["unknown"]
Count = int | Unknown

ARCHITECTURES = ("encoder", "decoder", "encoder-decoder")
"""Transformer layouts; ``moe`` is a separate flag (a decoder may be sparse or dense)."""

MODALITIES = ("text", "image", "audio", "video")
"""Input modalities a record may list."""

FIRST_YEAR, LAST_YEAR = 2017, 2025

_TIMELINE_FILE = "timeline.yaml"
_COUNT_FIELDS = ("parameters_total", "parameters_active", "training_tokens", "context_length")
_TEXT_FIELDS = ("name", "organisation", "licence", "key_idea")


@dataclass(frozen=True)
class ModelRecord:
    """One model family on the timeline (see the module docstring for conventions)."""

    name: str
    year: int
    month: int | Unknown
    organisation: str
    parameters_total: Count
    parameters_active: Count
    training_tokens: Count
    context_length: Count
    architecture: str  # one of ARCHITECTURES, or "unknown"
    moe: bool | Unknown
    modalities: tuple[str, ...] | Unknown
    open_weights: bool | Unknown
    licence: str  # "proprietary" when the weights are closed
    sizes: tuple[str, ...] | Unknown
    key_idea: str
    source: str
    extra_sources: tuple[str, ...]
    notes: str

    @property
    def date(self) -> str:
        """``"2020-05"``, or just the year when the month is unknown."""
        return str(self.year) if self.month == UNKNOWN else f"{self.year}-{self.month:02d}"

    @property
    def decimal_year(self) -> float:
        """The date as a number for plotting: mid-month, or mid-year if the month is unknown."""
        if self.month == UNKNOWN:
            return self.year + 0.5
        return self.year + (self.month - 0.5) / 12

    @classmethod
    def from_dict(cls, row: object) -> ModelRecord:
        """Check one YAML row and build the record; raise naming the record and field."""
        if not isinstance(row, Mapping):
            raise TypeError(f"a timeline record must be a mapping, got {type(row).__name__}")
        name = row.get("name", "<no name>")
        where = f"record {name!r}"
        expected = set(FIELDS)
        missing = sorted(expected - set(row))
        extra = sorted(set(row) - expected)
        if missing:
            raise ValueError(f"{where} is missing fields {missing}")
        if extra:
            raise ValueError(f"{where} has unknown fields {extra}; allowed: {list(FIELDS)}")
        for key, value in row.items():
            if value is None:
                raise ValueError(f"{where}: {key} is empty (null); write {UNKNOWN!r} instead")
            if isinstance(value, str) and value.strip().lower() == UNKNOWN and value != UNKNOWN:
                raise ValueError(f"{where}: {key} must spell unknown as {UNKNOWN!r}, got {value!r}")

        for key in _TEXT_FIELDS:
            _check_text(where, key, row[key])
        _check_text(where, "notes", row["notes"], allow_empty=True)

        year = row["year"]
        if isinstance(year, bool) or not isinstance(year, int):
            raise TypeError(f"{where}: year must be an int, got {type(year).__name__}")
        if not FIRST_YEAR <= year <= LAST_YEAR:
            raise ValueError(f"{where}: year must be in {FIRST_YEAR}..{LAST_YEAR}, got {year}")
        month = row["month"]
        if month != UNKNOWN:
            if isinstance(month, bool) or not isinstance(month, int):
                raise TypeError(f"{where}: month must be an int or {UNKNOWN!r}, got {month!r}")
            if not 1 <= month <= 12:
                raise ValueError(f"{where}: month must be in 1..12, got {month}")

        for key in _COUNT_FIELDS:
            _check_count(where, key, row[key])
        total, active = row["parameters_total"], row["parameters_active"]

        check_choice(f"{where}: architecture", row["architecture"], (*ARCHITECTURES, UNKNOWN))
        moe = row["moe"]
        _check_flag(where, "moe", moe)
        _check_flag(where, "open_weights", row["open_weights"])
        if is_known(total) and is_known(active):
            if active > total:
                raise ValueError(
                    f"{where}: parameters_active ({active}) exceeds parameters_total ({total})"
                )
            if moe is False and active != total:
                raise ValueError(
                    f"{where}: a dense model (moe: false) must have parameters_active == "
                    f"parameters_total, got {active} and {total}"
                )
            if moe is True and active == total:
                raise ValueError(f"{where}: an MoE model should have fewer active parameters")

        closed = row["open_weights"] is False
        if closed != (row["licence"] == "proprietary"):
            raise ValueError(
                f"{where}: licence must be 'proprietary' exactly when open_weights is false, "
                f"got open_weights={row['open_weights']!r}, licence={row['licence']!r}"
            )

        modalities = _check_string_list(where, "modalities", row["modalities"], allow_unknown=True)
        if modalities != UNKNOWN:
            for m in modalities:
                check_choice(f"{where}: modalities", m, MODALITIES)
        sizes = _check_string_list(where, "sizes", row["sizes"], allow_unknown=True)

        _check_url(where, "source", row["source"])
        extra_sources = _check_string_list(
            where, "extra_sources", row["extra_sources"], allow_empty=True
        )
        for url in extra_sources:
            _check_url(where, "extra_sources", url)

        values = dict(row)
        values.update(modalities=modalities, sizes=sizes, extra_sources=extra_sources)
        return cls(**values)


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ModelRecord))
"""Every field a YAML record must have, in order."""


def is_known(value: object) -> bool:
    """True unless ``value`` is the literal :data:`UNKNOWN`."""
    return not (isinstance(value, str) and value == UNKNOWN)


def load_timeline(path: str | Path | None = None) -> list[ModelRecord]:
    """Read and check the timeline; return records sorted by date (oldest first).

    ``path`` defaults to the ``timeline.yaml`` shipped with the package; pass your
    own file (same schema) to extend the timeline.
    """
    if path is None:
        text = resources.files("llmfoundations").joinpath(_TIMELINE_FILE).read_text("utf-8")
    else:
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
        text = Path(path).read_text("utf-8")
    rows = yaml.safe_load(text)
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"the timeline file must hold a non-empty list of records, got {rows!r}")
    records = [ModelRecord.from_dict(row) for row in rows]
    seen: set[str] = set()
    for r in records:
        if r.name in seen:
            raise ValueError(f"duplicate record name {r.name!r} in the timeline")
        seen.add(r.name)
    return sorted(records, key=lambda r: r.decimal_year)


def format_count(n: Count) -> str:
    """Human-readable count: ``175_000_000_000 -> "175B"``, ``1.4e12 -> "1.4T"``.

    >>> format_count(117_000_000), format_count(46_700_000_000), format_count("unknown")
    ('117M', '46.7B', 'unknown')
    """
    if n == UNKNOWN:
        return UNKNOWN
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise TypeError(f"n must be a number or {UNKNOWN!r}, got {n!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:g}"


def as_rows(records: Iterable[ModelRecord]) -> list[dict[str, str]]:
    """Records as display strings (one dict per record) for tables and hover text."""
    rows = []
    for r in _check_records(records):
        params = format_count(r.parameters_total)
        if r.moe is True and is_known(r.parameters_active):
            params += f" ({format_count(r.parameters_active)} active)"
        context = r.context_length
        rows.append(
            {
                "name": r.name,
                "date": r.date,
                "organisation": r.organisation,
                "parameters": params,
                "training tokens": format_count(r.training_tokens),
                "context": f"{context:,}" if is_known(context) else UNKNOWN,
                "architecture": r.architecture + (" (MoE)" if r.moe is True else ""),
                "modalities": r.modalities if r.modalities == UNKNOWN else ", ".join(r.modalities),
                "open weights": {True: "yes", False: "no"}.get(r.open_weights, UNKNOWN),
                "licence": r.licence,
                "key idea": r.key_idea,
                "source": r.source,
            }
        )
    return rows


TABLE_COLUMNS = (
    "name",
    "date",
    "organisation",
    "parameters",
    "training tokens",
    "context",
    "open weights",
    "licence",
    "source",
)
"""The columns :func:`to_html` shows by default (all keys of :func:`as_rows` are allowed)."""


def to_html(records: Iterable[ModelRecord], columns: Iterable[str] = TABLE_COLUMNS) -> str:
    """A plain HTML table of the records for the book: escaped, sources as links.

    The table sits in a horizontally scrollable ``div`` so it never widens the page.
    """
    rows = as_rows(records)
    if not rows:
        raise ValueError("records must not be empty")
    columns = list(columns)
    for c in columns:
        check_choice("columns", c, rows[0].keys())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = html.escape(row[c])
            if c == "source":  # link text: the site, e.g. arxiv.org
                site = html.escape(row[c].removeprefix("https://").split("/")[0])
                value = f'<a href="{value}">{site}</a>'
            cells.append(f"<td>{value}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<div style="overflow-x: auto"><table class="llm-timeline" style="font-size: 0.85em">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


# ------------------------------------------------------------------------------- checks


def _check_records(records: Iterable[ModelRecord]) -> list[ModelRecord]:
    records = list(records)
    for i, r in enumerate(records):
        if not isinstance(r, ModelRecord):
            raise TypeError(f"records[{i}] must be a ModelRecord, got {type(r).__name__}")
    return records


def _check_text(where: str, key: str, value: object, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{where}: {key} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"{where}: {key} must not be empty")


def _check_count(where: str, key: str, value: object) -> None:
    if value == UNKNOWN:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{where}: {key} must be an int (e.g. 175_000_000_000) or {UNKNOWN!r}, got {value!r}"
        )
    if value <= 0:
        raise ValueError(f"{where}: {key} must be > 0, got {value}")


def _check_flag(where: str, key: str, value: object) -> None:
    if value != UNKNOWN and not isinstance(value, bool):
        raise TypeError(f"{where}: {key} must be true, false or {UNKNOWN!r}, got {value!r}")


def _check_string_list(
    where: str, key: str, value: object, *, allow_unknown: bool = False, allow_empty: bool = False
) -> tuple[str, ...] | Unknown:
    if allow_unknown and value == UNKNOWN:
        return UNKNOWN
    if not isinstance(value, list):
        raise TypeError(f"{where}: {key} must be a list, got {value!r}")
    if not value and not allow_empty:
        raise ValueError(f"{where}: {key} must not be empty (write {UNKNOWN!r} if unknown)")
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise TypeError(f"{where}: {key} must hold non-empty strings, got {item!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{where}: {key} has duplicates: {value}")
    return tuple(value)


def _check_url(where: str, key: str, value: object) -> None:
    if not isinstance(value, str) or not value.startswith("https://") or " " in value:
        raise ValueError(f"{where}: {key} must be an https:// URL, got {value!r}")
