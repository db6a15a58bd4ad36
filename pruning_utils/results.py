"""The book's result files read back: the headline table, what each method buys, the verdicts.

``python -m pruning_utils.benchmark --out results`` writes ``results/headline.json``
(:mod:`pruning_utils.headline`) and ``scripts/execute_notebooks.py`` writes
``results/execution.csv``. This module turns those files into what the book shows, so that
every page that quotes them reads one implementation:

* :func:`find_results` and :func:`load_results` locate a results file in the repository (or,
  outside it, fetch it from a raw-file address) and read it;
* :func:`headline_rows` is the benchmark's rows as a DataFrame with the kind of network and
  the control marked; :func:`headline_table` formats them (accuracy and drop with their 95 %
  intervals, speedups with their quartiles), :func:`headline_markdown` as Markdown;
* :func:`method_summary` says for every network and method whether it *pays*: within the
  tolerance on the test set and faster than dense in every timing run;
* :func:`control_comparison` puts each train-small control next to the pruned network whose
  widths it took;
* :func:`findings` gives a verdict on each of the four findings of the original work, chosen
  by stated rules from the rows of the file (never typed by hand).

Nothing here computes a new measurement: every number comes from the file it reads.
"""

from __future__ import annotations

import io
import json
import math
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pruning_utils.headline import NETWORKS
from pruning_utils.methods import METHODS, get_method

__all__ = [
    "Finding",
    "find_results",
    "load_results",
    "headline_rows",
    "headline_table",
    "headline_markdown",
    "gpu_markdown",
    "method_summary",
    "fastest_within",
    "control_comparison",
    "findings",
    "execution_summary",
    "accuracy_text",
    "drop_text",
    "speedup_text",
    "setting_text",
]

#: The batch sizes the headline benchmark times.
BATCHES = (1, 256)


# ----------------------------------------------------------------------------- files


def find_results(name: str = "headline.json", *, start: str | Path | None = None) -> Path | None:
    """``results/<name>`` of the repository around ``start`` (default: the working directory).

    The repository root is the first folder, from ``start`` upwards, that holds ``_toc.yml``
    (the book's table of contents); a notebook runs in ``notebooks/``, one level below it.
    Returns ``None`` when there is no such folder or no such file (a notebook opened on its
    own, in Colab for example).
    """
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        raise ValueError(
            f"name must be a file name in results/, e.g. 'headline.json'; got {name!r}")
    here = Path.cwd() if start is None else Path(start)
    here = here.resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file():
            path = folder / "results" / name
            return path if path.is_file() else None
    return None


def _parse(name: str, text: str) -> dict | pd.DataFrame:
    if name.endswith(".json"):
        return json.loads(text)
    if name.endswith(".csv"):
        return pd.read_csv(io.StringIO(text), keep_default_na=False)
    raise ValueError(f"name must end in .json or .csv, got {name!r}")


def load_results(
    name: str = "headline.json",
    *,
    start: str | Path | None = None,
    raw_base: str | None = None,
    timeout: float = 30.0,
) -> dict | pd.DataFrame:
    """Read ``results/<name>``: a ``.json`` file as a dict, a ``.csv`` file as a DataFrame.

    The file is looked for in the repository around ``start`` (:func:`find_results`); when it
    is not there and ``raw_base`` is given (the raw-file address of the repository's
    ``results/`` folder, e.g. ``https://raw.githubusercontent.com/OWNER/NAME/main/results/``),
    it is downloaded from there.

    Raises
    ------
    FileNotFoundError
        When the file is not in the repository and no ``raw_base`` is given.
    """
    if not name.endswith((".json", ".csv")):
        raise ValueError(f"name must end in .json or .csv, got {name!r}")
    path = find_results(name, start=start)
    if path is not None:
        return _parse(name, path.read_text(encoding="utf-8"))
    if raw_base is None:
        raise FileNotFoundError(
            f"results/{name} not found in a repository around {Path(start or '.').resolve()} "
            "(a folder with _toc.yml); run from the book's repository, or pass raw_base= the "
            "address of its results/ folder"
        )
    url = raw_base.rstrip("/") + "/" + name
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return _parse(name, response.read().decode("utf-8"))


