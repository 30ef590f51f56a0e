"""Known messages of our dependencies that a user of a run cannot act on, filtered narrowly (exactly those).

torch (2.13) logs "is_fx_tracing will return true for both fx.symbolic_trace and torch.export ..." the first time a
class with torch.fx's `ProxyableClassMeta` is built; torchrec's `KeyedJaggedTensor` and `KeyedTensor` are such
classes, so every run that builds one (every batch, every collection's output) printed it. It is torch asking
torchrec to change a call, not something a run does wrong.
"""

from __future__ import annotations

import logging

IS_FX_TRACING = "is_fx_tracing will return true for both fx.symbolic_trace and torch.export"


class _DropKnown(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(IS_FX_TRACING)


_FILTER = _DropKnown()


def quiet_known_messages() -> None:
    """Drop the messages above from their loggers (idempotent)."""
    logger = logging.getLogger("torch.fx._symbolic_trace")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
