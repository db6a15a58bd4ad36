"""Sphinx extension of the book: every ``<script>`` of a page appears once.

An inline script that an extension adds once the HTML builder exists
(``app.add_js_file(None, body=...)``) is registered twice by Sphinx 7.4, once with the file name
``None`` and once with ``''``, which Sphinx does not recognise as the same script, so every page
carries two copies. For sphinx-thebe's configuration script, which declares a ``const``, the second
copy is a JavaScript error on every page (``Identifier 'THEBE_JS_URL' has already been
declared``). This extension keeps the first copy of each script. ``_config.yml`` loads it with
``sphinx: local_extensions``.
"""

from __future__ import annotations

import os
from typing import Any

from sphinx.application import Sphinx


def unique_scripts(scripts: list[Any]) -> list[Any]:
    """The scripts in their order, without repeats.

    Parameters
    ----------
    scripts : list of sphinx.builders.html._assets._JavaScript
        A page's ``script_files``; two are the same when their file names (``None`` counting as
        ``''``) and their attributes (``body``, ``async``, ...) are equal.

    Returns
    -------
    list
        The first occurrence of each script.
    """
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    kept = []
    for script in scripts:
        attributes = getattr(script, "attributes", {}) or {}
        key = (
            os.fspath(getattr(script, "filename", script) or ""),
            tuple(sorted((str(k), str(v)) for k, v in attributes.items())),
        )
        if key not in seen:
            seen.add(key)
            kept.append(script)
    return kept


def _on_page_context(app: Sphinx, pagename: str, templatename: str, context: dict,
                     doctree: Any) -> None:
    if "script_files" in context:
        context["script_files"] = unique_scripts(list(context["script_files"]))


def setup(app: Sphinx) -> dict[str, Any]:
    # Late priority: after the extensions that add scripts to the page.
    app.connect("html-page-context", _on_page_context, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1.0"}