# ----------------------------------------------------------------------------- rows and text


def _check_run(run: object) -> Mapping:
    if not isinstance(run, Mapping) or not isinstance(run.get("rows"), list):
        raise TypeError("run must be the dict read from headline.json (with a 'rows' list)")
    if "protocol" not in run:
        raise ValueError(
            "this headline.json predates the validation protocol (no 'protocol'); run "
            "python -m pruning_utils.benchmark --out results again"
        )
    return run


def _is_control(row: Mapping) -> bool:
    key = row.get("method_key")
    return key is None or (isinstance(key, float) and math.isnan(key))


def headline_rows(run: Mapping) -> pd.DataFrame:
    """The rows of ``headline.json`` as a DataFrame, in the file's order.

    Adds ``network`` (``"mlp"``, ``"cnn"``, or the model name for a network the benchmark
    does not classify) and ``control`` (True for the train-small control, which has no
    method key).
    """
    run = _check_run(run)
    frame = pd.DataFrame(run["rows"])
    frame["network"] = [NETWORKS.get(m, m) for m in frame["model"]]
    frame["control"] = [_is_control(r) for r in run["rows"]]
    return frame


def _pair(values: Sequence[float], scale: float = 1.0) -> str:
    return f"[{scale * values[0]:.2f}, {scale * values[1]:.2f}]"


def accuracy_text(row: Mapping) -> str:
    """Mean test accuracy and its 95 % interval, in percent: ``86.41 [85.77, 87.06]``."""
    return f"{100 * row['test_accuracy']:.2f} {_pair(row['test_accuracy_ci95'], 100)}"


def drop_text(row: Mapping) -> str:
    """Drop against the reference with its paired 95 % interval, in points."""
    return f"{row['test_drop_points']:.2f} {_pair(row['test_drop_ci95'])}"


def speedup_text(row: Mapping, batch: int) -> str:
    """The speedup at ``batch`` with its quartiles: ``72.76× [72.11, 74.98]``."""
    return f"{row[f'speedup_b{batch}']:.2f}× {_pair(row[f'speedup_b{batch}_iqr'])}"


def setting_text(row: Mapping) -> str:
    """``variance 0.995``, or the control's widths (``widths 21-58-119-35``)."""
    if _is_control(row) or row.get("setting") is None:
        return "widths " + "-".join(str(w) for w in row["widths"][:-1])
    return f"{row['parameter']} {row['setting']:g}"


def headline_table(run: Mapping) -> pd.DataFrame:
    """The headline table as text columns, one row per benchmark row, in the file's order.

    Columns: model, method, setting, fine-tuned, test accuracy (%) with its 95 % interval,
    drop against the reference (points) with its paired interval, within (test), within
    (validation), params ÷, FLOPs ÷, and the speedups at batch 1 and 256 with their
    quartiles.
    """
    rows = _check_run(run)["rows"]
    return pd.DataFrame(
        {
            "model": [r["model"] for r in rows],
            "method": [r["method"] for r in rows],
            "setting": [setting_text(r) for r in rows],
            "fine-tuned": ["1 epoch" if r["fine_tuned"] else "no" for r in rows],
            "test accuracy (%) [95 %]": [accuracy_text(r) for r in rows],
            "drop (points) [95 %]": [drop_text(r) for r in rows],
            "within (test)": ["yes" if r["within_tolerance"] else "NO" for r in rows],
            "within (val.)": ["-" if r.get("validation_within") is None
                              else "yes" if r["validation_within"] else "no" for r in rows],
            "params ÷": [f"{r['param_ratio']:.1f}" for r in rows],
            "FLOPs ÷": [f"{r['flop_ratio']:.1f}" for r in rows],
            **{f"speedup b{b} [q1, q3]": [speedup_text(r, b) for r in rows] for b in BATCHES},
        }
    )


