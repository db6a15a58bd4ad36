"""Keep every chapter's Colab install cell in step with ``_config.yml``.

``repository.url`` and ``repository.branch`` of ``_config.yml`` name the repository once: the
book's launch buttons (Colab, Binder) are built from them, and this script writes the first
code cell of every chapter, which installs the library in Colab from the same place::

    import sys

    if "google.colab" in sys.modules:
        %pip install --quiet "pruning-utils @ git+<repository.url>@<repository.branch>"

Outside Colab the cell does nothing. Links to raw files of a GitHub repository
(``https://raw.githubusercontent.com/<owner>/<name>/<branch>/``) in code cells are rewritten
to the configured repository as well, so that a fork changes one line of ``_config.yml`` and
runs this script.

Usage::

    python scripts/sync_install_cells.py            # rewrite the cells that disagree
    python scripts/sync_install_cells.py --check    # exit 1, naming the notebooks that disagree

Only the ``source`` of the cells concerned changes; outputs, metadata and the JSON layout of the
notebooks (one-space indentation, as Jupyter writes them) are kept.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "_config.yml"
PYPROJECT = ROOT / "pyproject.toml"
#: Every notebook of the book: the chapters (NN_name.ipynb) and the pages outside them
#: (the guide, the key results).
NOTEBOOK_GLOB = "*.ipynb"

COLAB_GUARD = '"google.colab" in sys.modules'
_RAW_LINK = re.compile(r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[^/\s\"']+/")


def read_repository(config: Path = CONFIG) -> tuple[str, str]:
    """``(url, branch)`` from the ``repository`` section of a Jupyter Book ``_config.yml``.

    Raises
    ------
    FileNotFoundError
        When ``config`` does not exist.
    ValueError
        When ``repository.url`` is missing or not an http(s) URL, or ``repository.branch`` is
        not a non-empty string (it defaults to ``main``, as in Jupyter Book).
    """
    import yaml

    if not config.is_file():
        raise FileNotFoundError(f"{config} not found: it must name the repository (repository.url)")
    settings = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    repository = settings.get("repository") if isinstance(settings, dict) else None
    if not isinstance(repository, dict):
        raise ValueError(f"{config}: add a 'repository' section with 'url' and 'branch'")
    url, branch = repository.get("url"), repository.get("branch", "main")
    parsed = urlparse(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(
            f"{config}: repository.url must be the http(s) address of the repository, "
            f"e.g. https://github.com/OWNER/NAME; got {url!r}"
        )
    if not isinstance(branch, str) or not branch.strip() or any(c.isspace() for c in branch):
        raise ValueError(f"{config}: repository.branch must be a branch name, got {branch!r}")
    return url.rstrip("/"), branch


def package_name(pyproject: Path = PYPROJECT) -> str:
    """The distribution name of the library (``[project] name`` of ``pyproject.toml``)."""
    text = pyproject.read_text(encoding="utf-8")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the one line that matters
        match = re.search(r'(?ms)^\[project\].*?^name\s*=\s*"([^"]+)"', text)
        if match is None:
            raise ValueError(f"{pyproject}: no name in the [project] table") from None
        return match.group(1)
    return tomllib.loads(text)["project"]["name"]


def install_requirement(url: str, branch: str, package: str) -> str:
    """The pip requirement of the install cell: ``<package> @ git+<url>@<branch>``."""
    return f"{package} @ git+{url}@{branch}"


def install_cell_source(url: str, branch: str, package: str) -> str:
    """The source of the install cell for the repository ``url`` at ``branch``."""
    requirement = install_requirement(url, branch, package)
    return (
        "# In Colab only: install the library from the repository named in _config.yml\n"
        "# (scripts/sync_install_cells.py writes this cell). Elsewhere it does nothing.\n"
        "import sys\n"
        "\n"
        f"if {COLAB_GUARD}:\n"
        f'    %pip install --quiet "{requirement}"'
    )


def raw_base(url: str, branch: str) -> str | None:
    """The raw-file address ``https://raw.githubusercontent.com/<owner>/<name>/<branch>/``.

    None when ``url`` is not a GitHub repository.
    """
    parsed = urlparse(url)
    parts = [p for p in parsed.path.split("/") if p]
    if parsed.netloc.lower() != "github.com" or len(parts) != 2:
        return None
    owner, name = parts[0], parts[1].removesuffix(".git")
    return f"https://raw.githubusercontent.com/{owner}/{name}/{branch}/"


def _text(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def _set_text(cell: dict, text: str) -> None:
    """Store ``text`` in the layout the cell already uses (one string, or a list of lines)."""
    cell["source"] = text if isinstance(cell["source"], str) else text.splitlines(keepends=True)


def install_cell_index(notebook: dict) -> int | None:
    """Index (among all cells) of the first code cell that tests for Colab, or None."""
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code" and COLAB_GUARD in _text(cell):
            return index
    return None


def synced(notebook: dict, source: str, raw: str | None) -> tuple[dict, list[str]]:
    """A copy of ``notebook`` with its install cell and raw links brought in step.

    Returns the copy and a list of what disagreed (empty when nothing did).

    Raises
    ------
    ValueError
        When the notebook has no install cell.
    """
    notebook = json.loads(json.dumps(notebook))
    index = install_cell_index(notebook)
    if index is None:
        raise ValueError(
            f"no install cell (a code cell testing {COLAB_GUARD}); add one as the first code cell"
        )
    changes = []
    cell = notebook["cells"][index]
    if _text(cell) != source:
        _set_text(cell, source)
        changes.append(f"install cell (cell {index})")
    if raw is not None:
        for k, cell in enumerate(notebook["cells"]):
            text = _text(cell)
            if cell["cell_type"] != "code" or k == index:
                continue
            new = _RAW_LINK.sub(raw, text)
            if new != text:
                _set_text(cell, new)
                changes.append(f"raw link to the repository (cell {k})")
    return notebook, changes


def dumps(notebook: dict) -> str:
    """The notebook as Jupyter writes it: one-space indentation, UTF-8, final newline."""
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def sync(
    notebooks: list[Path], url: str, branch: str, package: str, *, check: bool
) -> dict[Path, list[str]]:
    """Bring the notebooks in step (unless ``check``); return ``{notebook: what disagreed}``."""
    source = install_cell_source(url, branch, package)
    raw = raw_base(url, branch)
    disagreements = {}
    for path in notebooks:
        try:
            notebook, changes = synced(json.loads(path.read_text(encoding="utf-8")), source, raw)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        if changes:
            disagreements[path] = changes
            if not check:
                path.write_text(dumps(notebook), encoding="utf-8")
    return disagreements


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help=f"notebooks (default: notebooks/{NOTEBOOK_GLOB})")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 and name the notebooks that disagree")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the book's _config.yml")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob(NOTEBOOK_GLOB))
    url, branch = read_repository(args.config)
    package = package_name()
    disagreements = sync(notebooks, url, branch, package, check=args.check)
    requirement = install_requirement(url, branch, package)
    for path, changes in disagreements.items():
        verb = "disagrees with" if args.check else "rewritten from"
        shown = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
        print(f"{shown}: {verb} {args.config.name} ({'; '.join(changes)})")
    if args.check and disagreements:
        print(f"{len(disagreements)} notebook(s) do not install {requirement!r}; "
              "run: python scripts/sync_install_cells.py", file=sys.stderr)
        return 1
    if not disagreements:
        print(f"{len(notebooks)} notebook(s) install {requirement!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
