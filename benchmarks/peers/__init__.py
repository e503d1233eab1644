"""One module per peer. Each has ``train(w, data, params0)``, which builds the workload's network
from the shared initial parameters, times its setup (declaration to the first trained step, on a
throwaway copy) and every measured round, and returns ``{"setup_s", "round_s", "params"}``;
autodiff peers also have ``grads(w, params, X, Y)`` in float64, compared against symnet's, and a
peer that cannot express a workload has ``applicable(w)`` returning why not."""

PEERS = {
    "symnet": "benchmarks.peers.symnet_peer",
    "numba": "benchmarks.peers.hand_numba",
    "numpy": "benchmarks.peers.numpy_peer",
    "torch": "benchmarks.peers.torch_peer",
    "jax": "benchmarks.peers.jax_peer",
    "jax-scan": "benchmarks.peers.jax_scan_peer",
    "autograd": "benchmarks.peers.autograd_peer",
    "pytensor": "benchmarks.peers.pytensor_peer",
    "pytensor-numba": "benchmarks.peers.pytensor_numba_peer",
    "sklearn": "benchmarks.peers.sklearn_peer",
}
