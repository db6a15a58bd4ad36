"""The Colab path: what a reader who opens a chapter in Colab runs first.

Every chapter starts with an install cell written by ``scripts/sync_install_cells.py`` from
``_config.yml`` (the same setting the launch buttons follow). The fast tests check that the cells
agree with the configuration, that ``--check`` names the notebooks that do not, and that the
cell does nothing outside Colab. The test marked ``colab_path`` does what Colab does: it installs
the library from a git URL of the repository into a fresh virtual environment and runs
chapter 0 there (smoke mode, offline).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import types
import venv
from pathlib import Path

import pytest
from IPython.core.inputtransformer2 import TransformerManager

ROOT = Path(__file__).resolve().parents[1]
FORK_URL, FORK_BRANCH = "https://github.com/someone/pruning-fork", "dev"


def _load_sync_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "sync_install_cells", ROOT / "scripts" / "sync_install_cells.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync = _load_sync_script()
#: every notebook of the book, chapters and other pages (the guide, the key results)
NOTEBOOKS = sorted((ROOT / "notebooks").glob(sync.NOTEBOOK_GLOB))


def _install_cell(path: Path) -> str:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    index = sync.install_cell_index(notebook)
    assert index is not None, f"{path.name} has no install cell"
    return "".join(notebook["cells"][index]["source"])


def _fork_config(tmp_path: Path) -> Path:
    config = tmp_path / "_config.yml"
    config.write_text(f"title: fork\nrepository:\n  url: {FORK_URL}\n  branch: {FORK_BRANCH}\n")
    return config


# --- the install cells follow _config.yml ------------------------------------------------------


def test_every_chapter_installs_from_the_configured_repository(capsys):
    assert NOTEBOOKS, "no chapters found under notebooks/"
    assert sync.main(["--check"]) == 0, capsys.readouterr().out
    url, branch = sync.read_repository()
    requirement = f"{sync.package_name()} @ git+{url}@{branch}"
    for path in NOTEBOOKS:
        assert f'%pip install --quiet "{requirement}"' in _install_cell(path), path.name


def test_check_names_the_notebooks_that_disagree_and_sync_fixes_only_their_cells(
    tmp_path, capsys
):
    copies = []
    for name in ("00_setup.ipynb", "07_comparison.ipynb"):
        shutil.copy(ROOT / "notebooks" / name, tmp_path / name)
        copies.append(tmp_path / name)
    original = {p: p.read_text(encoding="utf-8") for p in copies}
    before = {p: json.loads(text) for p, text in original.items()}
    config = _fork_config(tmp_path)
    args = ["--config", str(config), *map(str, copies)]

    assert sync.main(["--check", *args]) == 1
    out = capsys.readouterr()
    assert all(p.name in out.out for p in copies)
    assert "run: python scripts/sync_install_cells.py" in out.err
    assert {p: json.loads(p.read_text(encoding="utf-8")) for p in copies} == before  # untouched

    assert sync.main(args) == 0
    assert sync.main(["--check", *args]) == 0
    capsys.readouterr()
    for path in copies:
        after = json.loads(path.read_text(encoding="utf-8"))
        old = before[path]
        changed = [
            k for k, (a, b) in enumerate(zip(old["cells"], after["cells"], strict=True)) if a != b
        ]
        index = sync.install_cell_index(old)
        assert index in changed
        assert f"git+{FORK_URL}@{FORK_BRANCH}" in "".join(after["cells"][index]["source"])
        # with the old sources put back, the file is byte for byte the original: only sources
        # changed (never outputs or metadata) and the JSON layout is Jupyter's
        for k in changed:
            after["cells"][k]["source"] = old["cells"][k]["source"]
        assert json.dumps(after, indent=1, ensure_ascii=False) + "\n" == original[path]
    # chapter 7 reads the headline results from the repository's raw files: they follow too
    chapter7 = (tmp_path / "07_comparison.ipynb").read_text(encoding="utf-8")
    assert "https://raw.githubusercontent.com/someone/pruning-fork/dev/results/" in chapter7


def test_raw_links_of_the_configured_repository_are_left_alone():
    url, branch = sync.read_repository()
    raw = sync.raw_base(url, branch)
    for path in NOTEBOOKS:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        _, changes = sync.synced(notebook, _install_cell(path), raw)
        assert changes == [], (path.name, changes)


def test_install_cell_does_nothing_outside_colab_and_installs_inside(monkeypatch):
    for path in NOTEBOOKS:
        code = TransformerManager().transform_cell(_install_cell(path))
        calls = []
        shell = types.SimpleNamespace(run_line_magic=lambda *args, calls=calls: calls.append(args))
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
        exec(code, {"get_ipython": lambda shell=shell: shell})
        assert calls == [], f"{path.name}: the install cell runs outside Colab"
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
        exec(code, {"get_ipython": lambda shell=shell: shell})
        url, branch = sync.read_repository()
        assert calls == [("pip", f'install --quiet "pruning-utils @ git+{url}@{branch}"')]


def test_raw_base_only_for_github_repositories():
    assert sync.raw_base("https://github.com/a/b", "main") == (
        "https://raw.githubusercontent.com/a/b/main/"
    )
    assert sync.raw_base("https://github.com/a/b.git", "x") == (
        "https://raw.githubusercontent.com/a/b/x/"
    )
    assert sync.raw_base("https://gitlab.com/a/b", "main") is None
    assert sync.raw_base("https://github.com/a", "main") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("title: x\n", "add a 'repository' section"),
        ("repository:\n  branch: main\n", "repository.url"),
        ("repository:\n  url: github.com/a/b\n", "repository.url"),
        ("repository:\n  url: https://github.com/a/b\n  branch: ''\n", "repository.branch"),
        ("repository:\n  url: https://github.com/a/b\n  branch: 3\n", "repository.branch"),
    ],
)
def test_bad_configuration_is_named(tmp_path, text, message):
    config = tmp_path / "_config.yml"
    config.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        sync.read_repository(config)
    assert str(config) in str(error.value)


def test_missing_configuration_and_missing_install_cell_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="repository.url"):
        sync.read_repository(tmp_path / "absent.yml")
    notebook = tmp_path / "07_new.ipynb"
    notebook.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4,
                                    "nbformat_minor": 5}))
    with pytest.raises(ValueError, match="07_new.ipynb: no install cell"):
        sync.sync([notebook], FORK_URL, FORK_BRANCH, "pruning-utils", check=True)


def test_default_branch_is_main(tmp_path):
    config = tmp_path / "_config.yml"
    config.write_text("repository:\n  url: https://github.com/a/b/\n")
    assert sync.read_repository(config) == ("https://github.com/a/b", "main")


# --- the Colab path itself ---------------------------------------------------------------------


def _git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _offline_data_root(tmp_path: Path) -> Path:
    """A fresh data root in which Fashion-MNIST can be found without the network."""
    from pruning_utils.config import data_root
    from pruning_utils.data import DATASETS

    info = DATASETS["fashion-mnist"]
    root = tmp_path / "data"
    raw = root / info.torchvision_class / "raw"
    raw.mkdir(parents=True)
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for source in (data_root() / info.torchvision_class / "raw", *map(Path, info.system_dirs)):
        files = [next((f for f in (source / n, source / f"{n}.gz") if f.is_file()), None)
                 for n in names]
        if all(files):
            for f in files:
                (raw / f.name).symlink_to(f)
            return root
    pytest.skip("Fashion-MNIST is not available offline here (run `make data`)")


def _fresh_environment(path: Path) -> Path:
    """A virtual environment without packages of its own that sees this interpreter's ones.

    Torch and the other dependencies are not installed again: a ``.pth`` file appends the
    current site-packages to the new environment's path, after its own site-packages, and
    ``.pth`` files found there (such as an editable install of the library) are not run.
    """
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(path)
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(purelib) / "project-packages.pth").write_text("\n".join(ours) + "\n")
    return python


_RUN_NOTEBOOK = """
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

