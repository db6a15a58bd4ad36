"""Training, evaluation, fine-tuning and the weights cache."""

import copy
import importlib
import json
import threading

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pruning_utils.files import CorruptFileError
from pruning_utils.train import (
    TrainHistory,
    evaluate,
    fine_tune,
    train,
    train_or_load,
    trained_model,
)

# the package exports the function ``train``, which hides the module of the same name
train_module = importlib.import_module("pruning_utils.train")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def hermetic_data_root(monkeypatch, tmp_path):
    """No test reads or writes the real data root (its datasets or its weights cache)."""
    monkeypatch.setenv("PRUNING_BOOK_DATA", str(tmp_path / "default-root"))


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
        ({"epochs": 1.5}, TypeError, "epochs"),
        ({"lr": "1e-3"}, TypeError, "lr"),
        ({"lr": float("nan")}, ValueError, "lr"),
        ({"optimizer": 3}, TypeError, "optimizer"),
        ({"progress": 1}, TypeError, "progress"),
        ({"device": "bogus"}, ValueError, "device"),
        ({"device": 0}, TypeError, "device"),
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
    with pytest.raises(ValueError, match="dataset must be one of"):
        train_or_load("simple-mlp", "cifar10", 1)
    with pytest.raises(TypeError, match="retrain"):
        train_or_load(tiny_model, blobs(), 1, name="t", retrain="yes")
    with pytest.raises(ValueError, match="device"):
        train_or_load(tiny_model, blobs(), 1, name="t", device="gpu")
    with pytest.raises(ValueError, match="name must be one of"):
        trained_model("resnet")
    with pytest.raises(TypeError, match="batch_size"):
        evaluate(tiny_model(), blobs(), batch_size=2.0)


def test_diverging_training_raises():
    data = blobs()
    with pytest.raises(FloatingPointError, match="smaller lr"):
        train(nn.Linear(8, 3), data, 2, lr=1e38, optimizer="sgd", progress=False)


# ----------------------------------------------------------------------------- devices, dtypes


def test_evaluate_moves_inputs_to_the_model_dtype():
    data = blobs(n=60, seed=2)
    model = tiny_model(seed=1).double()
    x, y = data.tensors  # float32 inputs for a float64 model
    with torch.no_grad():
        expected = float(np.mean(np.argmax(model(x.double()).numpy(), axis=1) == y.numpy()))
    assert evaluate(model, data) == pytest.approx(expected)
    train(model, data, 1, progress=False)  # trains too, in float64
    assert model[0].weight.dtype == torch.float64


def test_cpu_training_leaves_cuda_generators_alone(monkeypatch, tmp_path):
    def reseeds_cuda(*args, **kwargs):
        raise AssertionError("training on the CPU must not reseed CUDA generators")

    def unseeded_model():
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    model, data = tiny_model(), blobs()
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeds_cuda)
    monkeypatch.setattr(torch.cuda, "manual_seed", reseeds_cuda)
    train(model, data, 1, device="cpu", progress=False)
    train_or_load(unseeded_model, data, 1, name="tiny", root=tmp_path, device="cpu",
                  progress=False)


def test_trained_model_forwards_device_and_recipe(monkeypatch):
    seen = {}

    def fake(*args, **kwargs):
        seen.update(args=args, **kwargs)
        return "model"

    monkeypatch.setattr(train_module, "train_or_load", fake)
    assert trained_model("lenet5", seed=3, device="cpu", progress=False) == "model"
    assert seen["args"] == ("lenet5", "fashion-mnist") and seen["device"] == "cpu"
    assert seen["seed"] == 3 and seen["lr"] == train_module.BOOK_RECIPES["lenet5"]["lr"]


