"""Plotly figures for the labs and the book.

Every function builds and returns a ``plotly.graph_objects.Figure`` and has no display
side effects: call ``fig.show()`` in a notebook (or leave the figure as a cell's last
expression). Renderers are never set here, so the same figures work in Colab, Jupyter
and the built book.

Any chapter:

- :func:`slider_figure`: a figure drawn for each value on a grid, behind a plotly
  slider. Every state is computed in Python and stored in the figure as a frame, so
  the slider works wherever plotly.js runs: Jupyter, Colab and the static website,
  where no Python runs (an ipywidgets slider there moves, but nothing updates).

Chapter 2 (:mod:`llmfoundations.evolution`, :mod:`llmfoundations.scaling`):

- :func:`timeline_figure`: model families over time, one row per family.
- :func:`params_vs_tokens_figure`: parameters against training tokens on log axes,
  with Chinchilla's 20-tokens-per-parameter line, iso-compute lines and, optionally,
  the compute-optimal frontier of a fitted scaling law.

What this module leaves out: static image export (needs ``kaleido``), styling themes
(figures use plotly's defaults plus a few layout settings), and fixed pixel widths:
figures take the width of the page, so they fit a phone.
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from llmfoundations._validate import check_int
from llmfoundations.evolution import UNKNOWN, ModelRecord, as_rows, is_known
from llmfoundations.scaling import compute_optimal

__all__ = ["slider_figure", "timeline_figure", "params_vs_tokens_figure"]

_WEIGHTS_GROUPS = (
    (True, "open weights", "#2a9d8f"),
    (False, "closed weights", "#e76f51"),
    (UNKNOWN, "weights: unknown", "#8d99ae"),
)
_SYMBOLS = {
    "encoder": ("square", "encoder"),
    "encoder-decoder": ("triangle-up", "encoder-decoder"),
    "decoder": ("circle", "decoder (dense)"),
    "decoder-moe": ("diamond", "decoder (mixture of experts)"),
    UNKNOWN: ("circle-open", "architecture unpublished"),
}


def slider_figure(
    draw: Callable[[float], go.Figure],
    values: Sequence[float],
    *,
    start: float | None = None,
    name: str = "value",
    label: Callable[[float], str] = "{:g}".format,
    pad_top: int = 50,
) -> go.Figure:
    """The figure ``draw(value)`` for every value, behind a slider that needs no Python.

    ``draw`` is called once per value; each result becomes a plotly frame (its traces
    and its title) and the slider switches frames in the browser. The figure opens at
    ``start`` (default: the first value) and takes the rest of its layout (axes, height)
    from ``draw(start)``, so fix axis ranges in ``draw`` when states should compare.
    ``label`` names each step (shown after ``name``); ``pad_top`` is the gap in pixels
    between the plot and the slider (more for slanted tick labels).

    >>> scores = np.array([2.0, 1.0, 0.1])
    >>> def draw(t):
    ...     p = np.exp(scores / t)
    ...     return go.Figure(go.Bar(y=p / p.sum()), layout={"title": f"temperature {t:g}"})
    >>> fig = slider_figure(draw, [0.5, 1.0, 2.0], start=1.0, name="temperature")
    >>> [frame.name for frame in fig.frames]
    ['0.5', '1', '2']
    """
    if not callable(draw):
        raise TypeError(f"draw must be a function of the slider value, got {type(draw).__name__}")
    check_int("pad_top", pad_top, minimum=0)
    values = list(values)
    if not values:
        raise ValueError("values must not be empty")
    labels = [label(v) for v in values]
    repeated = sorted({lab for lab in labels if labels.count(lab) > 1})
    if repeated:
        raise ValueError(f"values must have distinct labels, got {repeated} more than once")
    if start is None:
        start = values[0]
    if start not in values:
        raise ValueError(f"start must be one of values, got {start!r}")
    figures = [_drawn(draw, v) for v in values]
    first = figures[0]
    for v, fig in zip(values, figures, strict=True):
        kinds, expected = [t.type for t in fig.data], [t.type for t in first.data]
        if kinds != expected:
            raise ValueError(
                f"draw must give the same traces for every value: {expected} at {values[0]!r}, "
                f"{kinds} at {v!r}"
            )
    active = values.index(start)
    fig = go.Figure(figures[active])
    fig.frames = [
        go.Frame(name=lab, data=f.data, layout={"title": f.layout.title})
        for lab, f in zip(labels, figures, strict=True)
    ]
    no_delay = {"duration": 0}
    at_once = {"mode": "immediate", "frame": {**no_delay, "redraw": True}, "transition": no_delay}
    steps = [{"label": lab, "method": "animate", "args": [[lab], at_once]} for lab in labels]
    slider = {"active": active, "steps": steps, "pad": {"t": pad_top}}
    fig.update_layout(sliders=[{**slider, "currentvalue": {"prefix": f"{name}: "}}])
    return fig


def _drawn(draw: Callable[[float], go.Figure], value: float) -> go.Figure:
    fig = draw(value)
    if not isinstance(fig, go.Figure):
        raise TypeError(f"draw({value!r}) must return a plotly Figure, got {type(fig).__name__}")
    return fig


def _records(records: Iterable[ModelRecord]) -> list[ModelRecord]:
    if isinstance(records, ModelRecord):
        raise TypeError("records must be a list of ModelRecord, got a single ModelRecord")
    records = list(records)
    if not records:
        raise ValueError("records must not be empty")
    for i, r in enumerate(records):
        if not isinstance(r, ModelRecord):
            raise TypeError(f"records[{i}] must be a ModelRecord, got {type(r).__name__}")
    return records


def _symbol_key(r: ModelRecord) -> str:
    if r.architecture == "decoder" and r.moe is True:
        return "decoder-moe"
    return r.architecture


def _hover(row: dict[str, str]) -> str:
    """Hover text: facts, the key idea wrapped to ~60 characters, the source's site."""
    keys = ("date", "organisation", "parameters", "training tokens", "context", "licence")
    lines = [f"<b>{html.escape(row['name'])}</b>"]
    for k in keys:  # long values (some licences) wrap too
        lines += [html.escape(line) for line in textwrap.wrap(f"{k}: {row[k]}", 70)]
    lines += [f"<i>{html.escape(line)}</i>" for line in textwrap.wrap(row["key idea"], 60)]
    site = row["source"].removeprefix("https://").split("/")[0]
    lines.append(f"source: {html.escape(site)}")
    return "<br>".join(lines)


