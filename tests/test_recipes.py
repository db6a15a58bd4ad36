import pytest

from pruning_utils.train import BOOK_RECIPES, trained_model


def test_trained_model_uses_the_book_recipe(monkeypatch):
    import sys

    module = sys.modules["pruning_utils.train"]
    calls = []
    monkeypatch.setattr(module, "train_or_load", lambda *a, **kw: calls.append((a, kw)) or "model")
    monkeypatch.setenv("PRUNING_BOOK_SMOKE", "0")  # smoke mode narrows the LargeMLP (test_config)
    assert trained_model("large-mlp", activation=None, progress=False) == "model"
    (args, kwargs), = calls
    assert args == ("large-mlp", "fashion-mnist")
    assert kwargs["model_kwargs"] == {"activation": None}
    assert kwargs["lr"] == BOOK_RECIPES["large-mlp"]["lr"]
    assert kwargs["batch_size"] == BOOK_RECIPES["large-mlp"]["batch_size"]


def test_trained_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="name must be one of"):
        trained_model("resnet50")


def test_the_resnet_is_narrower_in_smoke_mode(monkeypatch):
    import sys

    module = sys.modules["pruning_utils.train"]
    calls = []
    monkeypatch.setattr(module, "train_or_load", lambda *a, **kw: calls.append((a, kw)) or "model")
    monkeypatch.setenv("PRUNING_BOOK_SMOKE", "1")
    trained_model("small-resnet", progress=False)
    monkeypatch.setenv("PRUNING_BOOK_SMOKE", "0")
    trained_model("small-resnet", progress=False)
    (_, smoke), (_, full) = calls
    assert smoke["model_kwargs"] == {"channels": (8, 16, 32)}
    assert full["model_kwargs"] == {}  # the default channels: one cache key for the full model
    assert full["lr"] == BOOK_RECIPES["small-resnet"]["lr"]
