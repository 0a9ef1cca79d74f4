"""Training tests run torch on one thread: the models are tiny, and on a shared 2-core machine two
spinning OpenMP threads per process make every run several times slower under load."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
