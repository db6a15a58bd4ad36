"""Open every page of the built book in headless Chromium and check that it really rendered.

The pages are those of ``_toc.yml`` together with every other content page found in the build
(generated pages such as ``genindex.html`` and ``search.html`` and the ``_static`` files are
skipped). The build is served on a free port of 127.0.0.1; requests to any other host are
blocked, so the check also proves that the book works offline. For each page the script waits
until MathJax has typeset the math, saves a full-page screenshot to
``<screenshots>/<page>.png``, and reports a page as failed when it finds

- an image that did not load (``naturalWidth == 0``), or a link to a missing local file;
- math that MathJax did not render: an element of class ``math`` (inline ``span.math`` or
  display ``div.math``) without an ``mjx-container``, a MathJax error (``merror``), an undefined
  macro (shown in red by MathJax), or TeX delimiters (``$$``, ``\\(``, ``\\[``, ...) left in
  the text outside code;
- a Python traceback or an error output cell;
- a request to the local server that failed or returned an HTTP error, a request to another host,
  a JavaScript exception or a console error.

It prints one line per page and ends with ``N passed, M failed``; the exit status is 1 when a page
failed. Usage (after ``make book``; ``make check-book`` runs it)::

    python scripts/check_book.py [HTML_DIR] [--toc _toc.yml] [--screenshots DIR]
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import http.server
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urljoin, urlsplit

import yaml

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, ConsoleMessage, Request, Response, Route

BROWSER = "/usr/bin/chromium"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SOURCE_SUFFIXES = (".md", ".ipynb", ".rst", ".myst")
# Pages that Sphinx generates for every book; they hold no chapter content.
GENERATED_PAGES = {"genindex.html", "search.html", "py-modindex.html"}
VIEWPORT = {"width": 1280, "height": 900}

# Runs in the page once it has loaded: waits for MathJax, images and fonts.
WAIT_JS = """
async (timeoutMs) => {
  const deadline = new Promise((resolve) => setTimeout(() => resolve("timeout"), timeoutMs));
  const mj = window.MathJax;
  let mathjax = "absent";
  if (mj && mj.startup && mj.startup.promise) {
    const r = await Promise.race([mj.startup.promise.then(() => "done"), deadline]);
    mathjax = r === "done" ? "typeset" : "timeout";
  } else if (mj) {
    mathjax = "not loaded";  // only the configuration object: the script itself did not run
  }
  const images = [...document.images];
  for (const img of images) img.loading = "eager";
  await Promise.race([
    Promise.all(images.map((img) => img.complete ? null : new Promise((resolve) => {
      img.addEventListener("load", resolve, {once: true});
      img.addEventListener("error", resolve, {once: true});
    }))),
    deadline,
  ]);
  if (document.fonts) await Promise.race([document.fonts.ready, deadline]);
  return mathjax;
}
"""

# Runs in the page after WAIT_JS: collects everything the checks need.
INSPECT_JS = r"""
() => {
  const snippet = (s) => s.replace(/\s+/g, " ").trim().slice(0, 80);
  const out = {};

  const images = [...document.images];
  out.images = images.length;
  out.brokenImages = images
    .filter((img) => !img.complete || img.naturalWidth === 0)
    .map((img) => img.getAttribute("src") || "(no src)");
  out.links = [...document.querySelectorAll("a[href]")].map((a) => a.href);

  const maths = [...document.querySelectorAll("span.math, div.math")];
  out.math = maths.length;
  out.unrendered = maths.filter((el) => !el.querySelector("mjx-container"))
    .map((el) => snippet(el.textContent));
  out.mathErrors = [...document.querySelectorAll("mjx-merror")]
    .map((el) => el.getAttribute("data-mjx-error") || "MathJax error");
  out.undefinedMacros = [];
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.document && mj.startup.toMML) {
    for (const item of mj.startup.document.math) {
      if (!item.root) continue;
      const mml = mj.startup.toMML(item.root);
      for (const m of mml.matchAll(/<merror[^>]*data-mjx-error="([^"]*)"/g)) {
        out.mathErrors.push(m[1]);
      }
      // MathJax's noundefined extension shows an unknown \macro as red text.
      for (const m of mml.matchAll(/<mtext[^>]*mathcolor="red"[^>]*>(\\[^<]*)<\/mtext>/g)) {
        out.undefinedMacros.push(m[1]);
      }
    }
  }
  out.mathErrors = [...new Set(out.mathErrors)];

  // Text outside code, scripts and math elements (those are checked above): TeX delimiters
  // there were never parsed as math.
  const skip = "pre, code, script, style, noscript, template, textarea, mjx-container, "
    + ".highlight, .math";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
    acceptNode: (node) => node.parentElement && node.parentElement.closest(skip)
      ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT,
  });
  const delimiters = /\$\$|\\\(|\\\[|\\begin\{|\$[^$\s][^$\n]*\\[A-Za-z]+[^$\n]*\$/g;
  out.literalTex = [];
  while (walker.nextNode()) {
    const text = walker.currentNode.textContent;
    for (const m of text.matchAll(delimiters)) {
      out.literalTex.push(snippet(text.slice(Math.max(0, m.index - 30), m.index + 50)));
    }
  }

  const body = document.body.textContent;
  out.traceback = body.includes("Traceback (most recent call last)");
  // myst-nb renders an error output as div.output.traceback; its last line names the error.
  const errorOutputs = ".output.traceback, .output.error, .output_error";
  out.errorOutputs = [...document.querySelectorAll(errorOutputs)]
    .map((el) => (el.querySelector("pre") || el).textContent.split("\n").filter((l) => l.trim()))
    .map((lines) => snippet(lines.length ? lines[lines.length - 1] : ""));
  return out;
}
"""


@dataclass
class PageResult:
    """What was found on one page: ``problems`` is empty when the page passed."""

    name: str
    problems: list[str] = field(default_factory=list)
    math: int = 0
    images: int = 0
    seconds: float = 0.0


def toc_patterns(toc_path: Path) -> list[str]:
    """Document names (``book/intro``) and glob patterns named by a Jupyter Book ``_toc.yml``.

    Parameters
    ----------
    toc_path : Path
        The table of contents: ``root`` plus ``file``/``glob`` entries under ``chapters``,
        ``parts``, ``sections`` or ``entries``, at any depth; ``url`` entries are skipped.

    Returns
    -------
    list of str
        Document names without suffix, in the order of the file.
    """
    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8"))
    if not isinstance(toc, dict) or "root" not in toc:
        raise ValueError(f"toc {toc_path} must be a mapping with a 'root' entry")
    names: list[str] = []

    def visit(node: object) -> None:
        if isinstance(node, dict):
            for key in ("root", "file", "glob"):
                if isinstance(node.get(key), str):
                    names.append(_docname(node[key]))
            for value in node.values():
                if isinstance(value, list | dict):
                    visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(toc)
    return list(dict.fromkeys(names))


def _docname(path: str) -> str:
    path = path.strip().strip("/")
    for suffix in SOURCE_SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def _redirect_target(page: Path) -> str | None:
    """The URL of a ``<meta http-equiv="refresh">`` page, or None for an ordinary page."""
    head = page.read_text(encoding="utf-8", errors="replace")[:4000]
    match = re.search(r"""http-equiv=["']refresh["'][^>]*url=([^"'>\s]+)""", head, re.IGNORECASE)
    return match.group(1) if match else None


def built_pages(html_dir: Path) -> list[str]:
    """Document names of the content pages in a Sphinx HTML build.

    Skips folders whose name starts with ``_`` at the top (``_static``, ``_sources``,
    ``_images``, ...), the generated pages (``genindex``, ``search``, ``py-modindex``) and
    redirect pages (Jupyter Book's ``index.html``).
    """
    names = []
    for page in sorted(html_dir.rglob("*.html")):
        rel = page.relative_to(html_dir)
        if rel.parts[0].startswith("_") or rel.name in GENERATED_PAGES:
            continue
        if _redirect_target(page) is not None:
            continue
        names.append(rel.with_suffix("").as_posix())
    return names


def pages_to_check(html_dir: Path, toc_path: Path) -> tuple[list[str], list[str]]:
    """Pages to open, and the problems found before opening any.

    The pages are the documents of the table of contents (glob patterns are matched against
    the build) followed by any other content page of the build. A document of the table of
    contents without its page, and a redirect to a missing page, are problems.
    """
    built = built_pages(html_dir)
    problems = []
    pages: list[str] = []
    for pattern in toc_patterns(toc_path):
        if any(ch in pattern for ch in "*?["):
            matched = fnmatch.filter(built, pattern)
            if not matched:
                problems.append(f"{toc_path.name}: glob {pattern!r} matches no built page")
            pages.extend(matched)
        elif (html_dir / f"{pattern}.html").is_file():
            pages.append(pattern)
        else:
            problems.append(f"{toc_path.name}: {pattern} has no page {pattern}.html in {html_dir}")
    pages.extend(built)
    for page in sorted(html_dir.glob("*.html")):
        target = _redirect_target(page)
        if target is not None and not _local_file(html_dir, urljoin(f"/{page.name}", target)):
            problems.append(f"{page.name} redirects to a missing page: {target}")
    return list(dict.fromkeys(pages)), problems


def _local_file(html_dir: Path, url_path: str) -> Path | None:
    """The file of ``html_dir`` that a server path such as ``/book/intro.html`` names, if any."""
    path = unquote(urlsplit(url_path).path)
    if path.endswith("/"):
        path += "index.html"
    candidate = (html_dir / path.lstrip("/")).resolve()
    if not candidate.is_relative_to(html_dir.resolve()) or not candidate.is_file():
        return None
    return candidate


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def serve(html_dir: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``html_dir`` on a free port of 127.0.0.1 from a daemon thread.

    Returns
    -------
    (server, origin)
        The running server (call ``shutdown()``) and its origin, ``http://127.0.0.1:PORT``.
    """
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}"


def check_page(context: BrowserContext, origin: str, html_dir: Path, name: str, shot: Path,
               timeout_s: float) -> PageResult:
    """Open one page in a new tab of ``context``, wait for it to render and check it."""
    result = PageResult(name)
    started = time.perf_counter()
    page = context.new_page()
    events: list[str] = []

    def local(url: str) -> bool:
        return url.startswith(origin + "/")

    http_errors: set[str] = set()

    def on_response(response: Response) -> None:
        if local(response.url) and response.status >= 400:
            http_errors.add(response.url)
            events.append(f"HTTP {response.status}: {response.url[len(origin):]}")

    def on_request_failed(request: Request) -> None:
        if request.url in http_errors:
            return  # reported with its status
        if local(request.url):
            events.append(f"request failed ({request.failure}): {request.url[len(origin):]}")
        elif urlsplit(request.url).scheme in ("http", "https", "ws", "wss"):
            events.append(f"request to another host (blocked): {request.url}")

    def on_console(message: ConsoleMessage) -> None:
        # Failed loads are reported above, with their URL.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            events.append(f"console error: {message.text[:200]}")

    page.on("response", on_response)
    page.on("requestfailed", on_request_failed)
    page.on("console", on_console)
    page.on("pageerror", lambda error: events.append(f"JavaScript error: {error}"[:300]))
    try:
        page.goto(f"{origin}/{name}.html", wait_until="load", timeout=timeout_s * 1000)
        mathjax = page.evaluate(WAIT_JS, timeout_s * 1000)
        found = page.evaluate(INSPECT_JS)
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True, animations="disabled",
                        timeout=timeout_s * 1000)
    except Exception as error:  # a page that cannot be opened or inspected fails, with the cause
        result.problems.append(f"could not be checked: {type(error).__name__}: {error}"[:500])
        page.close()
        result.seconds = time.perf_counter() - started
        return result
    page.close()

    result.math, result.images = found["math"], found["images"]
    problems = result.problems
    if found["math"] and mathjax != "typeset":
        problems.append({
            "absent": "MathJax is not on the page",
            "not loaded": "the MathJax script did not run",
            "timeout": f"MathJax did not finish typesetting within {timeout_s:g} s",
        }[mathjax] + f" (math elements: {found['math']})")
    problems += [f"image did not load: {src}" for src in found["brokenImages"]]
    for href in dict.fromkeys(found["links"]):
        if local(href) and _local_file(html_dir, href[len(origin):]) is None:
            problems.append(f"link to a missing file: {href[len(origin):]}")
    problems += [f"math not rendered: {text}" for text in found["unrendered"]]
    problems += [f"MathJax error: {text}" for text in found["mathErrors"]]
    problems += [f"undefined TeX macro: {text}" for text in found["undefinedMacros"]]
    problems += [f"TeX left in the text: {text}" for text in dict.fromkeys(found["literalTex"])]
    if found["traceback"]:
        problems.append("Python traceback in the page")
    problems += [f"error output: {text}" for text in found["errorOutputs"]]
    problems += list(dict.fromkeys(events))
    result.seconds = time.perf_counter() - started
    return result


