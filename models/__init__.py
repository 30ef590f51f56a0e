"""Recommendation models that take any embedding collection as an argument (imported as embtables.models).

    dlrm.py      DLRM and its head: bottom MLP, dot interaction, top MLP
    din.py       DIN and its head: target attention over a behaviour history (Dice or PReLU units)
    layers.py    shared building blocks: MLPs, Dice, reading an embedding collection's output contract

May import: the core library (`embtables`) and each other; never `embtables.app`, `embtables.cli` or
`embtables.datasets` (a model takes tensors and a collection, not a data folder).
"""

from embtables.models.din import DIN, DINHead
from embtables.models.dlrm import DLRM, DLRMHead
from embtables.models.layers import Dice, output_dims

__all__ = ["DIN", "DINHead", "DLRM", "DLRMHead", "Dice", "output_dims"]
