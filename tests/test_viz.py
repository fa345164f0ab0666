"""Tests of llmfoundations.viz.slider_figure (the chapter 2 figures: tests/test_evolution.py)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from llmfoundations.viz import slider_figure

SCORES = np.array([2.0, 1.0, 0.1])


def softmax_bars(t: float) -> go.Figure:
    p = np.exp(SCORES / t)
    return go.Figure(go.Bar(x=["a", "b", "c"], y=p / p.sum()), layout={"title": f"T = {t:g}"})


def test_every_value_is_a_frame_and_a_step():
    values = [0.5, 1.0, 2.0]
    fig = slider_figure(softmax_bars, values, start=1.0, name="temperature")
    assert [f.name for f in fig.frames] == ["0.5", "1", "2"]
    (slider,) = fig.layout.sliders
    assert slider.active == 1
    assert slider.currentvalue.prefix == "temperature: "
    for step, frame, t in zip(slider.steps, fig.frames, values, strict=True):
        assert step.method == "animate"
        assert list(step.args[0]) == [frame.name]  # the step shows its own frame
        np.testing.assert_allclose(frame.data[0].y, softmax_bars(t).data[0].y)
        assert frame.layout.title.text == f"T = {t:g}"
    # the figure opens at `start`, and the frames differ from one another
    np.testing.assert_allclose(fig.data[0].y, softmax_bars(1.0).data[0].y)
    assert fig.layout.title.text == "T = 1"
    assert not np.allclose(fig.frames[0].data[0].y, fig.frames[2].data[0].y)


def test_defaults_and_labels():
    fig = slider_figure(softmax_bars, [0.25, 3.0], label="T={:.2f}".format, pad_top=80)
    assert fig.layout.sliders[0].active == 0
    assert [s.label for s in fig.layout.sliders[0].steps] == ["T=0.25", "T=3.00"]
    assert fig.layout.sliders[0].pad.t == 80
    assert "plotly-graph-div" in fig.to_html(include_plotlyjs=False, full_html=False)


def test_no_fixed_width_is_added():
    fig = slider_figure(softmax_bars, [1.0, 2.0])
    assert fig.layout.width is None  # the figure takes the width of the page


def test_bad_input():
    with pytest.raises(ValueError, match="values must not be empty"):
        slider_figure(softmax_bars, [])
    with pytest.raises(ValueError, match="start must be one of values"):
        slider_figure(softmax_bars, [0.5, 1.0], start=2.0)
    with pytest.raises(ValueError, match="distinct labels"):
        slider_figure(softmax_bars, [1.0, 1.0000001])
    with pytest.raises(ValueError, match="pad_top"):
        slider_figure(softmax_bars, [1.0], pad_top=-5)
    with pytest.raises(TypeError, match="draw must be a function"):
        slider_figure("bars", [1.0])
    with pytest.raises(TypeError, match="must return a plotly Figure"):
        slider_figure(lambda t: [t], [1.0])

    def changing(t: float) -> go.Figure:
        fig = softmax_bars(t)
        if t > 1:
            fig.add_scatter(y=[0, 1])
        return fig

    with pytest.raises(ValueError, match="same traces for every value"):
        slider_figure(changing, [1.0, 2.0])