@needs_cuda
def test_cuda_model_and_cpu_data_agree(tmp_path):
    data = blobs()
    model = train_or_load(tiny_model, data, 2, name="tiny", root=tmp_path, lr=1e-2,
                          device="cuda", progress=False)
    assert all(p.device.type == "cuda" for p in model.parameters())
    cpu_copy = tiny_model()
    cpu_copy.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    assert evaluate(model, data) == pytest.approx(evaluate(cpu_copy, data))  # CPU batches
    again = train_or_load(tiny_model, data, 2, name="tiny", root=tmp_path, lr=1e-2,
                          device="cpu", progress=False)  # the cache serves every device
    assert all(p.device.type == "cpu" for p in again.parameters())
    assert same_weights(again, cpu_copy)


@needs_cuda
def test_cuda_training_is_seeded_and_restores_generators():
    data = blobs()

    def run(seed, caller):  # dropout draws on the GPU's generator
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 3))
        torch.cuda.manual_seed(caller)  # whatever the caller's CUDA state, seed decides
        train(model, data, 2, seed=seed, device="cuda", progress=False)
        return model

    a, b, c = run(1, caller=10), run(1, caller=20), run(2, caller=10)
    assert all(p.device.type == "cuda" for p in a.parameters())
    assert same_weights(a, b) and not same_weights(a, c)
    model = tiny_model()
    cpu_state, cuda_state = torch.get_rng_state(), torch.cuda.get_rng_state()
    train(model, data, 1, seed=3, device="cuda", progress=False)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_state)
    assert torch.equal(torch.get_rng_state(), cpu_state)


# ----------------------------------------------------------------------------- the weights cache


def cached(tmp_path, factory=tiny_model, name="tiny", **kwargs):
    return train_or_load(factory, blobs(), 1, name=name, root=tmp_path, lr=1e-2, device="cpu",
                         progress=False, **kwargs)


@pytest.fixture
def counted(monkeypatch):
    """The number of times :func:`train` runs."""
    calls = []
    real_train = train_module.train

    def counting_train(*args, **kwargs):
        calls.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_module, "train", counting_train)
    return calls


def flip_a_byte(blob: bytes) -> bytes:
    middle = len(blob) // 2
    return blob[:middle] + bytes([blob[middle] ^ 0xFF]) + blob[middle + 1:]


@pytest.mark.parametrize(
    ("damage", "which", "problem"),
    [
        (lambda w, s: w.write_bytes(b""), "weights", "is empty"),
        (lambda w, s: w.write_bytes(w.read_bytes()[:100]), "weights", "SHA-256"),
        (lambda w, s: w.write_bytes(flip_a_byte(w.read_bytes())), "weights", "SHA-256"),
        (lambda w, s: s.write_text(s.read_text()[:40]), "sidecar", "is not valid JSON"),
        (lambda w, s: s.write_bytes(b""), "sidecar", "is not valid JSON"),
        (lambda w, s: s.write_bytes(b"\xff\xfe"), "sidecar", "is not valid JSON"),
        (lambda w, s: s.write_text("[1, 2]"), "sidecar", "does not hold a JSON object"),
        (lambda w, s: s.write_text('{"history": 3}'), "sidecar", "lacks a valid"),
        (lambda w, s: s.unlink(), "sidecar", "is missing"),
    ],
)
def test_damaged_cache_entry_is_refused_then_retrained_on_request(
    tmp_path, counted, damage, which, problem
):
    first = cached(tmp_path)
    weights = first.weights_path
    sidecar = weights.with_suffix(".json")
    damage(weights, sidecar)
    files = {p: p.read_bytes() for p in (weights, sidecar) if p.exists()}
    with pytest.raises(CorruptFileError) as info:
        cached(tmp_path)
    error = info.value
    assert error.path == (weights if which == "weights" else sidecar)
    assert str(error.path) in str(error) and problem in str(error)
    assert "retrain=True" in str(error) and isinstance(error, ValueError)
    assert len(counted) == 1  # not loaded, not trained again behind the user's back
    assert {p: p.read_bytes() for p in files} == files  # nothing deleted or replaced
    retrained = cached(tmp_path, retrain=True)
    assert len(counted) == 2 and retrained.weights_path == weights
    assert same_weights(retrained, first)  # same seed, same CPU: the same weights
    loaded = cached(tmp_path)
    assert len(counted) == 2 and same_weights(loaded, first)
    assert sorted(p.name for p in weights.parent.iterdir()) == sorted(
        [".lock", weights.name, sidecar.name]
    )


