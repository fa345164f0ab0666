# Used only when the book or `python -m llmfoundations.course execute` runs a notebook:
# plotly figures then carry, beside plotly's own JSON (which Colab and Jupyter show),
# a plain HTML rendering (which the website shows, with plotly.js served locally).
# Never set this inside a notebook: it would break figures in Colab.
import plotly.io as pio
from plotly.io._base_renderers import MimetypeRenderer


class _CourseHTML(MimetypeRenderer):
    def to_mimebundle(self, fig_dict):
        import plotly.io as pio

        # auto_play=False: a figure with frames (a slider) opens at its own state, as in
        # Jupyter and Colab, instead of playing through every frame on page load.
        html = pio.to_html(
            fig_dict,
            include_plotlyjs=False,
            include_mathjax=False,
            full_html=False,
            validate=False,
            auto_play=False,
        )
        return {"text/html": html}


pio.renderers["course_html"] = _CourseHTML()
pio.renderers.default = "plotly_mimetype+course_html"
