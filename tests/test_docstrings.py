"""The ``Examples`` in the library's docstrings run, and say what they show."""

import doctest
import importlib

import pytest

MODULES_WITH_EXAMPLES = [
    "pruning_utils.validation",
    "pruning_utils.nnutils",
    "pruning_utils.linalg",
    "pruning_utils.layers",
    "pruning_utils.measure",
    "pruning_utils.files",
    "pruning_utils.surgery.io",
    "pruning_utils.surgery.factorize",
    "pruning_utils.surgery.width",
    "pruning_utils.surgery.groups",
    "pruning_utils.surgery.baselines",
]


@pytest.mark.parametrize("name", MODULES_WITH_EXAMPLES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples to run"
    assert result.failed == 0
