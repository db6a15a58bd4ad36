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


def _pair(values, scale: float = 1.0) -> str:
    return f"[{scale * values[0]:.2f}, {scale * values[1]:.2f}]"


def markdown(meta: dict) -> str:
    """The rows of ``headline.json`` as a Markdown table, then the single-layer result."""
    protocol = meta.get("protocol")
    if protocol is None:
        return markdown_before_validation(meta)
    lines = [
        "| model | method | setting | fine-tuned | test accuracy (%) | drop vs reference (points) "
        "| params ÷ | FLOPs ÷ | speedup b1 [q1, q3] | speedup b256 [q1, q3] | retimed ÷ |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in meta["rows"]:
        if row.get("setting") is None or row["setting"] != row["setting"]:  # control: NaN/None
            setting = "widths " + "-".join(str(w) for w in row["widths"][:-1])
        else:
            setting = f"{row['parameter']} {row['setting']:g}"
        if not row["within_tolerance"]:
            setting += " (not within 1 pt on test)"
        retimed = row.get("retime_ratio_b256")
        lines.append(
            f"| {row['model']} | {row['method']} | {setting} "
            f"| {'yes' if row['fine_tuned'] else 'no'} "
            f"| {100 * row['test_accuracy']:.2f} {_pair(row['test_accuracy_ci95'], 100)} "
            f"| {row['test_drop_points']:.2f} {_pair(row['test_drop_ci95'])} "
            f"| {row['param_ratio']:.1f} | {row['flop_ratio']:.1f} "
            f"| {row['speedup_b1']:.2f}× {_pair(row['speedup_b1_iqr'])} "
            f"| {row['speedup_b256']:.2f}× {_pair(row['speedup_b256_iqr'])} "
            f"| {'—' if retimed is None else f'{retimed:.2f}'} |"
        )
    layer = meta["layer"]
    machine = meta["machine"]
    lines.append("")
    lines.append(
        f"Chosen on {protocol['validation_images']:,} validation images, reported on "
        f"{protocol['test_images']:,} test images, mean of seeds {protocol['seeds']}; "
        "drop = reference − pruned (the reference is dense, or dense given the same epoch of "
        "fine-tuning for fine-tuned rows and the control), 95 % paired bootstrap interval. "
        f"Single layer, {layer['layer']}, at rank {layer['rank']}, batch {layer['batch']}: "
        f"{layer['speedup']:.2f}× faster than dense (FLOP ratio {layer['flop_ratio']:.1f}×). "
        f"{meta['mode'].capitalize()} run, {meta['seconds'] / 60:.0f} minutes; timings on "
        f"{machine['cpu_model']}, {machine['threads']} threads, BLAS "
        f"{machine['blas'].get('blas_info', '?')}, torch {machine['torch']}, load average "
        f"{machine['load_before'][0]:.2f} before and {machine['load_after'][0]:.2f} after."
    )
    if meta.get("timing_run") is not None:
        lines[-1] += (
            f" Speedups from the last of {len(meta.get('superseded_timings', []))} "
            "`--retime` runs; 'retimed ÷' is its batch-256 speedup over the previous run's."
        )
    return "\n".join(lines)


def markdown_before_validation(meta: dict) -> str:
    """A ``headline.json`` written before the validation protocol (choices made on one half of
    the test set, reported on the other half, one seed), as its Markdown table."""
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
