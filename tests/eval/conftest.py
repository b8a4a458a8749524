"""Fixtures for the metric tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Run these small-tensor tests on one intra-op thread (restored afterwards).

    The tensors here are tiny; on a shared 2-core machine, OpenMP spin-waiting across two threads
    made the ENL0 forward and the KID Gram products ~10x slower than one thread.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