def timeline_figure(records: Iterable[ModelRecord]) -> go.Figure:
    """Model families on a time axis, one row per family, oldest at the top.

    Colour: weights open or closed. Symbol: architecture (diamond = mixture of
    experts). Marker size grows with the log of the parameter count; the label
    beside it gives the count (faded markers: size never published). Hover for the
    facts, the key idea and the site of the source.
    """
    records = sorted(_records(records), key=lambda r: r.decimal_year)
    rows = {row["name"]: row for row in as_rows(records)}
    labels = {r.name: f"{r.name} · {r.organisation}" for r in records}
    first, last = records[0].year, records[-1].year + 1  # x axis: whole years
    middle = (first + last) / 2

    fig = go.Figure()
    for value, label, colour in _WEIGHTS_GROUPS:
        group = [r for r in records if r.open_weights == value]
        if not group:
            continue
        sizes, opacity, text, text_side = [], [], [], []
        for r in group:
            # each family has its own row, so a label can sit on either side: right
            # of the marker in the first half of the time axis, left in the second
            text_side.append("middle right" if r.decimal_year < middle else "middle left")
            p = r.parameters_total
            sizes.append(8 + 3 * np.log10(p / 1e8) if is_known(p) and p > 1e8 else 8)
            opacity.append(1.0 if is_known(p) else 0.45)
            text.append(rows[r.name]["parameters"] if is_known(p) else "size unpublished")
        fig.add_trace(
            go.Scatter(
                x=[_date(r) for r in group],
                y=[labels[r.name] for r in group],
                mode="markers+text",
                name=label,
                legendgroup="weights",
                text=text,
                textposition=text_side,
                textfont={"size": 10, "color": "#444"},
                cliponaxis=False,
                hovertext=[_hover(rows[r.name]) for r in group],
                hoverinfo="text",
                marker={
                    "color": colour,
                    "size": sizes,
                    "opacity": opacity,
                    "symbol": [_SYMBOLS[_symbol_key(r)][0] for r in group],
                    "line": {"width": 1, "color": "#333"},
                },
            )
        )
    for key in dict.fromkeys(_symbol_key(r) for r in records):  # legend for the symbols
        symbol, label = _SYMBOLS[key]
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name=label,
                legendgroup="architecture",
                marker={"symbol": symbol, "color": "#555", "size": 10},
                hoverinfo="skip",
            )
        )
    fig.update_layout(
        title="Model families, oldest first",
        xaxis={
            "title": "first public release (label: size of the largest model)",
            "type": "date",
            "range": [f"{first}-01-01", f"{last}-01-01"],
        },
        yaxis={
            "title": None,
            "automargin": True,
            "categoryorder": "array",
            "categoryarray": [labels[r.name] for r in records],
            "autorange": "reversed",
        },
        height=24 * len(records) + 220,
        legend={"orientation": "h", "yanchor": "top", "y": -0.08, "x": 0},
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
        hovermode="closest",
    )
    return fig


