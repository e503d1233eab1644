"""symnet's benchmarks: the design's workloads, run by symnet and by its peers with the same
maths, each (workload, peer) in its own process. Run ``python -m benchmarks.run --help``."""