def _block_other_hosts(origin: str) -> Callable[[Route], None]:
    """A route handler that lets requests to ``origin`` (and data/blob URLs) through."""

    def handle(route: Route) -> None:
        url = route.request.url
        if url.startswith(origin + "/") or urlsplit(url).scheme in ("data", "blob", "about"):
            route.continue_()
        else:
            route.abort("blockedbyclient")

    return handle


def check_book(html_dir: Path, toc_path: Path, screenshots: Path, browser: str = BROWSER,
               timeout_s: float = 30.0) -> Iterator[PageResult]:
    """Check every page of the book built in ``html_dir``; yields one result per page.

    A first result named ``(build)`` is yielded when pages named by ``toc_path`` are missing
    from the build.
    """
    from playwright.sync_api import sync_playwright

    pages, problems = pages_to_check(html_dir, toc_path)
    if problems:
        yield PageResult("(build)", problems)
    server, origin = serve(html_dir)
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=browser, args=BROWSER_ARGS,
                                                  headless=True)
            context = chromium.new_context(viewport=VIEWPORT, service_workers="block")
            context.route("**/*", _block_other_hosts(origin))
            for name in pages:
                yield check_page(context, origin, html_dir, name, screenshots / f"{name}.png",
                                 timeout_s)
            context.close()
            chromium.close()
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html_dir", nargs="?", type=Path, default=Path("_build/html"),
                        help="the HTML build (default: _build/html)")
    parser.add_argument("--toc", type=Path, default=Path("_toc.yml"),
                        help="the table of contents (default: _toc.yml)")
    parser.add_argument("--screenshots", type=Path, default=None,
                        help="where the PNGs go (default: screenshots/ next to HTML_DIR)")
    parser.add_argument("--browser", default=BROWSER, help=f"Chromium (default: {BROWSER})")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds allowed per page for loading and typesetting (default: 30)")
    args = parser.parse_args(argv)

    html_dir = args.html_dir
    if not (html_dir / "index.html").is_file():
        parser.error(f"html_dir {html_dir} holds no index.html: build the book first (make book)")
    if not args.toc.is_file():
        parser.error(f"--toc {args.toc} is not a file")
    if not Path(args.browser).is_file():
        parser.error(f"--browser {args.browser} is not a file: install Chromium "
                     "(make chromium, or apt-get install chromium)")
    if args.timeout <= 0:
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    screenshots = args.screenshots or html_dir.parent / "screenshots"

    passed = failed = 0
    for result in check_book(html_dir, args.toc, screenshots, args.browser, args.timeout):
        if result.name == "(build)":
            failed += 1
            print(f"FAIL {result.name}")
        else:
            status = "FAIL" if result.problems else "ok  "
            print(f"{status} {result.name}: math {result.math}, images {result.images}, "
                  f"{result.seconds:.1f} s", flush=True)
            passed += not result.problems
            failed += bool(result.problems)
        for problem in result.problems:
            print(f"       {problem}")
    print(f"{passed} passed, {failed} failed (pages; screenshots in {screenshots})")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
