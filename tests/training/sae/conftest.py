"""SAE training tests run many tiny matmuls: one torch thread avoids oversubscription stalls
on a shared CPU (tiny ops with 2 threads can be 10x slower when another process holds a core)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
