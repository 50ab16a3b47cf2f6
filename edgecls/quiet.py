"""Silence what torch's exporters print that no user can act on."""

from __future__ import annotations

import contextlib
import logging
import warnings


@contextlib.contextmanager
def quiet_torch_export():
    # The dynamo exporter logs "torchvision is not installed" per op, and torch internals emit
    # Future/Deprecation warnings. Set after torch is imported: torch configures its loggers then.
    import torch  # noqa: F401

    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        log.setLevel(level)
