"""The result files read back (pruning_utils.results): tables, what pays, the verdicts."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest

from pruning_utils import results

ROOT = Path(__file__).resolve().parents[1]


def _row(model, key, label, *, within=True, val=True, b1=2.0, b256=3.0, acc=0.88, drop=0.5,
         fine_tuned=False, retime=1.0, widths=(10, 10), setting=0.9, parameter="energy"):
    return {
        "model": model, "method": label, "method_key": key, "parameter": parameter,
        "setting": setting, "fine_tuned": fine_tuned, "validation_within": val,
        "within_tolerance": within, "reference": "dense + 1 epoch" if fine_tuned else "dense",
        "dense_accuracy": acc + drop / 100, "pruned_accuracy": acc, "test_accuracy": acc,
        "test_accuracy_ci95": [acc - 0.006, acc + 0.006], "test_drop_points": drop,
        "test_drop_ci95": [drop - 0.3, drop + 0.3], "seeds": [0, 1, 2], "param_ratio": 4.0,
        "flop_ratio": 4.0, "widths": list(widths), "speedup_b1": b1,
        "speedup_b1_iqr": [0.98 * b1, 1.02 * b1], "speedup_b256": b256,
        "speedup_b256_iqr": [0.98 * b256, 1.02 * b256], "retime_ratio_b256": retime,
    }


def _run(rows):
    return {"mode": "full", "tolerance": 0.01, "protocol": {"tolerance": 0.01}, "rows": rows}


MLP_ROWS = [
    _row("large-mlp", "randomized", "randomized matmul", within=False, b1=0.1, b256=0.8,
         acc=0.4, drop=45, parameter="samples"),
    _row("large-mlp", "pca_weights", "PCA weights (Alg. 2)", within=False, val=False, acc=0.08,
         drop=79, b256=4.8, parameter="variance"),
    _row("large-mlp", "pca_interpolative", "PCA interpolative", b1=32.0, b256=72.0,
         parameter="variance", widths=(5, 10)),
    _row("large-mlp", "low_rank_energy", "low rank", within=False, val=True, drop=1.4,
         fine_tuned=True, b256=1.8),
]
CNN_ROWS = [
    _row("small-cnn", "low_rank_energy", "low rank", b1=0.89, b256=0.96),
    _row("small-cnn", "pca_interpolative", "PCA interpolative", b256=1.75, acc=0.90,
         parameter="variance", widths=(3, 10)),
    {**_row("small-cnn", None, "from scratch (widths of PCA interpolative)", acc=0.92,
            b256=1.75, widths=(3, 10)), "setting": None, "parameter": None,
     "validation_within": None},
]


def test_the_real_file_reads_and_every_model_of_it_is_in_the_tables():
    run = results.load_results("headline.json", start=ROOT / "notebooks")
    table = results.headline_table(run)
    assert len(table) == len(run["rows"])
    assert set(table["model"]) == {r["model"] for r in run["rows"]}
    summary = results.method_summary(run)
    controls = [r for r in run["rows"] if r["method"].startswith("from scratch")]
    assert len(summary) == len(run["rows"]) - len(controls)
    assert len(results.control_comparison(run)) == len(controls)
    assert [f.number for f in results.findings(run)] == [1, 2, 3, 4]


def test_find_results_walks_up_to_the_book_root_and_says_none_elsewhere(tmp_path):
    (tmp_path / "_toc.yml").write_text("format: jb-book\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "headline.json").write_text(json.dumps(_run(CNN_ROWS)))
    (tmp_path / "results" / "execution.csv").write_text(
        "notebook,mode,device,seconds,note\n00_setup.ipynb,full,cpu,8.0,\n")
    (tmp_path / "notebooks").mkdir()
    assert results.find_results("headline.json", start=tmp_path / "notebooks") == (
        tmp_path / "results" / "headline.json").resolve()
    assert results.load_results("headline.json", start=tmp_path / "notebooks")["rows"]
    frame = results.load_results("execution.csv", start=tmp_path)
    assert isinstance(frame, pd.DataFrame) and frame.loc[0, "note"] == ""
    summary = results.execution_summary(frame)
    assert summary.loc[0, "minutes"] == pytest.approx(8.0 / 60, abs=0.05)
    assert results.find_results("absent.json", start=tmp_path) is None
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "_toc.yml").unlink()
    assert results.find_results("headline.json", start=outside) is None
    with pytest.raises(FileNotFoundError, match="raw_base"):
        results.load_results("headline.json", start=outside)


@pytest.mark.parametrize("name", ["", "../headline.json", "a/b.json", 3])
def test_bad_file_names_are_named(name):
    with pytest.raises(ValueError, match="name must"):
        results.find_results(name)


def test_other_kinds_of_file_and_old_files_are_refused():
    with pytest.raises(ValueError, match=r"\.json or \.csv"):
        results.load_results("headline.txt")
    with pytest.raises(TypeError, match="rows"):
        results.headline_table({"rows": "no"})
    with pytest.raises(ValueError, match="predates the validation protocol"):
        results.findings({"rows": []})
    with pytest.raises(ValueError, match="missing"):
        results.execution_summary(pd.DataFrame({"notebook": ["a"]}))


def test_tables_format_intervals_and_quartiles_from_the_rows():
    run = _run(MLP_ROWS + CNN_ROWS)
    table = results.headline_table(run)
    first = table.iloc[0]
    assert first["test accuracy (%) [95 %]"] == "40.00 [39.40, 40.60]"
    assert first["speedup b256 [q1, q3]"] == "0.80× [0.78, 0.82]"
    assert first["within (test)"] == "NO"
    assert table.iloc[-1]["setting"] == "widths 3" and table.iloc[-1]["within (val.)"] == "-"
    markdown = results.headline_markdown({**run, "protocol": {
        "validation_images": 5000, "test_images": 10000, "seeds": [0, 1, 2]},
        "layer": {"layer": "L", "rank": 1, "batch": 2, "speedup": 3.0, "flop_ratio": 4.0},
        "machine": {"cpu_model": "cpu", "threads": 2, "blas": {}, "torch": "t",
                    "load_before": [1.0], "load_after": [2.0]}, "seconds": 60})
    assert markdown.startswith("| model |") and markdown.count("\n| ") == len(run["rows"])
    assert "(not within 1 pt on test)" in markdown
    assert "added later" not in markdown
    added = results.headline_markdown({**run, "protocol": {
        "validation_images": 5000, "test_images": 10000, "seeds": [0, 1, 2]},
        "layer": {"layer": "L", "rank": 1, "batch": 2, "speedup": 3.0, "flop_ratio": 4.0},
        "machine": {"cpu_model": "cpu", "threads": 2, "blas": {}, "torch": "t",
                    "load_before": [1.0], "load_after": [2.0]}, "seconds": 60,
        "added_runs": [{"models": ["vit"], "seconds": 120, "control": False,
                        "machine": {"load_before": [1.5]}}]})
    assert ("Rows of vit added later with `--add` (2 minutes, without the train-small control, "
            "load average 1.50 before), timed in that run only.") in added
    # a --retime after the add times the added rows again; a control row says it was run
    vit_row = {"model": "vit", "method": "low rank"}
    control_row = {"model": "vit", "method": "from scratch (widths of x)"}
    base = {**run, "protocol": {"validation_images": 5000, "test_images": 10000,
                                "seeds": [0, 1, 2]},
            "layer": {"layer": "L", "rank": 1, "batch": 2, "speedup": 3.0, "flop_ratio": 4.0},
            "seconds": 60, "machine": {"cpu_model": "cpu", "threads": 2, "blas": {}, "torch": "t",
                                       "load_before": [1.0], "load_after": [2.0]},
            "added_runs": [{"models": ["vit"], "seconds": 120, "machine": {}}]}
    retimed = results.headline_markdown({
        **base, "rows": run["rows"] + [{**MLP_ROWS[0], **vit_row}],
        "superseded_timings": [{"rows": [{"model": "large-mlp"}]}, {"rows": [vit_row]}]})
    assert ("Rows of vit added later with `--add` (2 minutes, without the train-small "
            "control), then timed again with every row by the last `--retime` run.") in retimed
    twice = results.headline_markdown({
        **base, "rows": run["rows"] + [{**MLP_ROWS[0], **control_row}],
        "superseded_timings": [{"rows": [vit_row]}, {"rows": [vit_row]}]})
    assert ("Rows of vit added later with `--add` (2 minutes), then timed again with every "
            "row by the last 2 `--retime` runs.") in twice
    # vit added, re-timed, added again: only the second add is described, and the --retime
    # runs before it did not time its rows (the earlier rows of vit did not survive it)
    again = results.headline_markdown({
        **base, "rows": run["rows"] + [{**MLP_ROWS[0], **control_row}],
        "superseded_timings": [{"rows": [vit_row]}, {"rows": [vit_row]}],
        "added_runs": [{"models": ["vit"], "seconds": 120, "machine": {}, "retimes_before": 0},
                       {"models": ["vit"], "seconds": 300, "machine": {}, "retimes_before": 2}]})
    assert again.count("Rows of vit added later") == 1
    assert "Rows of vit added later with `--add` (5 minutes), timed in that run only." in again
    once_more = results.headline_markdown({
        **base, "rows": run["rows"] + [{**MLP_ROWS[0], **vit_row}],
        "superseded_timings": [{"rows": [vit_row]}, {"rows": [vit_row]}, {"rows": [vit_row]}],
        "added_runs": [{"models": ["vit"], "seconds": 300, "machine": {}, "retimes_before": 2}]})
    assert ("(5 minutes, without the train-small control), then timed again with every row by "
            "the last `--retime` run.") in once_more


def test_a_method_pays_only_within_tolerance_and_faster_in_every_timing_run():
    rows = [
        _row("m", "low_rank_energy", "a", b256=1.5),                     # pays
        _row("m", "pca_activations", "b", b256=1.5, within=False),       # not within
        _row("m", "magnitude", "c", b256=1.01),                          # q1 below 1
        _row("m", "l1_structured", "d", b256=1.3, retime=1.5),           # 0.87 the run before
        _row("m", "unregistered", "e", b256=2.0),
    ]
    summary = results.method_summary(_run(rows)).set_index("method")
    assert summary["pays"].to_dict() == {"a": True, "b": False, "c": False, "d": False,
                                         "e": True}
    assert list(summary.index) == ["e", "a", "b", "d", "c"]  # fastest first
    assert summary.loc["b", "needs data"] == "yes" and summary.loc["a", "needs data"] == "no"
    assert summary.loc["e", "needs data"] == "?"
    empty = results.method_summary(_run([]))
    assert empty.empty and "pays" in empty.columns


def test_fastest_within_and_the_control_comparison():
    run = _run(MLP_ROWS + CNN_ROWS)
    assert results.fastest_within(run, "large-mlp")["method"] == "PCA interpolative"
    assert results.fastest_within(run, "nothing") is None
    controls = results.control_comparison(run)
    assert list(controls["model"]) == ["small-cnn"]
    assert controls.loc[0, "verdict"] == "training small"  # 92 ± 0.6 against 90 ± 0.6
    close = copy.deepcopy(run)
    close["rows"][-1].update(test_accuracy=0.905, test_accuracy_ci95=[0.899, 0.911])
    assert results.control_comparison(close).loc[0, "verdict"] == "no clear difference"


def test_findings_follow_their_rules():
    run = _run(MLP_ROWS + CNN_ROWS)
    verdicts = {f.number: f.verdict for f in results.findings(run)}
    assert verdicts[1] == "Reproduced"
    assert verdicts[2].startswith("Reproduced with a PCA of the activations")
    assert verdicts[3].startswith("Not confirmed by the benchmark")
    assert verdicts[4].startswith("Half right")
    evidence = results.findings(run)[3].evidence
    assert "training small wins" in evidence and "0.96×" in evidence

    changed = copy.deepcopy(run)
    changed["rows"][0].update(speedup_b256=1.2)                    # randomized faster at b256
    changed["rows"][2].update(speedup_b256=12.0,                   # PCA within at 12×
                              speedup_b256_iqr=[11.8, 12.2])
    changed["rows"][3].update(within_tolerance=True)               # low rank within on test
    changed["rows"][4].update(speedup_b256=1.3, speedup_b256_iqr=[1.25, 1.35])  # CNN low rank
    verdicts = {f.number: f.verdict for f in results.findings(changed)}
    assert verdicts[1] == "Only partly reproduced"
    assert verdicts[2].startswith("Only partly: within 1 point at 12.00×")
    assert verdicts[3] == "Reproduced in the benchmark"
    assert verdicts[4].startswith("Wrong")

    nothing = _run([_row("other-net", "low_rank_energy", "low rank")])
    assert all(f.verdict == "Not tested in these results" for f in results.findings(nothing))
