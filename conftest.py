"""pytest setup shared by the unit tests and ``pytest --nbval notebooks/``.

Typed exactly like that, ``pytest --nbval notebooks/`` runs the notebooks in smoke mode: the
variable is set here, before any kernel starts, unless the caller already chose a mode.
The notebooks' sanitising rules (``notebooks/nbval_sanitize.cfg``) are applied unless another
file is given with ``--nbval-sanitize-with``.
"""

import os
from pathlib import Path

from pruning_utils.config import SMOKE_ENV

os.environ.setdefault(SMOKE_ENV, "1")

_SANITIZE = Path(__file__).parent / "notebooks" / "nbval_sanitize.cfg"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "colab_path: installs the library from a git URL into a fresh environment and runs "
        "chapter 0 there, as Colab does (tests/test_colab_path.py)",
    )
    option = config.option
    if getattr(option, "nbval_sanitize_with", "unset") is None and _SANITIZE.is_file():
        option.nbval_sanitize_with = str(_SANITIZE)