def test_weights_of_another_architecture_are_never_loaded(tmp_path, counted):
    entry = cached(tmp_path).weights_path
    sidecar = entry.with_suffix(".json")
    # replace the weights by a wider model's, consistently (checksum updated): only the
    # check against the model can tell
    wide = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    train_module._save_cached(wide, entry, json.loads(sidecar.read_text()))
    with pytest.raises(CorruptFileError, match=r"another architecture .*0\.weight is \(32, 8\)"):
        cached(tmp_path)
    # a sidecar describing another architecture is refused as well
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "architecture": "0123456789ab"}))
    with pytest.raises(CorruptFileError, match="describes a model of another architecture"):
        cached(tmp_path)
    assert len(counted) == 1


def test_changed_architecture_gets_its_own_entry(tmp_path, counted):
    def narrow():
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def wide():
        return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

    def smooth():  # same shapes as narrow, another activation
        return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))

    a = cached(tmp_path, narrow)
    b = cached(tmp_path, wide)
    c = cached(tmp_path, smooth)
    assert len(counted) == 3
    assert len({a.weights_path, b.weights_path, c.weights_path}) == 3
    assert b[0].out_features == 32 and isinstance(c[1], nn.Tanh)
    again = cached(tmp_path, narrow)  # the first entry is still there and still loads
    assert len(counted) == 3 and same_weights(again, a)


def test_readers_never_pair_weights_and_sidecar_of_two_writers(tmp_path):
    entry = tmp_path / "weights" / "tiny.pt"
    models = [tiny_model(seed=1), tiny_model(seed=2)]
    architecture = train_module._architecture(models[0])
    meta = {"architecture": architecture, "history": []}
    train_module._save_cached(models[0], entry, meta)
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            for model in models:
                train_module._save_cached(model, entry, meta)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(25):
            fresh = tiny_model(seed=3)
            train_module._load_cached(fresh, entry, architecture)
            assert same_weights(fresh, models[0]) or same_weights(fresh, models[1])
    finally:
        stop.set()
        thread.join()
    assert sorted(p.name for p in entry.parent.iterdir()) == [".lock", "tiny.json", "tiny.pt"]


def test_cosine_schedule_follows_half_a_cosine():
    # With a tiny learning rate the gradient barely changes, and Adam's first moment over the
    # root of its second moment is the gradient's sign: a weight with a steady gradient moves
    # by the sum of the step sizes. Half a cosine over T steps sums to lr·(T + 1)/2 (numpy
    # oracle below), the constant schedule to lr·T.
    data = DataLoader(blobs(n=8), batch_size=8)  # one batch: the same gradient every step
    start = tiny_model().double()
    lr, steps = 1e-6, 8  # eight epochs of one step each
    moved = {}
    for schedule in ("constant", "cosine"):
        model = copy.deepcopy(start)
        train(model, data, steps, lr=lr, schedule=schedule, progress=False)
        moved[schedule] = torch.cat([(p - q).abs().flatten() for p, q in
                                     zip(model.parameters(), start.parameters(), strict=True)])
    steady = moved["constant"] > 0.99 * lr * steps  # weights whose gradient kept its sign
    assert steady.sum() > 50
    cosine_sum = float(np.sum(lr * (1 + np.cos(np.pi * np.arange(steps) / steps)) / 2))
    assert cosine_sum == pytest.approx(lr * (steps + 1) / 2)
    expected = torch.full_like(moved["constant"][steady], lr * steps)
    assert torch.allclose(moved["constant"][steady], expected, rtol=1e-3)
    assert torch.allclose(moved["cosine"][steady], expected * cosine_sum / (lr * steps), rtol=1e-2)


def test_bad_schedule_names_the_choices():
    with pytest.raises(ValueError, match="schedule.*constant.*cosine"):
        train(tiny_model(), blobs(), 1, schedule="linear", progress=False)


