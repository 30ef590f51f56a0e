"""Recommendation models that take any embedding collection as an argument (imported as embtables.models)."""

from embtables.models.din import DIN, DINHead
from embtables.models.dlrm import DLRM, DLRMHead
from embtables.models.layers import Dice, output_dims

__all__ = ["DIN", "DINHead", "DLRM", "DLRMHead", "Dice", "output_dims"]