def headline_markdown(meta: Mapping) -> str:
    """The rows of ``headline.json`` as a Markdown table, then the single-layer result."""
    protocol = meta.get("protocol")
    if protocol is None:
        return _markdown_before_validation(meta)
    lines = [
        "| model | method | setting | fine-tuned | test accuracy (%) | drop vs reference (points) "
        "| params ÷ | FLOPs ÷ | speedup b1 [q1, q3] | speedup b256 [q1, q3] | retimed ÷ |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in meta["rows"]:
        setting = setting_text(row)
        if not row["within_tolerance"]:
            setting += " (not within 1 pt on test)"
        retimed = row.get("retime_ratio_b256")
        lines.append(
            f"| {row['model']} | {row['method']} | {setting} "
            f"| {'yes' if row['fine_tuned'] else 'no'} "
            f"| {accuracy_text(row)} | {drop_text(row)} "
            f"| {row['param_ratio']:.1f} | {row['flop_ratio']:.1f} "
            f"| {speedup_text(row, 1)} | {speedup_text(row, 256)} "
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
    added_runs = meta.get("added_runs", [])
    for i, added in enumerate(added_runs):
        if any(set(added["models"]) <= set(later["models"]) for later in added_runs[i + 1:]):
            continue  # its rows were replaced by a later --add of the same networks
        m = added.get("machine", {})
        load = m.get("load_before")
        superseded = meta.get("superseded_timings", [])
        if "retimes_before" in added:  # the --retime runs after this one timed its rows again
            retimed = len(superseded) - added["retimes_before"]
        else:  # older files: a --retime after the --add kept these rows' timings as superseded
            retimed = sum(1 for s in superseded
                          if any(r.get("model") in added["models"] for r in s.get("rows", [])))
        control = any(r.get("model") in added["models"]
                      and str(r.get("method", "")).startswith("from scratch")
                      for r in meta.get("rows", []))
        lines[-1] += (
            f" Rows of {', '.join(added['models'])} added later with `--add` "
            f"({added['seconds'] / 60:.0f} minutes"
            f"{'' if control else ', without the train-small control'}"
            f"{'' if load is None else f', load average {load[0]:.2f} before'}), "
            + ("timed in that run only." if not retimed else
               "then timed again with every row by the last `--retime` run." if retimed == 1
               else f"then timed again with every row by the last {retimed} `--retime` runs.")
        )
    return "\n".join(lines)


def _markdown_before_validation(meta: Mapping) -> str:
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


def gpu_markdown(meta: Mapping) -> str:
    """The GPU speedups of ``scripts/time_on_device.py`` next to the CPU ones, as Markdown."""
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


# ----------------------------------------------------------------------------- what pays


def _faster(row: Mapping, batch: int) -> bool:
    """Faster than dense at ``batch`` beyond the noise of the timings.

    The lower quartile of the speedup is above 1 and, where the row was timed again
    (``retime_ratio_b256``, batch 256 only), the previous run's speedup is above 1 too.
    """
    if row[f"speedup_b{batch}_iqr"][0] <= 1:
        return False
    ratio = row.get("retime_ratio_b256") if batch == 256 else None
    if ratio is not None and not (isinstance(ratio, float) and math.isnan(ratio)):
        return row["speedup_b256"] / ratio > 1
    return True


def _needs_data(key: object) -> str:
    if key is None or (isinstance(key, float) and math.isnan(key)):
        return "labels (trained)"
    if key in METHODS:
        return "yes" if get_method(key).needs_data else "no"
    return "?"


def method_summary(run: Mapping) -> pd.DataFrame:
    """For every network and method of the benchmark: does it pay, and what does it need?

    One row per benchmark row except the control, sorted by network and by the batch-256
    speedup (fastest first). ``within`` is the benchmark's verdict on the test set (mean drop
    at most the tolerance); ``faster b1`` / ``faster b256`` hold when the lower quartile of
    the speedup is above 1 and, at batch 256, the previous timing run's speedup was above 1
    too; ``pays`` is ``within`` and ``faster b256``. ``needs data`` says whether the method
    needs calibration inputs (from :data:`~pruning_utils.methods.METHODS`).
    """
    rows = [r for r in _check_run(run)["rows"] if not _is_control(r)]
    out = []
    for r in rows:
        faster = {b: _faster(r, b) for b in BATCHES}
        out.append({
            "model": r["model"],
            "method": r["method"],
            "method_key": r["method_key"],
            "setting": setting_text(r),
            "fine-tuned": "1 epoch" if r["fine_tuned"] else "no",
            "needs data": _needs_data(r["method_key"]),
            "drop (points) [95 %]": drop_text(r),
            "within": bool(r["within_tolerance"]),
            "params ÷": round(r["param_ratio"], 1),
            "speedup b1 [q1, q3]": speedup_text(r, 1),
            "speedup b256 [q1, q3]": speedup_text(r, 256),
            "faster b1": faster[1],
            "faster b256": faster[256],
            "pays": bool(r["within_tolerance"]) and faster[256],
            "_speed": r["speedup_b256"],
        })
    columns = ["model", "method", "method_key", "setting", "fine-tuned", "needs data",
               "drop (points) [95 %]", "within", "params ÷", "speedup b1 [q1, q3]",
               "speedup b256 [q1, q3]", "faster b1", "faster b256", "pays"]
    if not out:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(out)
    order = {m: i for i, m in enumerate(dict.fromkeys(frame["model"]))}
    frame = frame.assign(_model=frame["model"].map(order))
    frame = frame.sort_values(["_model", "_speed"], ascending=[True, False], kind="stable")
    return frame[columns].reset_index(drop=True)


def fastest_within(run: Mapping, model: str) -> dict | None:
    """The row of ``model`` (not the control) within the tolerance on test with the largest
    batch-256 speedup, or None when no row is within."""
    rows = [r for r in _check_run(run)["rows"]
            if r["model"] == model and not _is_control(r) and r["within_tolerance"]]
    return max(rows, key=lambda r: r["speedup_b256"]) if rows else None


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def control_comparison(run: Mapping) -> pd.DataFrame:
    """Each train-small control next to the pruned row whose widths it took.

    The control's method is ``"from scratch (widths of <label>)"``; its partner is the row of
    the same network with that label and the same widths. ``verdict`` is ``"pruning"`` or
    ``"training small"`` when the two 95 % accuracy intervals do not overlap (the higher one
    wins), else ``"no clear difference"``.
    """
    rows = _check_run(run)["rows"]
    out = []
    for control in (r for r in rows if _is_control(r)):
        label = control["method"].removeprefix("from scratch (widths of ").removesuffix(")")
        partners = [r for r in rows if r["model"] == control["model"] and not _is_control(r)
                     and r["method"] == label and list(r["widths"]) == list(control["widths"])]
        partners = partners or [r for r in rows if r["model"] == control["model"]
                                and not _is_control(r) and r["method"] == label]
        if not partners:
            continue
        pruned = partners[0]
        if _overlap(pruned["test_accuracy_ci95"], control["test_accuracy_ci95"]):
            verdict = "no clear difference"
        elif pruned["test_accuracy"] > control["test_accuracy"]:
            verdict = "pruning"
        else:
            verdict = "training small"
        out.append({
            "model": control["model"],
            "pruned": f"{pruned['method']} ({setting_text(pruned)}"
                      f"{', fine-tuned' if pruned['fine_tuned'] else ''})",
            "pruned accuracy (%) [95 %]": accuracy_text(pruned),
            "from scratch (%) [95 %]": accuracy_text(control),
            "params ÷": round(control["param_ratio"], 1),
            "pruned speedup b256": speedup_text(pruned, 256),
            "from scratch speedup b256": speedup_text(control, 256),
            "verdict": verdict,
        })
    return pd.DataFrame(out, columns=[
        "model", "pruned", "pruned accuracy (%) [95 %]", "from scratch (%) [95 %]", "params ÷",
        "pruned speedup b256", "from scratch speedup b256", "verdict"])


# ----------------------------------------------------------------------------- the findings


@dataclass(frozen=True)
class Finding:
    """One finding of the original work and the verdict the results give on it.

    Attributes
    ----------
    number:
        1 to 4, in the order the original work stated them.
    claim:
        The finding, in short.
    verdict:
        The verdict, chosen by a stated rule from the rows (see :func:`findings`).
    evidence:
        The rows behind the verdict, with their numbers.
    """

    number: int
    claim: str
    verdict: str
    evidence: str


def _rows_of(run: Mapping, network: str, prefix: str | tuple[str, ...]) -> list[dict]:
    return [r for r in run["rows"] if NETWORKS.get(r["model"]) == network
            and not _is_control(r) and str(r["method_key"]).startswith(prefix)]


def _short(row: Mapping) -> str:
    return (f"{row['method']} on {row['model']} ({setting_text(row)}"
            f"{', fine-tuned' if row['fine_tuned'] else ''})")


def _speeds(row: Mapping) -> str:
    return (f"{row['speedup_b256']:.2f}× at batch 256 and {row['speedup_b1']:.2f}× at batch 1")


def _accuracy_against_reference(row: Mapping) -> str:
    return (f"{accuracy_text(row)} % on test against {100 * row['dense_accuracy']:.2f} % for "
            f"the reference ({row['reference']}), a drop of {drop_text(row)} points")


def _finding_randomized(run: Mapping, tol: float) -> Finding:
    claim = ("Randomized multiplication does not improve fully connected networks: sampling "
             "makes inference much slower.")
    rows = _rows_of(run, "mlp", "randomized")
    if not rows:
        return Finding(1, claim, "Not tested in these results", "no randomized row")
    within = any(r["within_tolerance"] for r in rows)
    slower = all(r[f"speedup_b{b}"] < 1 for r in rows for b in BATCHES)
    verdict = "Reproduced" if slower and not within else "Only partly reproduced"
    evidence = "; ".join(f"{_short(r)}: {_accuracy_against_reference(r)}, at {_speeds(r)}"
                         for r in rows)
    return Finding(1, claim, verdict, evidence)


def _finding_pca(run: Mapping, tol: float) -> Finding:
    claim = ("PCA pruning is quite effective: over 20× faster on the large fully connected "
             "network, at little cost in accuracy.")
    original = _rows_of(run, "mlp", "pca_weights")
    aware = [r for r in _rows_of(run, "mlp", "pca_") if r["method_key"] != "pca_weights"]
    good = [r for r in aware if r["within_tolerance"] and _faster(r, 256)]
    best = max(good, key=lambda r: r["speedup_b256"]) if good else None
    original_ok = any(r["within_tolerance"] and r["speedup_b256"] > 20 for r in original)
    if not original and not aware:
        return Finding(2, claim, "Not tested in these results", "no PCA row")
    if original_ok:
        verdict = "Reproduced, with the original algorithm"
    elif best is not None and best["speedup_b256"] > 20:
        verdict = ("Reproduced with a PCA of the activations; the original algorithm (PCA of "
                   "the weights) fails on a network with activation functions")
    elif best is not None:
        verdict = f"Only partly: within {100 * tol:g} point at {best['speedup_b256']:.2f}×"
    else:
        verdict = "Not reproduced"
    parts = [f"{_short(r)}: {_accuracy_against_reference(r)}" for r in original]
    if best is not None:
        parts.append(f"{_short(best)}: {_accuracy_against_reference(best)}, "
                     f"{best['param_ratio']:.0f}× fewer parameters, {_speeds(best)}")
    return Finding(2, claim, verdict, "; ".join(parts))


def _finding_low_rank(run: Mapping, tol: float) -> Finding:
    claim = "Low-rank pruning is quite effective on the large fully connected network."
    rows = _rows_of(run, "mlp", "low_rank")
    if not rows:
        return Finding(3, claim, "Not tested in these results", "no low-rank row")
    pays = [r for r in rows if r["within_tolerance"] and _faster(r, 256)]
    edge = [r for r in rows if r.get("validation_within") and not r["within_tolerance"]
            and _faster(r, 256)]
    if pays:
        best = max(pays, key=lambda r: r["speedup_b256"])
        verdict = "Reproduced in the benchmark"
        evidence = f"{_short(best)}: {_accuracy_against_reference(best)}, {_speeds(best)}"
    elif edge:
        verdict = (f"Not confirmed by the benchmark: faster, but more than {100 * tol:g} point "
                   "below its reference on the test set")
        evidence = "; ".join(f"{_short(r)}, chosen within on validation: "
                             f"{_accuracy_against_reference(r)}, {_speeds(r)}" for r in edge)
    else:
        verdict = "Not reproduced in the benchmark"
        evidence = "; ".join(f"{_short(r)}: {_accuracy_against_reference(r)}, {_speeds(r)}"
                             for r in rows)
    others = [r for r in rows if r not in pays and r not in edge and not r["within_tolerance"]]
    if pays or edge:
        evidence += "".join(f"; {_short(r)}: {_accuracy_against_reference(r)}" for r in others)
    return Finding(3, claim, verdict, evidence)


def _finding_cnn(run: Mapping, tol: float) -> Finding:
    claim = "These methods are not useful for CNNs: the low-rank CNNs were slower than dense."
    rows = [r for r in run["rows"] if NETWORKS.get(r["model"]) == "cnn" and not _is_control(r)]
    if not rows:
        return Finding(4, claim, "Not tested in these results", "no CNN row")
    low = [r for r in rows if str(r["method_key"]).startswith("low_rank")]
    matrix = [r for r in rows if r["method_key"] in METHODS and
              r["method_key"] not in ("magnitude", "l1_structured")]
    low_pays = [r for r in low if r["within_tolerance"] and _faster(r, 256)]
    matrix_pays = [r for r in matrix if r["within_tolerance"] and _faster(r, 256)]
    if low_pays:
        verdict = "Wrong: low rank makes the CNN faster within the tolerance"
    elif matrix_pays:
        verdict = "Half right: low rank does not pay on the CNN, but channel pruning does"
    else:
        verdict = "Right, on this evidence"
    parts = [f"{_short(r)}: {_speeds(r)}, drop {drop_text(r)} points" for r in low]
    best = max(matrix_pays, key=lambda r: r["speedup_b256"]) if matrix_pays else None
    if best is not None and best not in low:
        parts.append(f"{_short(best)}: {_accuracy_against_reference(best)}, {_speeds(best)}")
    controls = control_comparison(run)
    for _, c in controls[controls["model"].map(NETWORKS.get) == "cnn"].iterrows():
        winner = c["verdict"] if c["verdict"] == "no clear difference" else f"{c['verdict']} wins"
        parts.append(f"the same widths trained from scratch: {c['from scratch (%) [95 %]']} % "
                     f"against {c['pruned accuracy (%) [95 %]']} % pruned ({winner})")
    return Finding(4, claim, verdict, "; ".join(parts))


def findings(run: Mapping) -> list[Finding]:
    """The verdicts of the headline benchmark on the four findings of the original work.

    Each verdict follows a rule applied to the rows of ``run`` (a row *pays* when it is
    within the tolerance on the test set and faster than dense at batch 256 in every timing
    run, see :func:`method_summary`):

    1. randomized multiplication on the fully connected network: *reproduced* when no
       randomized row is within the tolerance and every one is slower than dense at both
       batch sizes;
    2. PCA, over 20× on the large fully connected network: *reproduced* when a PCA row is
       within the tolerance at a batch-256 speedup above 20 (saying whether the original
       algorithm, PCA of the weights, or a PCA of the activations did it);
    3. low rank on the large fully connected network: *reproduced* when a low-rank row pays;
       *not confirmed* when one was chosen within on validation and is faster but not within
       on test;
    4. not useful for CNNs: *wrong* when a low-rank CNN row pays, *half right* when only
       another matrix method (channel pruning) pays, *right* when none does.
    """
    run = _check_run(run)
    tol = float(run.get("tolerance", run["protocol"].get("tolerance", 0.01)))
    return [rule(run, tol) for rule in
            (_finding_randomized, _finding_pca, _finding_low_rank, _finding_cnn)]


def execution_summary(execution: pd.DataFrame) -> pd.DataFrame:
    """Minutes per notebook and mode from ``results/execution.csv`` (one row per notebook)."""
    missing = [c for c in ("notebook", "mode", "device", "seconds") if c not in execution.columns]
    if missing:
        raise ValueError(
            f"execution must have the columns of results/execution.csv; missing {missing}")
    frame = execution.copy()
    frame["seconds"] = frame["seconds"].astype(float)
    frame["minutes"] = (frame["seconds"] / 60).round(1)
    return frame[["notebook", "mode", "device", "seconds", "minutes"]].reset_index(drop=True)

