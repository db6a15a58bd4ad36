"""Execute the chapters and record what each one cost.

Usage::

    python scripts/execute_notebooks.py [--smoke] [--report CSV] [notebooks/NAME.ipynb ...]

Without ``--smoke`` (``make execute``) every notebook (default: all of ``notebooks/``: the
chapters ``NN_name.ipynb`` and the pages outside them, such as the guide) runs in
full mode and its outputs, the ones the book shows, are stored in the notebook. ``--smoke`` runs
the quick mode of the tests instead and leaves the notebook files as they are.

Either way one row per chapter goes into the execution report (default
``results/execution.csv``): wall-clock seconds, the 1-minute load average before and after, the
CPU model, torch's threads and version, the device and the date. Running a chapter again
replaces its row (same notebook, mode and device) and keeps the other rows, so chapters can be
re-executed one at a time. The setup chapter shows the report to readers.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient

from pruning_utils.config import SMOKE_ENV, get_device
from pruning_utils.measure import machine_record

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "results" / "execution.csv"
COLUMNS = ("chapter", "notebook", "mode", "seconds", "load_before", "load_after", "cpu",
           "threads", "torch", "device", "date", "note")
KEY = ("notebook", "mode", "device")  # one row per chapter, mode and device
NOTEBOOK_GLOB = "*.ipynb"  # as scripts/sync_install_cells.py: every notebook of the book


def load_average() -> float | None:
    """The 1-minute load average, or None where the system does not report one."""
    load = machine_record()["load_average"]
    return None if load is None else load[0]


def device_name() -> str:
    """``cpu``, or the CUDA device with its model, e.g. ``cuda (NVIDIA H100 80GB HBM3)``."""
    device = get_device()
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def execute(path: Path, *, store: bool, timeout: int = 6 * 3600) -> float:
    """Run ``path`` top to bottom in its folder; store the outputs if ``store``. Returns seconds."""
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    elapsed = time.perf_counter() - start
    if store:
        nbformat.write(notebook, path)
    return elapsed


def read_report(report: Path) -> list[dict[str, str]]:
    """The rows of an execution report (none when the file does not exist yet)."""
    if not report.is_file():
        return []
    with report.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in KEY if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{report}: not an execution report (no column {missing[0]!r}); "
                             f"expected the columns {', '.join(COLUMNS)}")
        return list(reader)


def update_report(report: Path, row: dict[str, object]) -> None:
    """Write ``row`` into ``report``, replacing the row with the same notebook, mode and device."""
    row = {c: "" if row.get(c) is None else str(row.get(c, "")) for c in COLUMNS}
    rows = [r for r in read_report(report) if tuple(r.get(c) for c in KEY) != tuple(
        row[c] for c in KEY)]
    rows.append(row)
    rows.sort(key=lambda r: (r["notebook"], r["mode"], r["device"]))
    report.parent.mkdir(parents=True, exist_ok=True)
    partial = report.with_name(report.name + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(report)


def run_chapter(path: Path, *, smoke: bool, report: Path) -> dict[str, object]:
    """Execute one chapter and record it in ``report``; return its row."""
    before = load_average()
    started = datetime.now(timezone.utc)
    seconds = execute(path, store=not smoke)
    name = path.name
    row = {
        "chapter": int(name[:2]) if name[:2].isdigit() else "",
        "notebook": name,
        "mode": "smoke" if smoke else "full",
        "seconds": round(seconds, 1),
        "load_before": before,
        "load_after": load_average(),
        "cpu": machine_record()["cpu_model"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device_name(),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "note": "",
    }
    update_report(report, row)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: notebooks/*.ipynb)")
    parser.add_argument("--smoke", action="store_true",
                        help="quick mode of the tests; the notebooks' stored outputs are kept")
    parser.add_argument("--report", type=Path, default=REPORT,
                        help=f"execution report to update (default: {REPORT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob(NOTEBOOK_GLOB))
    missing = [p for p in paths if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {missing[0]}")
    os.environ[SMOKE_ENV] = "1" if args.smoke else "0"  # read by the kernels, which inherit it
    for path in paths:
        row = run_chapter(path, smoke=args.smoke, report=args.report)
        print(f"{path.name}: executed in {row['mode']} mode in {row['seconds']:.0f} s "
              f"(load average {row['load_before']} before, {row['load_after']} after)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