# --------------------------------------------------------------------------- BatchNorm while tuning


class SkipNet(nn.Module):
    """Two convolutions without BatchNorm, one with, and a residual addition."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.normed = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = torch.relu(y + self.conv(y))
        y = torch.relu(self.bn(self.normed(y)))
        return self.head(y.mean(dim=(2, 3)))


def images(n=192, seed=0):
    """Noisy images whose label is their brightness level (0, 1 or 2)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    x = torch.randn(n, 1, 9, 9, generator=g) + 1.5 * labels.view(-1, 1, 1, 1)
    return TensorDataset(x, labels)


def skip_net(seed=0):
    torch.manual_seed(seed)
    net = SkipNet()
    with torch.no_grad():  # statistics that a BatchNorm fold must carry
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    return net.eval()


def test_restored_batchnorm_starts_as_the_identity_and_folds_back_exactly():
    net = skip_net()
    x = images().tensors[0]
    loader = DataLoader(images(), batch_size=64)
    wrapped = copy.deepcopy(net)
    names = train_module._restore_batchnorm(wrapped, loader)
    assert names == ["stem", "conv"]  # "normed" already feeds a BatchNorm
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), net(x), rtol=1e-5, atol=1e-5)
        for name in names:  # a trained BatchNorm: any statistics and affine terms
            bn = wrapped.get_submodule(name).bn
            for tensor in (bn.running_mean, bn.weight, bn.bias):
                tensor.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    oracle = {name: torch.nn.utils.fusion.fuse_conv_bn_eval(
        copy.deepcopy(wrapped.get_submodule(name).conv), wrapped.get_submodule(name).bn)
        for name in names}
    expected = wrapped(x).detach()
    train_module._fold_restored_batchnorm(wrapped, names)
    assert [type(m) for m in wrapped.modules()] == [type(m) for m in net.modules()]
    torch.testing.assert_close(wrapped(x).detach(), expected, rtol=1e-5, atol=1e-5)
    for name, conv in oracle.items():
        torch.testing.assert_close(wrapped.get_submodule(name).weight, conv.weight)
        torch.testing.assert_close(wrapped.get_submodule(name).bias, conv.bias)


def test_fine_tune_with_batchnorm_returns_the_same_modules_trained():
    net = skip_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    data = images()
    tuned = fine_tune(net, data, 3, lr=1e-2, batch_size=16, batchnorm=True, progress=False)
    assert tuned.fine_tune_batchnorm == ("stem", "conv")
    assert [type(m) for m in tuned.modules()] == [type(m) for m in net.modules()]
    # a convolution without a bias gains one (the folded shift); the rest keeps its shapes
    assert set(tuned.state_dict()) == set(net.state_dict()) | {"stem.bias"}
    assert all(tuned.state_dict()[k].shape == v.shape for k, v in before.items())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert not tuned.training
    assert evaluate(tuned, data) > evaluate(net, data) + 0.3
    # nothing to restore: the same run as without the option
    plain = fine_tune(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(),
                                    nn.LazyLinear(3)), data, 1, batchnorm=True, progress=False)
    assert plain.fine_tune_batchnorm == ()


def test_fine_tune_with_batchnorm_and_a_tiny_rate_keeps_the_function():
    """Restore, train with lr → 0, fold: only the running statistics move (a few %)."""
    net = skip_net()
    x = images().tensors[0]
    tuned = fine_tune(net, images(), 1, lr=1e-12, batchnorm=True, progress=False)
    with torch.no_grad():
        gap = (tuned(x) - net(x)).abs().max() / net(x).abs().max()
    assert gap < 0.05, gap


def test_fine_tune_batchnorm_bad_values():
    with pytest.raises(TypeError, match="batchnorm"):
        fine_tune(skip_net(), images(), 1, batchnorm="yes", progress=False)
    with pytest.raises(ValueError, match="batchnorm=True .* no nn.Conv2d"):
        fine_tune(tiny_model(), blobs(), 1, batchnorm=True, progress=False)
