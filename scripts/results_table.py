"""Print the headline benchmark's table as Markdown (for the README).

Usage: ``python scripts/results_table.py [results/headline.json]``. The json file is what
``python -m pruning_utils.benchmark --out results`` writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def markdown(meta: dict) -> str:
    """The rows of ``headline.json`` as a Markdown table, then the single-layer result."""
    lines = [
        "| model | method | setting | fine-tuned | accuracy dense → pruned (%) "
        "| params ÷ | FLOPs ÷ | speedup b1 | speedup b256 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in meta["rows"]:
        setting = "—" if row["setting"] is None else f"{row['parameter']} {row['setting']:g}"
        if not row["within_tolerance"]:
            setting += " (none within 1 pt)"
        lines.append(
            f"| {row['model']} | {row['method']} | {setting} "
            f"| {'yes' if row['fine_tuned'] else 'no'} "
            f"| {100 * row['dense_accuracy']:.2f} → {100 * row['pruned_accuracy']:.2f} "
            f"| {row['param_ratio']:.1f} | {row['flop_ratio']:.1f} "
            f"| {row['speedup_b1']:.2f}× | {row['speedup_b256']:.2f}× |"
        )
    layer = meta["layer"]
    lines.append("")
    lines.append(
        f"Single layer, {layer['layer']}, at rank {layer['rank']}, batch {layer['batch']}: "
        f"{layer['speedup']:.2f}× faster than dense (FLOP ratio {layer['flop_ratio']:.1f}×). "
        f"{meta['mode'].capitalize()} run, {meta['threads']} threads, "
        f"{meta['seconds'] / 60:.0f} minutes, torch {meta['torch']}."
    )
    timing = meta.get("timing_run")
    if timing is not None:  # the speedups come from a later --retime run
        load = timing["load_average"]["start"]
        lines[-1] += (
            f" Speedups measured again with `--retime` ({timing['seconds'] / 60:.0f} minutes"
            + (f", load average {load[0]:.2f} at the start" if load else "") + ")."
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else Path("results/headline.json")
    print(markdown(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
