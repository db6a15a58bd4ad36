"""Execute notebooks in place in FULL mode, storing the outputs the book shows.

Usage: python scripts/execute_notebooks.py [notebooks/NN_name.ipynb ...]   (default: all chapters)
Prints each notebook's execution time. Smoke mode is switched off for the run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from pruning_utils.config import SMOKE_ENV


def execute(path: Path, timeout: int = 6 * 3600) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    elapsed = time.perf_counter() - start
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str]) -> None:
    os.environ[SMOKE_ENV] = "0"
    root = Path(__file__).resolve().parents[1]
    paths = [Path(a) for a in argv] or sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        elapsed = execute(path)
        print(f"{path.name}: executed in full mode in {elapsed:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
