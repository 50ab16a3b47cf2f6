"""Reproducible torch runs inside a shared process (CLI, tests): set, then restore, global state."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def deterministic_torch(threads: int):
    """Fixed thread count + deterministic kernels for the block; the caller's settings come back."""
    import torch

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
