"""Training, evaluation, fine-tuning and the weights cache."""

import importlib
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pruning_utils.train import TrainHistory, evaluate, fine_tune, train, train_or_load

# the package exports the function ``train``, which hides the module of the same name
train_module = importlib.import_module("pruning_utils.train")


def blobs(n=240, seed=0):
    """Three well separated Gaussian blobs in 8 dimensions."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(3, 8) * 6.0
    labels = torch.arange(n) % 3
    x = centers[labels] + torch.randn(n, 8, generator=g)
    return TensorDataset(x, labels)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def same_weights(a, b):
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(p, q) for p, q in pairs)


def test_train_learns_and_records_history():
    data = blobs()
    model = tiny_model()
    before = evaluate(model, data)
    history = train(model, data, 5, lr=1e-2, batch_size=32, progress=False, val_data=data)
    assert isinstance(history, TrainHistory)
    frame = history.to_frame()
    assert list(frame["epoch"]) == [1, 2, 3, 4, 5]
    assert frame["loss"].iloc[-1] < frame["loss"].iloc[0]
    assert evaluate(model, data) > max(before, 0.95)
    assert frame["val_accuracy"].iloc[-1] == pytest.approx(evaluate(model, data))
    assert not model.training


def test_train_is_seeded_and_restores_global_rng():
    data = blobs()
    state = torch.get_rng_state()
    a, b, c = tiny_model(), tiny_model(), tiny_model()
    torch.set_rng_state(state)
    train(a, data, 2, seed=7, progress=False)
    train(b, data, 2, seed=7, progress=False)
    train(c, data, 2, seed=8, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert same_weights(a, b)
    assert not same_weights(a, c)


def test_train_accepts_tuple_and_loader():
    data = blobs()
    x, y = data.tensors
    m1, m2 = tiny_model(), tiny_model()
    train(m1, (x, y), 1, seed=1, batch_size=40, progress=False)
    generator = torch.Generator().manual_seed(1)
    loader = DataLoader(data, batch_size=40, shuffle=True, generator=generator)
    train(m2, loader, 1, seed=1, progress=False)
    assert same_weights(m1, m2)


def test_evaluate_matches_numpy_and_restores_mode():
    data = blobs(n=100, seed=3)
    model = tiny_model(seed=5)
    model.train()
    x, y = data.tensors
    with torch.no_grad():
        logits = model(x).numpy()
    expected = float(np.mean(np.argmax(logits, axis=1) == y.numpy()))
    assert evaluate(model, data, batch_size=7) == pytest.approx(expected)
    assert evaluate(model, (x, y)) == pytest.approx(expected)
    assert evaluate(model, DataLoader(data, batch_size=13)) == pytest.approx(expected)
    assert model.training  # mode restored


def test_evaluate_uses_eval_mode():
    class ModeProbe(nn.Module):
        def forward(self, x):
            # class 0 in training mode, class 1 in eval mode
            out = torch.zeros(len(x), 2)
            out[:, 0 if self.training else 1] = 1.0
            return out

    labels = torch.ones(10, dtype=torch.int64)
    assert evaluate(ModeProbe().train(), (torch.zeros(10, 3), labels)) == 1.0


def test_fine_tune_returns_a_copy_unless_inplace():
    data = blobs()
    model = tiny_model()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    model.pruning_report = "report"
    tuned = fine_tune(model, data, 1, lr=1e-2, progress=False)
    assert tuned is not model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.items())
    assert not same_weights(tuned, model)
    assert tuned.pruning_report == "report"
    assert isinstance(tuned.fine_tune_history, TrainHistory)
    same = fine_tune(model, data, 1, lr=1e-2, inplace=True, progress=False)
    assert same is model
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in reference.items())


def test_train_or_load_caches_and_skips_training(tmp_path, monkeypatch):
    monkeypatch.delenv("PRUNING_BOOK_SMOKE", raising=False)
    calls = []
    real_train = train_module.train

    def counting_train(*args, **kwargs):
        calls.append(kwargs)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_module, "train", counting_train)
    data = blobs()
    first = train_or_load(
        tiny_model, data, 2, name="tiny", root=tmp_path, lr=1e-2, progress=False, device="cpu"
    )
    assert len(calls) == 1
    path = first.weights_path
    assert path.is_file() and path.parent == tmp_path / "weights"
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["epochs"] == 2 and len(meta["history"]) == 2
    # the file is a plain state dict, loadable with weights_only=True
    state = torch.load(path, weights_only=True)
    assert set(state) == set(first.state_dict())

    second = train_or_load(
        tiny_model, data, 2, name="tiny", root=tmp_path, lr=1e-2, progress=False, device="cpu"
    )
    assert len(calls) == 1  # loaded, not trained
    assert second.weights_path == path
    assert second.train_history.to_frame().equals(first.train_history.to_frame())
    assert same_weights(first, second)

    # every key field gives another file
    other_lr = train_or_load(
        tiny_model, data, 2, name="tiny", root=tmp_path, lr=5e-3, progress=False, device="cpu"
    )
    other_seed = train_or_load(
        tiny_model,
        data,
        2,
        seed=1,
        name="tiny",
        root=tmp_path,
        lr=1e-2,
        progress=False,
        device="cpu",
    )
    monkeypatch.setenv("PRUNING_BOOK_SMOKE", "1")
    smoke = train_or_load(
        tiny_model, data, 2, name="tiny", root=tmp_path, lr=1e-2, progress=False, device="cpu"
    )
    fewer = train_or_load(
        tiny_model,
        TensorDataset(*[t[:120] for t in data.tensors]),
        2,
        name="tiny",
        root=tmp_path,
        lr=1e-2,
        progress=False,
        device="cpu",
    )
    paths = {m.weights_path for m in (first, other_lr, other_seed, smoke, fewer)}
    assert len(paths) == 5 and len(calls) == 5
    assert "smoke" in smoke.weights_path.name and "full" in path.name


def test_train_or_load_by_model_name(tmp_path, monkeypatch):
    monkeypatch.delenv("PRUNING_BOOK_SMOKE", raising=False)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.arange(64) % 10)
    linear = train_or_load(
        "simple-mlp",
        data,
        1,
        root=tmp_path,
        model_kwargs={"activation": None},
        progress=False,
        device="cpu",
    )
    relu = train_or_load("simple-mlp", data, 1, root=tmp_path, progress=False, device="cpu")
    assert linear.weights_path != relu.weights_path
    assert not any(isinstance(m, nn.ReLU) for m in linear.modules())
    assert linear.weights_path.name.startswith("simple-mlp_data-")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epochs": 0}, ValueError, "epochs"),
        ({"lr": -1.0}, ValueError, "lr"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"optimizer": "rmsprop"}, ValueError, "optimizer"),
        ({"seed": -1}, ValueError, "seed"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
    ],
)
def test_train_bad_arguments(kwargs, error, match):
    args = {"epochs": 1, **kwargs}
    epochs = args.pop("epochs")
    with pytest.raises(error, match=match):
        train(tiny_model(), blobs(), epochs, progress=False, **args)


def test_bad_models_and_data():
    with pytest.raises(TypeError, match="model must be"):
        train("model", blobs(), 1)
    with pytest.raises(TypeError, match="train_data"):
        train(tiny_model(), [1, 2, 3], 1, progress=False)
    with pytest.raises(ValueError, match="differ in length"):
        evaluate(tiny_model(), (torch.zeros(3, 8), torch.zeros(2, dtype=torch.int64)))
    with pytest.raises(TypeError, match="inplace"):
        fine_tune(tiny_model(), blobs(), inplace=1)
    with pytest.raises(ValueError, match="name is required"):
        train_or_load(lambda: tiny_model(), blobs(), 1)
    with pytest.raises(ValueError, match="name_or_factory must be one of"):
        train_or_load("resnet", blobs(), 1)
    with pytest.raises(ValueError, match="model_kwargs"):
        train_or_load(tiny_model, blobs(), 1, name="t", model_kwargs={"a": 1})
    with pytest.raises(TypeError, match="dataset"):
        train_or_load("simple-mlp", 42, 1)


def test_diverging_training_raises():
    data = blobs()
    with pytest.raises(FloatingPointError, match="smaller lr"):
        train(nn.Linear(8, 3), data, 2, lr=1e38, optimizer="sgd", progress=False)
