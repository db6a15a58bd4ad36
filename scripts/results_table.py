"""Print the headline benchmark's table as Markdown (for the README).

Usage: ``python scripts/results_table.py [results/headline.json]``. The json file is what
``python -m pruning_utils.benchmark --out results`` writes. ``--gpu results/gpu_h200.json``
prints instead the GPU speedups that ``scripts/time_on_device.py`` measured, next to the CPU
ones. The tables are made by :mod:`pruning_utils.results`, which the book's pages use too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pruning_utils.results import gpu_markdown, headline_markdown


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] == "--gpu":
        path = Path(argv[2]) if len(argv) > 2 else Path("results/gpu_h200.json")
        print(gpu_markdown(json.loads(path.read_text())))
        return 0
    path = Path(argv[1]) if len(argv) > 1 else Path("results/headline.json")
    print(headline_markdown(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
