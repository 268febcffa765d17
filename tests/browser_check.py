"""Open a report's index.html in headless Chromium and check that it rendered.

No browser download and no driver: Debian's ``chromium`` package
(``apt-get install chromium``) is run with ``--dump-dom`` (the DOM after the
page's scripts ran, window ``load`` included thanks to
``--virtual-time-budget``) and ``--screenshot``. The page's inline script sets
``<body data-images-loaded="N/M">`` after ``load``: N images decoded
(naturalWidth > 0) out of M.

Used by ``tests/test_report.py``; also a script::

    python tests/browser_check.py reports/<run>/index.html [--screenshot shot.png]

exits 0 when the page rendered (title, table rows, every image loaded), 1 if
not, 2 when no Chromium is found.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

#: Where Debian and others put the browser.
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Flags for a quiet, offline, sandbox-less (root in a container) headless run.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
         "--virtual-time-budget=5000")


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None ($CHROMIUM overrides)."""
    env = os.environ.get("CHROMIUM")
    if env and Path(env).is_file():
        return env
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def _run(browser: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="clnfdiag-chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def dump_dom(html: Path, browser: str, timeout: float = 90) -> str:
    """The serialised DOM of ``html`` after its scripts ran (raises RuntimeError on failure)."""
    proc = _run(browser, ["--dump-dom", Path(html).resolve().as_uri()], timeout)
    if proc.returncode != 0 or "<body" not in proc.stdout:
        raise RuntimeError(f"chromium --dump-dom failed (exit {proc.returncode}): {proc.stderr[-800:]}")
    return proc.stdout


def screenshot(html: Path, png: Path, browser: str, size: tuple[int, int] = (1280, 2000),
               timeout: float = 90) -> Path:
    """Screenshot of the top of the page (raises RuntimeError when no PNG was written)."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    if png.exists():
        png.unlink()
    proc = _run(browser, [f"--window-size={size[0]},{size[1]}", f"--screenshot={png}",
                          Path(html).resolve().as_uri()], timeout)
    if not png.is_file() or png.stat().st_size == 0:
        raise RuntimeError(f"chromium --screenshot wrote nothing (exit {proc.returncode}): {proc.stderr[-800:]}")
    return png


@dataclass
class Rendered:
    """What the browser's DOM shows.

    Attributes
    ----------
    title : str
        ``<title>`` text.
    images_loaded : str or None
        ``data-images-loaded`` of ``<body>`` (``"pending"`` if the load handler never ran).
    n_images : int
        ``<img>`` elements.
    landmark_rows : int
        Body rows of the per-landmark tables (``table.landmarks``).
    overview_rows : int
        Body rows of the overview table (``table#overview``).
    h1 : str
        Text of the first ``<h1>``.
    """

    title: str = ""
    images_loaded: str | None = None
    n_images: int = 0
    landmark_rows: int = 0
    overview_rows: int = 0
    h1: str = ""
    _stack: list = field(default_factory=list, repr=False)

    @property
    def images_ok(self) -> bool:
        """Every image decoded, and there is at least one."""
        if not self.images_loaded or "/" not in self.images_loaded:
            return False
        ok, total = self.images_loaded.split("/", 1)
        return ok == total and int(total) == self.n_images and self.n_images > 0

    def problems(self) -> list[str]:
        """Why the page does not count as rendered (empty when it does)."""
        out = []
        if not self.title:
            out.append("no <title>")
        if not self.h1:
            out.append("no <h1>")
        if self.landmark_rows == 0:
            out.append("no per-landmark table rows")
        if self.overview_rows == 0:
            out.append("no overview table rows")
        if not self.images_ok:
            out.append(f"images loaded {self.images_loaded!r} of {self.n_images} <img>")
        return out


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.r = Rendered()
        self._in: str | None = None
        self._tables: list[str] = []
        self._tbody = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "title":
            self._in = "title"
        elif tag == "h1" and not self.r.h1:
            self._in = "h1"
        elif tag == "body":
            self.r.images_loaded = a.get("data-images-loaded")
        elif tag == "img":
            self.r.n_images += 1
        elif tag == "table":
            classes = (a.get("class") or "").split()
            self._tables.append("landmarks" if "landmarks" in classes else
                                ("overview" if a.get("id") == "overview" else "other"))
        elif tag == "tbody":
            self._tbody += 1
        elif tag == "tr" and self._tbody and self._tables:
            if self._tables[-1] == "landmarks":
                self.r.landmark_rows += 1
            elif self._tables[-1] == "overview":
                self.r.overview_rows += 1

    def handle_endtag(self, tag):
        if tag in ("title", "h1"):
            self._in = None
        elif tag == "table" and self._tables:
            self._tables.pop()
        elif tag == "tbody":
            self._tbody = max(0, self._tbody - 1)

    def handle_data(self, data):
        if self._in == "title":
            self.r.title += data
        elif self._in == "h1":
            self.r.h1 += data


def parse_dom(dom: str) -> Rendered:
    """Read the checked facts off a serialised DOM."""
    p = _Parser()
    p.feed(dom)
    p.close()
    p.r.title, p.r.h1 = p.r.title.strip(), p.r.h1.strip()
    return p.r


def check(html: Path, browser: str, shot: Path | None = None) -> Rendered:
    """Render ``html`` in Chromium; optionally save a screenshot."""
    rendered = parse_dom(dump_dom(html, browser))
    if shot is not None:
        screenshot(html, shot, browser)
    return rendered


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", type=Path)
    ap.add_argument("--screenshot", type=Path, default=None)
    args = ap.parse_args(argv)
    browser = find_chromium()
    if browser is None:
        print("no chromium found (apt-get install chromium)", file=sys.stderr)
        return 2
    r = check(args.html, browser, args.screenshot)
    print(f"title: {r.title!r}\nimages loaded: {r.images_loaded} ({r.n_images} <img>)\n"
          f"per-landmark rows: {r.landmark_rows}\noverview rows: {r.overview_rows}")
    if args.screenshot:
        print(f"screenshot: {args.screenshot}")
    problems = r.problems()
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
