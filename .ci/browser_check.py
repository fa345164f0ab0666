"""Open the built site in headless Chromium and check what a reader would see.

    python .ci/browser_check.py _build/html

The site is served from 127.0.0.1 with no other network in use; every script must come
from the site itself. For each page listed in PAGES it checks that the math is typeset
by MathJax (no raw TeX left), that the plotly figures are drawn, that the widgets are
present, that the plotly sliders work without Python (moving one changes the figure's
data and what is drawn), that no script or file was requested from another host, and
that the browser console shows no errors. Then, in a window as wide as a phone (390 px),
it checks that no page is wider than the window (long equations and figures must fit or
scroll inside their own box). It installs Debian's chromium and chromium-driver when
they are missing and it runs as root; elsewhere, without them, it skips (and fails under
CI).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

# page -> what must be on it ("slider": a plotly figure with a slider that works)
PAGES = {
    "intro.html": {"math", "plotly", "slider"},
    "chapters/01-transformer/index.html": {"math"},
    "chapters/02-evolution/timeline.html": {"plotly"},
    "chapters/02-evolution/scaling-laws.html": {"math"},
    "labs/00-check-your-setup.html": {"math", "plotly", "slider"},
    "labs/01-7-attention-in-a-real-model.html": {"math", "plotly", "slider"},
    "labs/04-1-next-token-distribution.html": {"math", "plotly", "slider"},
}
# Extra pages are checked for console errors, foreign requests and width on a phone only.
EXTRA_GLOBS = ["chapters/*/*.html", "labs/*.html"]
# The phone pass: window width in CSS pixels, and how far the page may exceed it.
PHONE_WIDTH, PHONE_HEIGHT, OVERFLOW_TOLERANCE = 390, 844, 2


def ensure_chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing Debian's chromium and chromium-driver ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
            check=True, env=env, stdout=subprocess.DEVNULL,
        )
        return ensure_chromium()
    return None


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def make_driver(browser: str, driver_path: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1280,2000",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=opts)


PROBE = """
const q = (s) => document.querySelectorAll(s).length;
const text = document.querySelector('article') ? document.querySelector('article').innerText : '';
return {
  mathjax: q('mjx-container'),
  rawTex: (text.match(/\\\\\\(|\\\\\\[/g) || []).length,
  mathNodes: q('.math'),
  plotlyDivs: q('.plotly-graph-div'),
  plotlyDrawn: q('.plotly-graph-div .main-svg'),
  widgets: q('.jupyter-widgets, .widget-slider, .widget-inline-hbox'),
  widgetState: q('script[type="application/vnd.jupyter.widget-state+json"]'),
};
"""


def wait_for(driver, predicate, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        state = driver.execute_script(PROBE)
        if predicate(state):
            return state
        time.sleep(0.25)
    return driver.execute_script(PROBE)


def requests_to_other_hosts(driver, base: str) -> list[str]:
    import json

    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            url = msg["params"]["request"]["url"]
            if not url.startswith((base, "data:", "blob:", "about:")):
                urls.append(url)
    return urls


def page_ready(s: dict) -> bool:
    return (
        (s["mathNodes"] == 0 or s["mathjax"] > 0)
        and s["plotlyDrawn"] >= s["plotlyDivs"]
        and (s["widgetState"] == 0 or s["widgets"] > 0)
    )


# What a slider figure shows now: its traces' data and the drawn plot (SVG paths, images).
SNAPSHOT = """
const gd = arguments[0];
const data = gd.data.map((t) => [t.x, t.y, t.z, t.marker && t.marker.color]);
const drawn = gd.querySelector('.cartesianlayer');
return {
  data: JSON.stringify(data),
  drawn: drawn ? drawn.innerHTML : '',
  active: gd.layout.sliders[0].active,
  steps: gd.layout.sliders[0].steps.length,
};
"""


def move_sliders(driver) -> tuple[int, list[str]]:
    """Click the far end of every plotly slider on the page, as a reader would; return the
    number of sliders and the problems (a figure whose data or drawing did not change)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    figures = driver.execute_script(
        "return [...document.querySelectorAll('.plotly-graph-div')]"
        ".filter((gd) => gd.layout && (gd.layout.sliders || []).length);"
    )
    problems = []
    for n, gd in enumerate(figures, 1):
        before = driver.execute_script(SNAPSHOT, gd)
        rail = gd.find_element(By.CSS_SELECTOR, ".slider-container .slider-rail-touch-rect")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", rail)
        width = rail.size["width"]
        go_right = before["active"] < before["steps"] / 2
        offset = (width / 2 - 4) if go_right else (4 - width / 2)  # from the rail's centre
        ActionChains(driver).move_to_element_with_offset(rail, int(offset), 0).click().perform()
        end = time.time() + 5
        after = driver.execute_script(SNAPSHOT, gd)
        while after["data"] == before["data"] and time.time() < end:
            time.sleep(0.2)
            after = driver.execute_script(SNAPSHOT, gd)
        time.sleep(0.3)  # let the redraw finish
        after = driver.execute_script(SNAPSHOT, gd)
        moved = f"slider {n}: step {before['active']} -> {after['active']} of {before['steps']}"
        if after["active"] == before["active"]:
            problems.append(f"{moved}: clicking the slider did not move it")
        elif after["data"] == before["data"]:
            problems.append(f"{moved}: the figure's data did not change")
        elif after["drawn"] == before["drawn"]:
            problems.append(f"{moved}: the data changed but the drawing did not")
        else:
            print(f"       {moved}: data and drawing changed")
    return len(figures), problems


def check_page(driver, base: str, page: str, needs: set[str]) -> list[str]:
    driver.get(f"{base}/{page}")
    state = wait_for(driver, page_ready)
    problems = []
    if "math" in needs and state["mathjax"] == 0:
        problems.append("no typeset math (MathJax did not run)")
    if state["mathNodes"] and state["mathjax"] == 0:
        problems.append(f"{state['mathNodes']} math nodes left untypeset")
    if state["rawTex"]:
        problems.append(f"raw TeX delimiters visible ({state['rawTex']})")
    if "plotly" in needs and state["plotlyDivs"] == 0:
        problems.append("no plotly figure on the page")
    if state["plotlyDrawn"] < state["plotlyDivs"]:
        problems.append(f"only {state['plotlyDrawn']} of {state['plotlyDivs']} plotly figures drawn")
    if "widget" in needs and state["widgets"] == 0:
        problems.append("no widget rendered")
    if state["widgetState"] and state["widgets"] == 0:
        problems.append("widget state embedded but no widget rendered")
    if "slider" in needs:
        sliders, slider_problems = move_sliders(driver)
        state["sliders"] = sliders
        problems += slider_problems
        if sliders == 0:
            problems.append("no plotly figure with a slider on the page")
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    problems += [f"console error: {m[:300]}" for m in errors]
    problems += [f"request to another host: {u}" for u in requests_to_other_hosts(driver, base)]
    summary = ", ".join(f"{k}={v}" for k, v in state.items())
    print(f"  {'ok  ' if not problems else 'FAIL'} {page}: {summary}")
    return problems


# How wide the page is against the window, and the outermost elements sticking out of it
# that no scrolling box of their own keeps in (an equation or a code line that scrolls
# inside its box is fine).
WIDTH = """
const limit = window.innerWidth + arguments[0];
const clips = (e) => ['auto', 'scroll', 'hidden', 'clip'].includes(getComputedStyle(e).overflowX);
const inScrollBox = (e) => {
  for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
    if (clips(a)) return a.getBoundingClientRect().right <= limit;
  }
  return false;
};
const name = (e) => e.tagName.toLowerCase() + [...e.classList].map((c) => '.' + c).join('');
const wide = [...document.querySelectorAll('body *')]
  .filter((e) => e.getBoundingClientRect().right > limit && !inScrollBox(e))
  .filter((e) => getComputedStyle(e).position !== 'fixed')  // drawers: not in the page width
  .filter((e) => !(e.parentElement && e.parentElement.getBoundingClientRect().right > limit))
  .slice(0, 3)
  .map((e) => `${name(e)} in ${name(e.parentElement)} (${Math.round(e.getBoundingClientRect().right)} px)`);
return {
  scrollWidth: document.documentElement.scrollWidth,
  innerWidth: window.innerWidth,
  wide: wide,
};
"""


def check_phone_width(driver, base: str, page: str) -> list[str]:
    """The page at phone width: nothing may make it wider than the window."""
    driver.get(f"{base}/{page}")
    wait_for(driver, page_ready)
    time.sleep(0.3)  # plotly resizes responsive figures after drawing
    w = driver.execute_script(WIDTH, OVERFLOW_TOLERANCE)
    for log in ("browser", "performance"):  # checked in the first pass; just empty them
        driver.get_log(log)
    if w["scrollWidth"] <= w["innerWidth"] + OVERFLOW_TOLERANCE:
        return []
    return [
        f"at {w['innerWidth']} px the page is {w['scrollWidth']} px wide; sticking out: "
        + "; ".join(w["wide"] or ["(none found)"])
    ]


def main(site: str) -> int:
    root = Path(site).resolve()
    if not (root / "index.html").exists():
        print(f"no built site at {root}")
        return 1
    found = ensure_chromium()
    if found is None:
        msg = "chromium/chromedriver not found (install Debian's chromium and chromium-driver)"
        if os.environ.get("CI"):
            print("FAIL: " + msg)
            return 1
        print("SKIP: " + msg)
        return 0
    server, base = serve(root)
    pages = dict(PAGES)
    for pattern in EXTRA_GLOBS:
        for path in sorted(root.glob(pattern)):
            pages.setdefault(path.relative_to(root).as_posix(), set())
    missing = [p for p in PAGES if not (root / p).exists()]
    driver = make_driver(*found)
    failures = {}
    try:
        for page, needs in pages.items():
            if page in missing:
                continue
            problems = check_page(driver, base, page, needs)
            if problems:
                failures[page] = problems
        driver.set_window_size(PHONE_WIDTH, PHONE_HEIGHT)
        inner = driver.execute_script("return window.innerWidth;")
        print(f"  phone width: window {inner} px, {len(pages) - len(missing)} pages")
        if abs(inner - PHONE_WIDTH) > 20:
            failures["(phone width)"] = [f"the window is {inner} px wide, not {PHONE_WIDTH}"]
        for page in pages:
            if page in missing:
                continue
            problems = check_phone_width(driver, base, page)
            print(f"  {'ok  ' if not problems else 'FAIL'} {page} at {inner} px")
            if problems:
                failures.setdefault(page, []).extend(problems)
    finally:
        driver.quit()
        server.shutdown()
    for page in missing:
        failures[page] = ["page missing from the built site"]
    for page, problems in failures.items():
        for p in problems:
            print(f"FAIL {page}: {p}")
    checked = len(pages) - len(missing)
    print(f"browser: {checked - len(failures) + len(missing)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "_build/html"))
