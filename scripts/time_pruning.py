"""How long pruning itself takes: one setting against a sweep of eight (decompose once).

Usage: python scripts/time_pruning.py [--out results/pruning_times.json] [--threads 2]

On the trained LargeMLP (:func:`pruning_utils.trained_model`), and the benchmark's calibration
inputs, it times

* plain low rank at rank 128, end to end (decomposition and surgery);
* for each method of the registry with a decompose-once ``fit`` that applies to the network:
  one setting pruned from scratch, and eight settings pruned through one fit (the first
  setting pays for the decompositions, the others truncate them);
* for the width-pruning methods, which decompose layer by layer on the outputs of the layers
  already pruned (so each setting needs its own decompositions): one setting and eight.

Evaluation and timing of the pruned models are excluded. The load average before and after
is recorded, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import pruning_utils as pu
from pruning_utils.config import SMOKE_ENV
from pruning_utils.headline import load_benchmark_data

GRIDS = {
    "low_rank_energy": (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
    "low_rank_data": (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
    "pca_activations": (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999),
    "pca_interpolative": (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999),
}


def _seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/pruning_times.json"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke-weights", action="store_true",
                        help="use the LargeMLP trained by the smoke recipe (same architecture; "
                             "the cost of pruning depends on the shapes, not on the training)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    if args.smoke_weights:
        os.environ[SMOKE_ENV] = "1"
    model = pu.trained_model("large-mlp", progress=False, device="cpu")
    os.environ[SMOKE_ENV] = "0"
    calibration = load_benchmark_data().calibration  # the full-mode calibration set
    rows = [{"what": "low rank, rank 128, one setting",
             "seconds": _seconds(lambda: pu.low_rank(model, rank=128))}]
    for name, grid in GRIDS.items():
        method = pu.get_method(name)
        data = calibration if method.needs_data else None
        single = _seconds(lambda m=method, d=data, g=grid: m.prune(model, g[len(g) // 2], data=d))

        def sweep(m=method, d=data, g=grid):
            prune = m.fitted(model, data=d)
            for value in g:
                prune(value)

        eight = _seconds(sweep)
        rows.append({"what": f"{name}: one setting ({grid[len(grid) // 2]})", "seconds": single})
        rows.append({"what": f"{name}: eight settings{' (one fit)' if method.fit else ''}",
                     "seconds": eight, "ratio_to_one": eight / single})
        print(f"{name}: one setting {single:.1f} s, eight {eight:.1f} s ({eight / single:.2f}x)",
              flush=True)
    out = {"model": "large-mlp", "weights": "smoke recipe" if args.smoke_weights else "book recipe",
           "calibration_inputs": len(calibration), "threads": args.threads,
           "torch": torch.__version__,
           "machine": platform.processor() or platform.machine(),
           "load_average": {"before": load_before, "after": os.getloadavg()}, "rows": rows}
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
