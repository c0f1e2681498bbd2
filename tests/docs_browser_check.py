"""Look at the built documentation as a person would: headless Chromium on a local server.

Usage: ``python tests/docs_browser_check.py [SITE_DIR]`` (default ``docs/_build/html``); exit
status 0 when every check passes. ``tests/test_docs.py`` calls :func:`check_site` after the
strict build, and ``.ci/docs`` runs both.

What is checked, through the DevTools protocol (over ``--remote-debugging-pipe``: no extra
packages, no network port for the browser):

1. The home page loads from ``http://127.0.0.1:PORT/``; every formula on it is typeset by
   MathJax (each Sphinx ``.math`` node holds an ``mjx-container``, none holds an
   ``mjx-merror``, no raw ``:math:`` role or ``$$`` is left in the text); the sidebar lists the
   guides and the API reference, and every sidebar link answers 200.
2. Navigation: a real mouse click on the sidebar's "API reference" link opens the API index;
   a click on its ``discograd.estimators`` entry opens that page, whose formulas (dozens of
   them) are all typeset.
3. Throughout: no request leaves the local server (the maths renderer is served locally, not
   from a CDN), no request fails or answers >= 400 (fonts included), no JavaScript exception.

A screenshot of each page (the API page scrolled to its first display formula) is written to
``SITE_DIR/_screenshots/``.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SITE = ROOT / "docs" / "_build" / "html"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
WINDOW = (1280, 1000)
TIMEOUT = 60.0

# Sidebar entries a reader must find on the home page (the captions of docs/index.md's pages).
EXPECTED_NAV = (
    "Getting started",
    "Sampling and relaxing",
    "Choosing an estimator",
    "Experiments",
    "Fast kernels",
    "Training",
    "Figures",
    "Benchmark results",
    "API reference",
)
API_LINK_TEXT = "discograd.estimators"
API_PAGE = "api/estimators.html"
MIN_API_FORMULAS = 20


class CheckFailed(AssertionError):
    """A check of the rendered site failed; the message says which and what was seen."""


def find_browser() -> Optional[str]:
    """Path of a Chromium-family browser, or None."""
    env = os.environ.get("DISCOGRAD_CHROMIUM")
    if env:
        return env
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's name)
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that stops reading (it navigated away) is not an error of the site.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def serve(site: Path) -> http.server.ThreadingHTTPServer:
    """A static file server for ``site`` on a free loopback port, in a daemon thread."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Browser:
    """Headless Chromium driven by the DevTools protocol over a pipe (fds 3 and 4)."""

    def __init__(self, executable: str, profile: str) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds() -> None:  # runs in the child before exec: Chromium reads 3, writes 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        args = [
            executable,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
            "--mute-audio",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=child_fds,
            close_fds=False,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: List[Dict[str, Any]] = []
        self.session: Optional[str] = None

    def _read_message(self, deadline: float) -> Dict[str, Any]:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise CheckFailed("the browser did not answer in time")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise CheckFailed(f"the browser closed its DevTools pipe; stderr:\n{err[-2000:]}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: Optional[dict] = None, *, session: bool = True) -> dict:
        """Send a command and return its result; events met meanwhile are kept in ``events``."""
        self._next_id += 1
        message: Dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CheckFailed(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, predicate: Callable[[dict], bool], what: str) -> dict:
        """Wait for an event (kept or new) matching ``predicate``; it is consumed."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            for i, event in enumerate(self.events):
                if predicate(event):
                    return self.events.pop(i)
            self.events.append(self._read_message(deadline))
            if time.monotonic() > deadline:
                raise CheckFailed(f"timed out waiting for {what}")

    def evaluate(self, expression: str) -> Any:
        """Value of a JavaScript expression in the page (promises are awaited)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise CheckFailed(f"JavaScript failed: {result['exceptionDetails']}\n{expression}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
        except (CheckFailed, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass


# JavaScript run in each page once it has loaded and MathJax has finished typesetting.
WAIT_FOR_MATHJAX = """
(async () => {
  const t0 = Date.now();
  while (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) {
    if (Date.now() - t0 > 20000) return "MathJax never loaded";
    await new Promise(r => setTimeout(r, 50));
  }
  await MathJax.startup.promise;
  return "ok";
})()
"""

MATH_REPORT = """
(() => {
  const nodes = [...document.querySelectorAll("span.math, div.math")];
  // The prose as a reader sees it, without code (which may quote TeX) or typeset maths.
  const prose = (document.querySelector("article") || document.body).cloneNode(true);
  prose.querySelectorAll("pre, code, mjx-container").forEach(e => e.remove());
  const text = prose.textContent;
  return {
    title: document.title,
    path: location.pathname,
    mathNodes: nodes.length,
    unrendered: nodes.filter(n => !n.querySelector("mjx-container"))
                     .slice(0, 5).map(n => n.textContent.slice(0, 80)),
    containers: document.querySelectorAll("mjx-container").length,
    errors: [...document.querySelectorAll("mjx-merror")].slice(0, 5)
                .map(e => e.getAttribute("data-mjx-error") || e.textContent.slice(0, 80)),
    rawRoles: (text.match(/:math:`|\\$\\$|\\\\\\(|\\\\\\[/g) || []).length,
  };
})()
"""

NAV_LINKS = """
[...document.querySelectorAll(".sidebar-tree a.reference")].map(a => ({
  text: a.textContent.trim(), href: a.href
}))
"""


def _rect_of_link(text: str, scope: str) -> str:
    return f"""
(() => {{
  const a = [...document.querySelectorAll({json.dumps(scope)})]
    .find(a => a.textContent.trim() === {json.dumps(text)});
  if (!a) return null;
  a.scrollIntoView({{block: "center"}});
  const r = a.getBoundingClientRect();
  return {{x: r.left + r.width / 2, y: r.top + r.height / 2, href: a.href}};
}})()
"""


class SiteCheck:
    """The checks of one built site; ``run()`` raises :class:`CheckFailed` on the first failure."""

    def __init__(self, site: Path, browser: str, shots: Path) -> None:
        self.site = site
        self.browser_path = browser
        self.shots = shots
        self.base = ""
        self.b: Optional[Browser] = None
        self.problems: List[str] = []
        self.requests = 0

    def _note_events(self) -> None:
        """Turn network and JavaScript events seen so far into problems."""
        assert self.b is not None
        keep = []
        for event in self.b.events:
            method = event.get("method", "")
            params = event.get("params", {})
            if method == "Network.requestWillBeSent":
                self.requests += 1
                url = params["request"]["url"]
                if not (url.startswith(self.base) or url.startswith(("data:", "blob:", "about:"))):
                    self.problems.append(f"request outside the local site: {url}")
            elif method == "Network.responseReceived":
                status = params["response"]["status"]
                if status >= 400:
                    self.problems.append(f"HTTP {status} for {params['response']['url']}")
            elif method == "Network.loadingFailed":
                if not params.get("canceled"):
                    self.problems.append(f"request failed: {params.get('errorText')}")
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                self.problems.append(f"JavaScript exception: {text}")
            else:
                keep.append(event)
        self.b.events = keep
        if self.problems:
            raise CheckFailed("; ".join(self.problems))

    def _load_event(self) -> None:
        assert self.b is not None
        self.b.wait_for(lambda e: e.get("method") == "Page.loadEventFired", "the page to load")

    def _check_maths(self, min_formulas: int) -> Dict[str, Any]:
        assert self.b is not None
        status = self.b.evaluate(WAIT_FOR_MATHJAX)
        if status != "ok":
            raise CheckFailed(f"{status} on {self.b.evaluate('location.href')}")
        report = self.b.evaluate(MATH_REPORT)
        where = report["path"]
        if report["mathNodes"] < min_formulas:
            raise CheckFailed(
                f"{where}: {report['mathNodes']} formulas, expected >= {min_formulas}"
            )
        if report["unrendered"]:
            raise CheckFailed(f"{where}: formulas not typeset: {report['unrendered']}")
        if report["errors"]:
            raise CheckFailed(f"{where}: MathJax errors: {report['errors']}")
        if report["containers"] < report["mathNodes"]:
            raise CheckFailed(f"{where}: {report['containers']} typeset of {report['mathNodes']}")
        if report["rawRoles"]:
            raise CheckFailed(f"{where}: {report['rawRoles']} raw maths markers left in the text")
        return report

    def _click_link(self, text: str, scope: str) -> str:
        """Click (mouse events, as a person) the link ``text`` in ``scope``; return its href."""
        assert self.b is not None
        rect = self.b.evaluate(_rect_of_link(text, scope))
        if not rect:
            raise CheckFailed(f"no link {text!r} in {scope} on {self.b.evaluate('location.href')}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.b.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": rect["x"], "y": rect["y"], "button": "left", "clickCount": 1},
            )
        self._load_event()
        here = self.b.evaluate("location.href")
        if here.split("#")[0] != rect["href"].split("#")[0]:
            raise CheckFailed(f"clicking {text!r} went to {here}, expected {rect['href']}")
        return here

    def _screenshot(self, name: str) -> Path:
        assert self.b is not None
        data = self.b.send("Page.captureScreenshot", {"format": "png"})["data"]
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / name
        path.write_bytes(base64.b64decode(data))
        return path

    def run(self) -> Dict[str, Any]:
        if not (self.site / "index.html").is_file():
            raise CheckFailed(f"no index.html in {self.site}: build the site first")
        server = serve(self.site)
        self.base = f"http://127.0.0.1:{server.server_address[1]}/"
        profile = tempfile.mkdtemp(prefix="discograd-docs-chromium-")
        summary: Dict[str, Any] = {}
        try:
            self.b = Browser(self.browser_path, profile)
            target = self.b.send("Target.createTarget", {"url": "about:blank"}, session=False)
            attached = self.b.send(
                "Target.attachToTarget",
                {"targetId": target["targetId"], "flatten": True},
                session=False,
            )
            self.b.session = attached["sessionId"]
            for domain in ("Page", "Network", "Runtime"):
                self.b.send(f"{domain}.enable")

            # 1. The home page.
            self.b.send("Page.navigate", {"url": self.base + "index.html"})
            self._load_event()
            home = self._check_maths(min_formulas=2)
            nav = self.b.evaluate(NAV_LINKS)
            texts = [link["text"] for link in nav]
            missing = [t for t in EXPECTED_NAV if not any(x.startswith(t) for x in texts)]
            if missing:
                raise CheckFailed(f"sidebar lacks {missing}; it has {texts}")
            for link in nav:
                try:
                    with urllib.request.urlopen(link["href"].split("#")[0], timeout=10) as reply:
                        status = reply.status
                except urllib.error.HTTPError as exc:
                    status = exc.code
                if status != 200:
                    raise CheckFailed(f"sidebar link {link['href']} answered {status}")
            self.b.evaluate("window.scrollTo(0, 0)")
            shot = self._screenshot("home.png")
            summary["home"] = {**home, "nav": texts, "screenshot": str(shot)}
            self._note_events()

            # 2. Navigate by clicking, as a reader would, to an API page.
            self._click_link("API reference", ".sidebar-tree a.reference")
            self._note_events()
            self._click_link(API_LINK_TEXT, "article a.reference")
            if not self.b.evaluate("location.pathname").endswith(API_PAGE):
                raise CheckFailed(f"expected {API_PAGE}, at {self.b.evaluate('location.href')}")
            api = self._check_maths(min_formulas=MIN_API_FORMULAS)
            self.b.evaluate(
                "document.querySelector('div.math').scrollIntoView({block: 'center'}); true"
            )
            time.sleep(0.3)  # let the scroll settle before the capture
            summary["api"] = {**api, "screenshot": str(self._screenshot("api-estimators.png"))}
            self._note_events()
            summary["requests"] = self.requests
        finally:
            if self.b is not None:
                self.b.close()
            server.shutdown()
            server.server_close()
            shutil.rmtree(profile, ignore_errors=True)
        return summary


def check_site(site: Path = DEFAULT_SITE, browser: Optional[str] = None) -> Dict[str, Any]:
    """Run every check on the built site; return what was seen (raises CheckFailed)."""
    browser = browser or find_browser()
    if browser is None:
        raise CheckFailed("no Chromium found: apt-get install -y chromium")
    site = Path(site).resolve()
    return SiteCheck(site, browser, site / "_screenshots").run()


def main(argv: List[str]) -> int:
    site = Path(argv[1]) if len(argv) > 1 else DEFAULT_SITE
    try:
        summary = check_site(site)
    except CheckFailed as exc:
        print(f"docs browser check FAILED: {exc}", file=sys.stderr)
        return 1
    for page in ("home", "api"):
        s = summary[page]
        print(
            f"{page}: {s['path']} ({s['title']}): {s['mathNodes']} formulas typeset, "
            f"screenshot {s['screenshot']}"
        )
    print(f"sidebar: {', '.join(summary['home']['nav'])}")
    print(f"{summary['requests']} requests, all to the local server, none failed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
