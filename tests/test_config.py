"""Run settings: smoke mode, data root, device, seeds."""

import random

import numpy as np
import pytest
import torch

from pruning_utils import config, nnutils


@pytest.fixture(autouse=True)
def hermetic_data_root(monkeypatch, tmp_path):
    """No test reads or writes the real data root."""
    monkeypatch.setenv(config.DATA_ENV, str(tmp_path / "default-root"))


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
    with pytest.raises(TypeError, match="prefer"):
        config.get_device(0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            config.get_device("cuda")


def test_seeded_repeats_and_restores_the_cpu_generator():
    torch.manual_seed(11)
    before = torch.get_rng_state()
    with nnutils.seeded(3):
        a = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)
    with nnutils.seeded(3, device="cpu"):
        b = torch.rand(4)
    expected = torch.rand(4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, expected) and torch.equal(b, expected)
    with nnutils.seeded(4):
        assert not torch.equal(torch.rand(4), expected)


def test_seeded_on_the_cpu_does_not_touch_cuda(monkeypatch):
    def reseeds_cuda(*args, **kwargs):
        raise AssertionError("a CPU block must not reseed CUDA generators")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeds_cuda)
    monkeypatch.setattr(torch.cuda, "manual_seed", reseeds_cuda)
    with nnutils.seeded(0):
        torch.rand(1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_seeded_on_cuda_repeats_and_restores_that_device():
    device = torch.device("cuda", torch.cuda.current_device())
    before_cpu, before_cuda = torch.get_rng_state(), torch.cuda.get_rng_state(device)
    with nnutils.seeded(5, device):
        a = torch.rand(8, device=device)
    with nnutils.seeded(5, "cuda"):
        b = torch.rand(8, device=device)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), before_cpu)
    assert torch.equal(torch.cuda.get_rng_state(device), before_cuda)
    torch.cuda.manual_seed(123)
    after = torch.cuda.get_rng_state(device)
    with nnutils.seeded(6):  # a CPU block neither reseeds nor restores the CUDA generator
        torch.rand(8)
    assert torch.equal(torch.cuda.get_rng_state(device), after)
    torch.set_rng_state(before_cpu)
    torch.cuda.set_rng_state(before_cuda, device)


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (2**63, ValueError), (1.5, TypeError)])
def test_seeded_rejects_bad_seeds(seed, error):
    with pytest.raises(error, match="seed"), nnutils.seeded(seed):
        pass


@pytest.mark.parametrize("device, error", [("gpu", ValueError), (0, TypeError)])
def test_seeded_rejects_bad_devices(device, error):
    with pytest.raises(error, match="device"), nnutils.seeded(0, device):
        pass


def test_smoke_mode_narrows_the_large_mlp_and_keeps_the_full_cache_key(monkeypatch):
    import importlib

    models = importlib.import_module("pruning_utils.models")
    train = importlib.import_module("pruning_utils.train")  # the module, not pu.train

    calls = []
    monkeypatch.setattr(train, "train_or_load", lambda name, *a, **kw: calls.append(kw) or name)
    monkeypatch.setenv(config.SMOKE_ENV, "1")
    smoke = config.get_config().large_mlp_widths
    assert smoke[0] == 784 and smoke[-1] == 10
    full_hidden = models.LARGE_MLP_WIDTHS[1:-1]
    assert list(smoke[1:-1]) == [w // 4 for w in full_hidden]
    train.trained_model("large-mlp", progress=False)
    train.trained_model("large-mlp", widths=models.LARGE_MLP_WIDTHS, progress=False)
    train.trained_model("simple-mlp", progress=False)
    monkeypatch.setenv(config.SMOKE_ENV, "0")
    assert config.get_config().large_mlp_widths == models.LARGE_MLP_WIDTHS
    train.trained_model("large-mlp", progress=False)
    assert calls[0]["model_kwargs"] == {"widths": smoke}
    assert calls[1]["model_kwargs"] == {}  # the original widths, asked for: the same cache key
    assert calls[2]["model_kwargs"] == {}  # only the LargeMLP is narrowed
    assert calls[3]["model_kwargs"] == {}  # full mode: the cache key the weights were saved under
    net = models.build_model("large-mlp", widths=smoke)
    assert net.widths == smoke and net.fc4.weight.shape == (smoke[4], smoke[3])
