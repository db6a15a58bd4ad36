"""Where a sampled layer's time goes, before and after keeping the sampled operand contiguous.

Chapter 2 times the pieces of one ``RandomizedLinear`` on the LargeMLP's ``fc5``
(``W``: 2048×8192, ``c = n/16 = 512`` samples, one thread) and finds most of the time in
gathering the sampled rows of ``Wᵀ`` and in the per-batch probabilities. This script
measures, interleaved on the same machine:

* the gather of ``c`` sampled rows from ``W.T`` (a non-contiguous view, each row a strided
  copy: the former layout) against the same rows of a contiguous ``Wᵀ`` (the layout
  ``RandomizedLinear`` now keeps);
* the "batch" probabilities through the validated public function (finiteness check,
  float64 copy of the batch: the former forward) against the layer's own path;
* the whole forward as it was (rebuilt from the public functions) against
  ``RandomizedLinear.forward`` now, for both probability rules, and the dense layer.

Every statement is timed in each of ``--rounds`` rounds in a rotating order; the table
gives the median and interquartile range over rounds of the per-round medians (ms). The
inputs are ReLU activations of a standard normal batch (no trained model is needed).

Run ``python scripts/sampled_layer_breakdown.py`` (add ``--device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import os
import platform

import numpy as np
import pandas as pd
import torch
from torch import nn

import pruning_utils as pu
from pruning_utils.measure import benchmark  # torch.utils.benchmark, imported quietly


def old_forward(layer: pu.RandomizedLinear, W_view: torch.Tensor, x: torch.Tensor, gen):
    """The former ``RandomizedLinear.forward``: validated probabilities, strided gather."""
    n, c = layer.in_features, layer.samples
    norms = layer.weight_norms.unsqueeze(1)  # n × 1
    if layer.probabilities == "weights":
        p = pu.sampling_probabilities(
            torch.ones(1, n, dtype=norms.dtype, device=norms.device), norms
        )
    else:
        p = pu.sampling_probabilities(norms.T, x.T)
    idx = torch.multinomial(p, c, replacement=True, generator=gen)
    counts = torch.bincount(idx, minlength=n)
    kept = counts.nonzero().squeeze(1)
    scale = (counts[kept].double() / (c * p[kept].double())).to(x.dtype)
    return (x[:, kept] * scale) @ W_view[kept] + layer.bias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-features", type=int, default=2048)
    parser.add_argument("--in-features", type=int, default=8192)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.05, help="per statement and round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    m, n, c = args.out_features, args.in_features, args.samples
    torch.manual_seed(0)
    dense = nn.Linear(n, m).to(device).eval()
    layers = {
        rule: pu.RandomizedLinear.from_linear(dense, c, rule, generator=0).eval()
        for rule in ("batch", "weights")
    }
    W_view = dense.weight.detach().T  # n × m view of a row-major W: rows are strided
    W_t = layers["batch"].weight.detach().T  # n × m, contiguous
    assert not W_view.is_contiguous() and W_t.is_contiguous()

    load_before = os.getloadavg()
    rows = []
    for batch in args.batch:
        x = torch.randn(batch, n, device=device).relu()
        gen = torch.Generator(device=device).manual_seed(0)
        p = layers["batch"]._probabilities(x, dim=0)[0]
        kept = torch.multinomial(p, c, replacement=True, generator=gen).unique()
        # the pieces must compute the same thing before they are compared
        torch.testing.assert_close(W_view[kept], W_t[kept], rtol=0, atol=0)
        env = dict(
            x=x, kept=kept, W_view=W_view, W_t=W_t, dense=dense, layers=layers, gen=gen,
            old_forward=old_forward, pu=pu, norms=layers["batch"].weight_norms,
        )  # fmt: skip
        statements = {
            "gather c rows of Wᵀ, strided view (before)": "W_view[kept]",
            "gather c rows of Wᵀ, contiguous (after)": "W_t[kept]",
            "batch probabilities, validated float64 (before)":
                "pu.sampling_probabilities(norms[None, :], x.T)",
            "batch probabilities, layer path (after)": "layers['batch']._probabilities(x, 0)",
            "forward, batch p (before)": "old_forward(layers['batch'], W_view, x, gen)",
            "forward, batch p (after)": "layers['batch'](x)",
            "forward, weights p (before)": "old_forward(layers['weights'], W_view, x, gen)",
            "forward, weights p (after)": "layers['weights'](x)",
            "dense layer": "dense(x)",
        }  # fmt: skip
        timers = {
            name: benchmark.Timer(stmt, globals=env, num_threads=args.threads)
            for name, stmt in statements.items()
        }
        names = list(timers)
        per_round: dict[str, list[float]] = {name: [] for name in names}
        with torch.inference_mode():
            for timer in timers.values():
                timer.timeit(3)  # warm-up
            for r in range(args.rounds):
                shift = r % len(names)
                for name in names[shift:] + names[:shift]:
                    t = timers[name].blocked_autorange(min_run_time=args.seconds).median
                    per_round[name].append(1e3 * t)
        for name in names:
            q1, med, q3 = np.quantile(per_round[name], [0.25, 0.5, 0.75])
            rows.append({"piece": name, "batch": batch, "median_ms": med, "iqr_ms": q3 - q1})
    load_after = os.getloadavg()

    table = pd.DataFrame(rows).pivot_table(
        index="piece", columns="batch", values=["median_ms", "iqr_ms"], sort=False
    )
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"RandomizedLinear {n}->{m}, c = {c}, device {device} ({where or platform.machine()}), "
        f"{args.threads} thread(s), torch {torch.__version__}; {args.rounds} interleaved rounds"
    )
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(table.round(4).to_string())


if __name__ == "__main__":
    main()
