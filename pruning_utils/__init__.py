"""pruning_utils: shrink trained networks with matrix methods, and measure the result.

The library behind the book *Pruning Neural Networks with Matrix Methods*.
Dependencies point one way: ``linalg`` (pure functions on tensors) <- ``layers``
(modules built from factors) <- ``surgery`` (model -> new model) <- the experiment
harness (``data``, ``models``, ``train``, ``bench``, ``plots``, ``config``).
"""

from pruning_utils.config import (
    RunConfig,
    data_root,
    get_config,
    get_device,
    seed_everything,
    smoke_mode,
)
from pruning_utils.data import load_dataset, make_loader, train_val_split

# --- linalg ---
# --- layers ---
# --- surgery ---
# --- harness ---

__version__ = "0.1.0"
