"""Reading and writing the library's files safely: one error for a bad file, atomic writes.

:class:`CorruptFileError`
    The one error raised when a file the library reads (a dataset file, a cached weights
    file or its JSON sidecar, a saved pruned model) is damaged or does not fit: its message
    names the file, says what is wrong and what to do.
:func:`atomic_files`
    Write one or more files through temporary names in their target folders and rename
    them into place (``os.replace``) only when all were written: a reader sees the old
    file or the complete new one, never a half-written one, and an error (or a killed
    process between writes of the same call) leaves no temporary file behind. Two
    processes writing the same file at once each use their own temporary name.

This module imports nothing from the rest of the library.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CorruptFileError", "atomic_files"]


class CorruptFileError(ValueError):
    """A file the library reads is damaged, truncated, or does not fit what reads it.

    Attributes
    ----------
    path:
        The file.
    problem:
        What is wrong with it, e.g. ``"is empty"``.
    fix:
        What to do about it, e.g. ``"pass retrain=True ..."``.

    Examples
    --------
    >>> err = CorruptFileError("w.pt", "is empty", "delete it")
    >>> str(err)
    'w.pt is empty. To fix: delete it.'
    >>> isinstance(err, ValueError)
    True
    """

    def __init__(self, path: str | os.PathLike, problem: str, fix: str) -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path} {problem}. To fix: {fix}.")

    def __reduce__(self):  # keep it picklable across processes (multiprocessing)
        return type(self), (self.path, self.problem, self.fix)


@contextlib.contextmanager
def atomic_files(*paths: str | os.PathLike) -> Iterator[tuple[Path, ...]]:
    """Temporary paths for ``paths``, renamed into place when the block ends without error.

    Each temporary file is created (empty) by :func:`tempfile.mkstemp` in the folder of
    its target, which is created if needed, under a unique hidden name
    ``.<name>.<random>.tmp``; write it in the block by any means. When the block ends, each
    is flushed to disk and renamed over its target, in the order given. When the block
    raises, every temporary file is removed and the targets are left as they were.

    Parameters
    ----------
    *paths:
        The files to write.

    Yields
    ------
    tuple of pathlib.Path
        One temporary path per target, in the same order.

    Examples
    --------
    >>> with tempfile.TemporaryDirectory() as name:
    ...     folder = Path(name)
    ...     with atomic_files(folder / "a.txt") as (tmp,):
    ...         _ = tmp.write_text("hello")
    ...     print((folder / "a.txt").read_text(), sorted(p.name for p in folder.iterdir()))
    hello ['a.txt']
    """
    if not paths:
        raise TypeError("atomic_files needs at least one path")
    targets = [Path(p) for p in paths]
    temporaries: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            temporaries.append(Path(name))
        yield tuple(temporaries)
        for tmp, target in zip(temporaries, targets, strict=True):
            _flush_to_disk(tmp)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; these files are meant to be shared
            os.replace(tmp, target)
    finally:
        for tmp in temporaries:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _flush_to_disk(path: Path) -> None:
    """``fsync`` a written file, so that a crash after the rename cannot leave it empty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support fsync; the rename is still atomic
        pass
    finally:
        os.close(fd)
