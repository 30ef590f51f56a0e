"""Known messages of our dependencies that a user of a run cannot act on, filtered narrowly (exactly those).

torch (2.13) logs "is_fx_tracing will return true for both fx.symbolic_trace and torch.export ..." the first time a
class with torch.fx's `ProxyableClassMeta` is built; torchrec's `KeyedJaggedTensor` and `KeyedTensor` are such
classes, so every run that builds one (every batch, every collection's output) printed it. It is torch asking
torchrec to change a call, not something a run does wrong.

On several processes (`et.shard`), torchrec 1.8's planner logs that a `Topology` built directly should come from
its `TopologyFactory` (whose hardware detection has nothing to add to a CPU or a given world size), and its
data-parallel wrapper passes DDP a deprecated argument (`broadcast_buffers`), which DDP warns about.
"""

from __future__ import annotations

import logging
import warnings

IS_FX_TRACING = "is_fx_tracing will return true for both fx.symbolic_trace and torch.export"
TOPOLOGY = "The topology was constructed directly rather than via TopologyFactory"
BROADCAST_BUFFERS = "`broadcast_buffers` is deprecated"
LOGGERS = {"torch.fx._symbolic_trace": IS_FX_TRACING, "torchrec.distributed.planner.types": TOPOLOGY}


class _DropKnown(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(tuple(LOGGERS.values()))


_FILTER = _DropKnown()


def quiet_known_messages() -> None:
    """Drop the messages above from their loggers (idempotent)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", message=BROADCAST_BUFFERS, category=FutureWarning,
                            module="torchrec.distributed.model_parallel")
