"""``python -m pruning_utils.benchmark``: the same command as ``python -m pruning_utils.headline``.

The headline benchmark lives in :mod:`pruning_utils.headline`; this name is kept so that the
command written in results, notes and the book keeps working.
"""

from pruning_utils.headline import main

if __name__ == "__main__":
    raise SystemExit(main())
