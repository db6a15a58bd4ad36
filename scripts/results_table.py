"""Print the headline benchmark's table as Markdown (for the README).

Usage: ``python scripts/results_table.py [results/headline.json]``. The json file is what
``python -m pruning_utils.benchmark --out results`` writes. ``--gpu results/gpu_h200.json``
prints instead the GPU speedups that ``scripts/time_on_device.py`` measured, next to the CPU
ones.
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


def gpu_markdown(meta: dict) -> str:
    """The GPU speedups of ``time_on_device.py`` next to the CPU ones, as a Markdown table."""
    lines = [
        f"| model | method | setting | {meta['device_name']} b1 | b256 | 2-core CPU b1 | b256 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in meta["rows"]:
        lines.append(
            f"| {row['model']} | {row['method']} | {row['setting']:g} "
            f"| {row['speedup_b1']:.2f}× | {row['speedup_b256']:.2f}× "
            f"| {row['speedup_b1_cpu']:.2f}× | {row['speedup_b256_cpu']:.2f}× |"
        )
    layer = meta["layer"]
    lines.append("")
    lines.append(
        f"Single layer, {layer['layer']}, at rank {layer['rank']}, batch {layer['batch']}: "
        f"{layer['speedup']:.2f}× (IQR {layer['speedup_iqr']:.2f}) on the {meta['device_name']}, "
        f"{layer['speedup_cpu']:.2f}× on the CPU (FLOP ratio {layer['flop_ratio']:.1f}×); "
        f"torch {meta['torch']}."
    )
    if meta.get("missing_rows"):
        lines.append(f"Not measured on the GPU: {', '.join(meta['missing_rows'])}.")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] == "--gpu":
        path = Path(argv[2]) if len(argv) > 2 else Path("results/gpu_h200.json")
        print(gpu_markdown(json.loads(path.read_text())))
        return 0
    path = Path(argv[1]) if len(argv) > 1 else Path("results/headline.json")
    print(markdown(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
