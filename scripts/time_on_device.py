"""Time the headline benchmark's choices on another device (a GPU, say).

Usage: python scripts/time_on_device.py --results results/headline.json --out OUT.json
       [--device cuda] [--seconds 0.5]

For every row of an earlier run of ``python -m pruning_utils.benchmark`` (its
``headline.json``) the dense network is trained on the device with the book's recipe
(:func:`pruning_utils.trained_model`), pruned with the row's method at the row's chosen
setting (the same calibration data as the benchmark), and timed against the dense network,
interleaved, at batch 1 and 256 (:func:`pruning_utils.compare_latency`, 5 rounds: median and
interquartile range). Fine-tuning is skipped: it changes weights, not shapes, so not the time.
The weights trained on another device differ in round-off, so a data-aware method can pick
slightly different widths; the parameter ratio of each row is recorded next to the one of the
original run. The single 2048×8192 layer at rank 128 is timed the same way. The output names
the device, its driver and torch's version.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
from torch import nn

import pruning_utils as pu
from pruning_utils.headline import load_benchmark_data, setting_of, timing_inputs


def _speedups(dense: nn.Module, pruned: nn.Module, inputs: dict, seconds: float) -> dict:
    out = {}
    for batch, x in inputs.items():
        table = pu.compare_latency({"dense": dense, "pruned": pruned}, x, rounds=5,
                                   min_run_time=seconds)
        out[f"speedup_b{batch}"] = float(table.loc["pruned", "speedup"])
        out[f"speedup_iqr_b{batch}"] = float(table.loc["pruned", "speedup_iqr"])
        out[f"dense_ms_b{batch}"] = 1e3 * float(table.loc["dense", "median_s"])
        out[f"pruned_ms_b{batch}"] = 1e3 * float(table.loc["pruned", "median_s"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results/headline.json"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=0.5, help="min run time per round")
    args = parser.parse_args()
    device = torch.device(args.device)
    meta = json.loads(args.results.read_text())
    data = load_benchmark_data()
    inputs = {b: x.to(device) for b, x in timing_inputs(data.test.tensors[0]).items()}
    calibration = data.calibration.to(device)
    start = time.perf_counter()
    dense_models: dict[str, nn.Module] = {}
    rows, missing = [], []
    for row in meta["rows"]:
        name = row["model"]
        if row.get("method_key") is None and "from scratch" in str(row["method"]):
            missing.append(f"{name}, {row['method']} (trained from scratch, not pruned)")
            continue
        if name not in dense_models:
            t = time.perf_counter()
            dense_models[name] = pu.trained_model(name, progress=False, device=device).eval()
            print(f"{name}: trained on {device} in {time.perf_counter() - t:.0f} s", flush=True)
        dense = dense_models[name]
        method = pu.get_method(row.get("method_key") or row["method"])
        pruned = method.prune(dense, setting_of(row, method),
                              data=calibration if method.needs_data else None).eval()
        params = pu.count_params(pruned, nonzero=method.sparse)
        result = {
            "model": name, "method": row["method"], "setting": row["setting"],
            "param_ratio": pu.count_params(dense, nonzero=method.sparse) / params,
            "param_ratio_original_run": row["param_ratio"],
            "speedup_b1_cpu": row["speedup_b1"], "speedup_b256_cpu": row["speedup_b256"],
            **_speedups(dense, pruned, inputs, args.seconds),
        }
        rows.append(result)
        print(f"  {row['method']}: b1 {result['speedup_b1']:.2f}x, "
              f"b256 {result['speedup_b256']:.2f}x", flush=True)
    gen = torch.Generator().manual_seed(0)
    layer = nn.Linear(8192, 2048)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(2048, 8192, generator=gen) / math.sqrt(8192))
    layer = layer.to(device)
    factorized = pu.LowRankLinear.from_linear(layer, rank=128)
    x = torch.randn(256, 8192, generator=gen).to(device)
    single = _speedups(layer, factorized, {256: x}, args.seconds)
    out = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        platform.processor(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "source": str(args.results),
        "protocol": "book recipe trained on the device; the original run's chosen settings; "
                    "no fine-tuning (same shapes); interleaved timing, 5 rounds, median",
        "seconds": time.perf_counter() - start,
        "rows": rows,
        "missing_rows": missing,
        "layer": {"layer": "2048x8192 Linear (random weights)", "rank": 128, "batch": 256,
                  "flop_ratio": 2048 * 8192 / (128 * (2048 + 8192)), **single},
    }
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out} ({out['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
