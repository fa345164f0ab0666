"""Sphinx extension for the course book (loaded through ``_config.yml``).

What it does, and why:

* Kernels that the build starts (pages executed at build time) get ``IPYTHONDIR``
  pointing at ``_book/ipython``, whose start-up file makes plotly figures also emit
  plain HTML (myst-nb drops plotly's own mime type). Labs are executed the same way
  by ``python -m llmfoundations.course execute``.
* plotly.js is copied from the installed plotly package into the site and loaded
  only on pages that hold a figure, before require.js (so it does not register as
  an anonymous AMD module).
* The widget manager is loaded only on pages that show a widget. A lab whose widget
  cells are tagged ``remove-output`` (ipywidgets need a running kernel, so on the
  site they would move and change nothing) still carries its widget state in the
  notebook's metadata; that state is dropped from pages that show no widget.
* The role ``{src}`attention.py``` links to a module of the package on the
  repository named in ``_config.yml`` (the one place the URL is written).
* The edition (``course.edition`` in ``_config.yml``): in the ``student`` edition every
  lab page, and every copy of a lab's notebook the site offers for download, is the
  student version (solutions blanked, outputs cleared). In either edition the launch
  button's Colab link of a lab page is the lab's own Colab link (pinned ref, edition).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

from docutils import nodes

from llmfoundations import course

ROOT = Path(__file__).resolve().parents[2]
IPYTHONDIR = ROOT / "_book" / "ipython"
PLOTLY_TARGET = "_vendor/plotly/plotly.min.js"


def _repository(app) -> tuple[str, str]:
    opts = app.config.html_theme_options or {}
    url = (opts.get("repository_url") or "").rstrip("/")
    branch = opts.get("repository_branch") or "main"
    return url, branch


def _src_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    app = inliner.document.settings.env.app
    url, branch = _repository(app)
    target = text.strip()
    path = ROOT / "src" / "llmfoundations" / target
    if not path.exists():
        msg = inliner.reporter.warning(f"{{src}} target not found: src/llmfoundations/{target}")
        return [inliner.problematic(rawtext, rawtext, msg)], [msg]
    label = "llmfoundations." + target.removesuffix(".py").replace("/", ".")
    ref = nodes.reference(rawtext, "", refuri=f"{url}/blob/{branch}/src/llmfoundations/{target}")
    ref += nodes.literal(label, label)
    return [ref], []


@functools.cache
def _repo() -> course.Repo:
    """The repository's course settings (``_config.yml``), read once per build."""
    return course.Repo(ROOT)


def _set_edition(app, config):
    """Sphinx re-reads every page when the edition changes (it is part of its configuration)."""
    config.course_edition = _repo().edition


def _edition_source(app, docname, source):
    """In the student edition, a lab page is made from the lab's student version."""
    path = Path(app.env.doc2path(docname))
    if path.suffix == ".ipynb":
        source[0] = course.site_notebook(_repo(), path.relative_to(ROOT).as_posix(), source[0])


def _lab_colab_button(app, pagename, templatename, context, doctree):
    """The launch button's Colab link of a lab page opens what the lab's own link opens."""
    if not (ROOT / f"{pagename}.ipynb").is_file() or not pagename.startswith("labs/"):
        return
    groups = [b for b in context.get("header_buttons") or [] if isinstance(b, dict)]
    for button in (x for g in groups for x in g.get("buttons") or [] if isinstance(x, dict)):
        if button.get("text") == "Colab":
            button["url"] = _repo().colab_url(f"{pagename}.ipynb")


def _student_downloads(app, exception):
    """In the student edition, every copy of a lab notebook in the site is its student version."""
    repo = _repo()
    if (
        exception
        or app.builder is None
        or app.builder.format != "html"
        or repo.edition != "student"
    ):
        return
    labs = {p.name: p for p in repo.labs}
    for copy in Path(app.outdir).rglob("*.ipynb"):
        if copy.name in labs:
            copy.write_text(course.student_text(json.loads(labs[copy.name].read_text(encoding="utf-8"))),
                            encoding="utf-8")  # fmt: skip


def _add_page_scripts(app, pagename, templatename, context, doctree):
    """Scripts a page needs, all served by the site: plotly.js, and the widget manager."""
    body = context.get("body") or ""
    if "plotly-graph-div" in body:
        app.add_js_file("../" + PLOTLY_TARGET, priority=200)  # before require.js
    if "application/vnd.jupyter.widget-view+json" in body:
        # The widget manager finds its fonts under <cdn>/@jupyter-widgets/html-manager/dist/,
        # so the "cdn" is our own vendor folder, relative to this page.
        npm = context["pathto"]("_vendor/npm/", 1)
        app.add_js_file("../_vendor/course/widget-mathjax-shim.js", priority=510)
        app.add_js_file("../_vendor/requirejs/require.js", priority=520)
        # require.js names the manager's module location, from which it finds its fonts.
        dist = json.dumps(context["pathto"]("_vendor/npm/@jupyter-widgets/html-manager/dist", 1))
        body = (
            "require.config({paths: {'@jupyter-widgets/html-manager/dist': "
            f"new URL({dist}, document.baseURI).href}}}});"
        )
        app.add_js_file(None, body=body, priority=525)
        app.add_js_file(
            "../_vendor/npm/@jupyter-widgets/html-manager/dist/embed-amd.js",
            priority=530,
            **{"data-jupyter-widgets-cdn": npm},
        )


def _drop_unused_widget_state(app, pagename, templatename, context, doctree):
    """A page whose widget outputs were removed needs no widget state. myst-nb adds the
    state of the notebook's metadata to its page in a later handler of this event, from
    what it collected while reading; take it out of that collection first."""
    if "application/vnd.jupyter.widget-view+json" in (context.get("body") or ""):
        return
    from myst_nb.sphinx_ import NbMetadataCollector

    if pagename in getattr(app.env, "nb_metadata", {}):
        NbMetadataCollector.get_js_files(app.env, pagename).pop("ipywidgets_state", None)


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    """sphinx-thebe's inline configuration reaches every page twice under Jupyter Book
    1.0.4, and the browser reports the redeclared constant; keep one copy of each script.
    (Runs early: a later handler of this event may stop the ones after it.)"""
    files = context.get("script_files")
    if not isinstance(files, list):
        return
    seen, kept = set(), []
    for script in files:
        attrs = getattr(script, "attributes", {}) or {}
        key = (getattr(script, "filename", None) or "", attrs.get("body"))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    files[:] = kept


def _copy_plotly(app, exception):
    if exception or app.builder is None or app.builder.format != "html":
        return
    import plotly

    source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    target = Path(app.outdir) / PLOTLY_TARGET
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def setup(app):
    os.environ["IPYTHONDIR"] = str(IPYTHONDIR)
    app.add_role("src", _src_role)
    app.add_config_value("course_edition", "full", "env")
    app.connect("config-inited", _set_edition)
    app.connect("source-read", _edition_source)
    # after the theme's launch buttons (priority 501)
    app.connect("html-page-context", _lab_colab_button, priority=600)
    app.connect("build-finished", _student_downloads)
    app.connect("html-page-context", _add_page_scripts)
    app.connect("html-page-context", _drop_duplicate_scripts, priority=100)
    app.connect("html-page-context", _drop_unused_widget_state, priority=100)
    app.connect("build-finished", _copy_plotly)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