def params_vs_tokens_figure(
    records: Iterable[ModelRecord], fit: Mapping[str, float] | None = None
) -> go.Figure:
    """Parameters (active per token) against training tokens, log-log.

    Only families with both numbers published appear. Grey dotted lines are equal
    training compute ``C = 6 N D``; the dashed line is Chinchilla's rule of thumb of
    20 tokens per parameter. With ``fit`` (a mapping with ``E, A, B, alpha, beta``,
    e.g. :data:`llmfoundations.scaling.CHINCHILLA_FIT` or the output of
    :func:`llmfoundations.scaling.fit_scaling_law`) the law's compute-optimal
    frontier is drawn as well.
    """
    records = _records(records)
    shown = [r for r in records if is_known(r.parameters_active) and is_known(r.training_tokens)]
    if not shown:
        raise ValueError("no record has both parameters_active and training_tokens published")
    rows = {row["name"]: row for row in as_rows(shown)}
    n = np.array([float(r.parameters_active) for r in shown])
    d = np.array([float(r.training_tokens) for r in shown])
    n_lo, n_hi = n.min() / 4, n.max() * 4
    d_lo, d_hi = d.min() / 4, d.max() * 4
    n_line = np.logspace(np.log10(n_lo), np.log10(n_hi), 50)

    fig = go.Figure()
    first_iso = True
    for exponent in range(20, 28):  # iso-compute lines C = 1e20 ... 1e27 FLOPs
        c = 10.0**exponent
        d_line = c / (6 * n_line)
        keep = (d_line >= d_lo) & (d_line <= d_hi)
        if keep.sum() < 2:
            continue
        fig.add_trace(
            go.Scatter(
                x=n_line[keep],
                y=d_line[keep],
                mode="lines",
                line={"color": "#bbb", "dash": "dot", "width": 1},
                name="equal compute 6ND (one line per factor of 10)",
                legendgroup="iso",
                showlegend=first_iso,
                hovertemplate=f"C = 6ND = 1e{exponent} FLOPs<extra></extra>",
            )
        )
        first_iso = False
    fig.add_trace(
        go.Scatter(
            x=n_line,
            y=20 * n_line,
            mode="lines",
            line={"color": "#264653", "dash": "dash"},
            name="20 tokens per parameter",
            hoverinfo="skip",
        )
    )
    if fit is not None:
        budgets = np.logspace(18, 28, 80)
        n_opt, d_opt = compute_optimal(budgets, fit)
        keep = (n_opt >= n_lo) & (n_opt <= n_hi) & (d_opt >= d_lo) & (d_opt <= d_hi)
        fig.add_trace(
            go.Scatter(
                x=n_opt[keep],
                y=d_opt[keep],
                mode="lines",
                line={"color": "#e9c46a", "width": 3},
                name="compute-optimal frontier of the fit",
                customdata=budgets[keep],
                hovertemplate="C = %{customdata:.2e} FLOPs<br>N = %{x:.3s}<br>"
                "D = %{y:.3s}<extra>fit</extra>",
            )
        )
    ratio = d / n
    fig.add_trace(
        go.Scatter(
            x=n,
            y=d,
            mode="markers+text",
            name="model families",
            text=[r.name for r in shown],
            textposition=_scatter_label_positions(n, d),
            textfont={"size": 10},
            hovertext=[
                _hover(rows[r.name])
                + f"<br>tokens per parameter: {q:.0f}<br>6ND = {6 * a * b:.2e} FLOPs"
                for r, q, a, b in zip(shown, ratio, n, d, strict=True)
            ],
            hoverinfo="text",
            marker={
                "size": 11,
                "color": np.log10(ratio),
                "colorscale": "Viridis",
                "colorbar": {"title": "log10 tokens/param"},
                "symbol": ["diamond" if r.moe is True else "circle" for r in shown],
                "line": {"width": 1, "color": "#333"},
            },
        )
    )
    fig.update_layout(
        title="Parameters vs training tokens",
        xaxis={
            "title": "parameters N, active per token (diamond: mixture of experts)",
            "type": "log",
            "range": _log_range(n_lo, n_hi),
        },
        yaxis={"title": "training tokens D", "type": "log", "range": _log_range(d_lo, d_hi)},
        height=560,
        legend={"orientation": "h", "yanchor": "top", "y": -0.15, "x": 0},
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
        hovermode="closest",
    )
    return fig


def _scatter_label_positions(x: np.ndarray, y: np.ndarray) -> list[str]:
    """Above each marker, or below it when an earlier label sits close by (log axes)."""
    lx, ly = np.log10(x), np.log10(y)
    positions: list[str] = []
    for i in range(len(x)):
        crowded = any(
            positions[j] == "top center" and abs(lx[i] - lx[j]) < 0.25 and abs(ly[i] - ly[j]) < 0.15
            for j in range(i)
        )
        positions.append("bottom center" if crowded else "top center")
    return positions


def _date(r: ModelRecord) -> str:
    month = 7 if r.month == UNKNOWN else r.month
    return f"{r.year}-{month:02d}-15"


def _log_range(lo: float, hi: float) -> list[float]:
    return [float(np.log10(lo)), float(np.log10(hi))]
