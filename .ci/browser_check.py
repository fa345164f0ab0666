"""Open the built site in headless Chromium and check what a reader would see.

    python .ci/browser_check.py _build/html

The site is served from 127.0.0.1 with no other network in use; every script must come
from the site itself. For each page listed in PAGES it checks that the math is typeset
by MathJax (no raw TeX left), that the plotly figures are drawn, that the widgets are
present, that no script or file was requested from another host, and that the browser
console shows no errors. It installs Debian's chromium and chromium-driver when they are
missing and it runs as root; elsewhere, without them, it skips (and fails under CI).
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

# page -> what must be on it
PAGES = {
    "intro.html": {"math", "plotly", "widget"},
    "chapters/01-transformer/index.html": {"math"},
    "chapters/02-evolution/timeline.html": {"plotly"},
    "chapters/02-evolution/scaling-laws.html": {"math"},
    "labs/00-check-your-setup.html": {"math", "plotly", "widget"},
}
# Extra pages are checked for console errors and foreign requests only.
EXTRA_GLOBS = ["chapters/*/*.html", "labs/*.html"]


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


def check_page(driver, base: str, page: str, needs: set[str]) -> list[str]:
    driver.get(f"{base}/{page}")
    state = wait_for(
        driver,
        lambda s: (s["mathNodes"] == 0 or s["mathjax"] > 0)
        and s["plotlyDrawn"] >= s["plotlyDivs"]
        and (s["widgetState"] == 0 or s["widgets"] > 0),
    )
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
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    problems += [f"console error: {m[:300]}" for m in errors]
    problems += [f"request to another host: {u}" for u in requests_to_other_hosts(driver, base)]
    summary = ", ".join(f"{k}={v}" for k, v in state.items())
    print(f"  {'ok  ' if not problems else 'FAIL'} {page}: {summary}")
    return problems


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
