"""Files: the one error for a damaged file, atomic writes."""

import os
import pickle
import stat
import threading

import pytest

from pruning_utils.files import CorruptFileError, atomic_files


@pytest.fixture(autouse=True)
def hermetic_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNING_BOOK_DATA", str(tmp_path / "default-root"))


def test_corrupt_file_error_names_file_problem_and_fix(tmp_path):
    error = CorruptFileError(tmp_path / "w.pt", "is empty", "pass retrain=True")
    assert isinstance(error, ValueError)
    assert str(error) == f"{tmp_path / 'w.pt'} is empty. To fix: pass retrain=True."
    assert (error.path, error.problem, error.fix) == (tmp_path / "w.pt", "is empty",
                                                      "pass retrain=True")
    copy = pickle.loads(pickle.dumps(error))  # crosses process boundaries intact
    assert type(copy) is CorruptFileError and str(copy) == str(error) and copy.path == error.path


def test_atomic_files_write_all_targets(tmp_path):
    a, b = tmp_path / "new" / "a.bin", tmp_path / "b.txt"
    b.write_text("old")
    with atomic_files(a, b) as (tmp_a, tmp_b):
        assert tmp_a.parent == a.parent and tmp_b.parent == b.parent
        assert tmp_a.is_file() and tmp_a.name.startswith(".a.bin.")
        tmp_a.write_bytes(b"\x00\x01")
        tmp_b.write_text("new")
        assert b.read_text() == "old"  # nothing visible before the block ends
    assert a.read_bytes() == b"\x00\x01" and b.read_text() == "new"
    assert stat.S_IMODE(os.stat(a).st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "b.txt", "new"]


def test_atomic_files_leave_targets_alone_on_error(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("keep a")
    with pytest.raises(RuntimeError, match="disk full"), atomic_files(a, b) as (tmp_a, tmp_b):
        tmp_a.write_text("half")
        raise RuntimeError("disk full")
    assert a.read_text() == "keep a" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_files_need_a_path():
    with pytest.raises(TypeError, match="at least one path"), atomic_files():
        pass


def test_concurrent_writers_never_tear_a_file(tmp_path):
    target = tmp_path / "shared.bin"
    payloads = [bytes([i]) * 200_000 for i in range(4)]
    errors = []

    def writer(payload):
        try:
            for _ in range(10):
                with atomic_files(target) as (tmp,):
                    tmp.write_bytes(payload)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for thread in threads:
        thread.start()
    seen = set()
    while any(thread.is_alive() for thread in threads):
        if target.exists():
            seen.add(target.read_bytes() in payloads)
    for thread in threads:
        thread.join()
    assert not errors and seen <= {True}
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]
