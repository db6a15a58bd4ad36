"""Unit tests work on small tensors, where a second thread only adds contention."""

import torch

torch.set_num_threads(1)
