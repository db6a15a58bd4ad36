import random

import numpy as np
import pytest
import torch

from pruning_utils import config


def test_smoke_switch_reads_environment(monkeypatch):
    monkeypatch.setenv(config.SMOKE_ENV, "1")
    smoke = config.get_config()
    monkeypatch.setenv(config.SMOKE_ENV, "0")
    full = config.get_config()
    monkeypatch.delenv(config.SMOKE_ENV)
    default = config.get_config()

    assert smoke.smoke and not full.smoke and not default.smoke
    assert smoke.epochs_mlp < full.epochs_mlp
    assert smoke.sweep_points < full.sweep_points
    assert smoke.train_subset is not None and full.train_subset is None
    assert smoke.pick("full", "smoke") == "smoke" and full.pick("full", "smoke") == "full"


@pytest.mark.parametrize("value", ["true", "YES", " on "])
def test_smoke_switch_accepts_true_words(monkeypatch, value):
    monkeypatch.setenv(config.SMOKE_ENV, value)
    assert config.smoke_mode()


def test_smoke_switch_rejects_unknown_value(monkeypatch):
    monkeypatch.setenv(config.SMOKE_ENV, "maybe")
    with pytest.raises(ValueError, match="PRUNING_BOOK_SMOKE"):
        config.smoke_mode()


def test_pytest_runs_in_smoke_mode_by_default():
    # conftest.py sets the variable unless the caller chose a mode
    assert config.SMOKE_ENV in __import__("os").environ


def test_data_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(config.DATA_ENV, str(tmp_path))
    assert config.data_root() == tmp_path
    monkeypatch.delenv(config.DATA_ENV)
    assert config.data_root().name == "data"


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()  # noqa: NPY002

    generator = config.seed_everything(123)
    first, g_first = draw(), torch.rand(2, generator=generator)
    generator = config.seed_everything(123)
    second, g_second = draw(), torch.rand(2, generator=generator)
    config.seed_everything(124)
    third = draw()

    assert first == second
    assert torch.equal(g_first, g_second)
    assert all(a != b for a, b in zip(first, third, strict=True))


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (2**32, ValueError), (1.5, TypeError),
                                         ("0", TypeError), (True, TypeError)])
def test_seed_everything_rejects_bad_seeds(seed, error):
    with pytest.raises(error, match="seed"):
        config.seed_everything(seed)


def test_get_device():
    assert config.get_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert config.get_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="prefer"):
        config.get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            config.get_device("cuda")