path = Path(sys.argv[1])
notebook = nbformat.read(path, as_version=4)
try:
    NotebookClient(notebook, timeout=300, kernel_name=sys.argv[2],
                   resources={"metadata": {"path": str(path.parent)}}).execute()
finally:
    nbformat.write(notebook, path)
"""


@pytest.mark.colab_path
def test_colab_path_install_from_git_url_into_fresh_env_and_run_chapter_0(tmp_path):
    """Install as the install cell does, from a git URL, and run chapter 0 with that library."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to install from a git URL")
    if importlib.util.find_spec("setuptools") is None:  # the build backend, shared offline
        pytest.skip("setuptools is needed to build the package offline: pip install setuptools")
    try:
        head = _git("rev-parse", "HEAD")
    except subprocess.CalledProcessError:
        pytest.skip(f"{ROOT} is not a git checkout")
    url, branch = sync.read_repository()
    data = _offline_data_root(tmp_path)

    # the repository as Colab sees it: a clone of HEAD, with the configured branch at HEAD
    clone = tmp_path / "repository"
    _git("clone", "--quiet", str(ROOT), str(clone))
    _git("checkout", "--quiet", "-B", branch, head, cwd=clone)
    # pip's URL parser wants a host in git+file URLs: file://localhost/<path>
    local_url = f"file://localhost{clone.as_posix()}"

    env = tmp_path / "env"
    python = _fresh_environment(env)
    kernels = tmp_path / "jupyter" / "kernels" / "colab-fresh"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fresh environment", "language": "python",
    }))

    # chapter 0 of that revision, told that it runs in Colab, installing from the clone
    notebook = json.loads((clone / "notebooks" / "00_setup.ipynb").read_text(encoding="utf-8"))
    index = sync.install_cell_index(notebook)
    cell = "".join(notebook["cells"][index]["source"])
    assert f"git+{url}@{branch}" in cell, "run scripts/sync_install_cells.py: cell out of date"
    # offline: no index, no build isolation (setuptools comes from the shared site-packages)
    cell = cell.replace(f"git+{url}@", f"git+{local_url}@").replace(
        '%pip install --quiet "', '%pip install --quiet --no-deps --no-index --no-build-isolation "'
    )
    notebook["cells"][index]["source"] = cell
    pretend = "import sys, types\n\nsys.modules['google.colab'] = types.ModuleType('google.colab')"
    report = ("import json, sys\n\nimport pruning_utils\n\n"
              "print(json.dumps({'file': pruning_utils.__file__, 'python': sys.executable}))")
    notebook["cells"].insert(index, {"cell_type": "code", "execution_count": None, "id": "colab",
                                     "metadata": {}, "outputs": [], "source": pretend})
    notebook["cells"].append({"cell_type": "code", "execution_count": None, "id": "report",
                              "metadata": {}, "outputs": [], "source": report})
    run = tmp_path / "run" / "00_setup.ipynb"
    run.parent.mkdir()
    run.write_text(json.dumps(notebook), encoding="utf-8")

    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    environ.update(PRUNING_BOOK_SMOKE="1", PRUNING_BOOK_DATA=str(data),
                   JUPYTER_PATH=str(tmp_path / "jupyter"), JUPYTER_DATA_DIR=str(tmp_path / "jd"),
                   PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    done = subprocess.run([str(python), "-c", _RUN_NOTEBOOK, str(run), "colab-fresh"],
                          cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"chapter 0 failed in the fresh environment:\n{done.stderr}"

    executed = json.loads(run.read_text(encoding="utf-8"))

    def printed(cell: dict) -> str:
        return "".join("".join(o.get("text", "")) for o in cell["outputs"])

    install_output = printed(executed["cells"][index + 1])
    assert "error" not in install_output.lower(), install_output
    shown = json.loads(printed(executed["cells"][-1]))
    assert Path(shown["python"]).parent == python.parent
    assert Path(shown["file"]).resolve().is_relative_to(env.resolve()), shown["file"]
    # installed from the git URL, at HEAD: pip records where a package came from
    direct = next(env.glob("lib*/python*/site-packages/pruning_utils-*.dist-info/direct_url.json"),
                  None) or next(env.glob("Lib/site-packages/pruning_utils-*.dist-info/"
                                         "direct_url.json"))
    origin = json.loads(direct.read_text())
    assert origin["url"] == local_url and origin["vcs_info"]["commit_id"] == head, origin


# --- the execution report that the setup chapter shows ------------------------------------------


def _load_execute_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "execute_notebooks", ROOT / "scripts" / "execute_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_execution_report_has_one_full_row_per_chapter_and_no_invented_load():
    execute = _load_execute_script()
    rows = execute.read_report(ROOT / "results" / "execution.csv")
    header = (ROOT / "results" / "execution.csv").read_text(encoding="utf-8").splitlines()[0]
    assert tuple(header.split(",")) == execute.COLUMNS
    full = [r for r in rows if r["mode"] == "full" and r["device"] == "cpu"]
    assert sorted(r["notebook"] for r in full) == [p.name for p in NOTEBOOKS]
    for row in rows:
        assert float(row["seconds"]) > 0, row
        if "load not recorded" in row["note"]:
            assert row["load_before"] == row["load_after"] == "", row
        else:
            assert row["load_before"] != "" or os.name == "nt", row


def test_execution_report_replaces_the_row_of_a_rerun_and_keeps_the_others(tmp_path):
    execute = _load_execute_script()
    report = tmp_path / "results" / "execution.csv"
    base = {"mode": "full", "device": "cpu", "note": ""}
    execute.update_report(report, {**base, "chapter": 1, "notebook": "01_a.ipynb", "seconds": 5})
    execute.update_report(report, {**base, "chapter": 0, "notebook": "00_b.ipynb", "seconds": 2,
                                   "load_before": 0.5, "load_after": None})
    execute.update_report(report, {**base, "chapter": 1, "notebook": "01_a.ipynb", "seconds": 7})
    execute.update_report(report, {**base, "chapter": 1, "notebook": "01_a.ipynb", "seconds": 1,
                                   "mode": "smoke"})
    rows = execute.read_report(report)
    assert [(r["notebook"], r["mode"], r["seconds"]) for r in rows] == [
        ("00_b.ipynb", "full", "2"), ("01_a.ipynb", "full", "7"), ("01_a.ipynb", "smoke", "1")]
    assert rows[0]["load_before"] == "0.5" and rows[0]["load_after"] == ""
    assert not list(report.parent.glob("*.partial"))


def test_execution_report_of_another_kind_is_named(tmp_path):
    execute = _load_execute_script()
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="other.csv: not an execution report"):
        execute.update_report(other, {"notebook": "00_x.ipynb", "mode": "full", "device": "cpu"})
    assert execute.read_report(tmp_path / "absent.csv") == []
