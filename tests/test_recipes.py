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
