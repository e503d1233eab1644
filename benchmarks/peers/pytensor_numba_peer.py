"""PyTensor with ``mode="NUMBA"``: the same graph as the default-mode peer, compiled to numba."""

from . import pytensor_peer
from .pytensor_peer import applicable, grads, train

pytensor_peer.MODE = "NUMBA"

__all__ = ["applicable", "grads", "train"]
