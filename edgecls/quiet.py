"""Silence what torch, torchao, ONNX Runtime and the LiteRT converter print that no user can act on."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

ROOT_LOGGER = ""  # logging.getLogger("") is the root logger


@contextlib.contextmanager
def silenced(loggers: tuple[str, ...], warning_categories: tuple[type[Warning], ...] = (Warning,),
             stdout: bool = False):
    """Within the block: these loggers at ERROR, these warning categories ignored, and with
    stdout=True print() output swallowed; every logger's level is restored afterwards."""
    logs = [logging.getLogger(name) for name in loggers]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), (contextlib.redirect_stdout(io.StringIO()) if stdout
                                         else contextlib.nullcontext()):
            for category in warning_categories:
                warnings.simplefilter("ignore", category)
            yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


@contextlib.contextmanager
def quiet_torch_export():
    # The dynamo exporter logs "torchvision is not installed" per op, and torch internals emit
    # Future/Deprecation warnings. Set after torch is imported: torch configures its loggers then.
    import torch  # noqa: F401

    with silenced(("torch.onnx",), (FutureWarning, DeprecationWarning)):
        yield
