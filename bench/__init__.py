"""Benchmarks: memory and speed of dve_kernels against the dense formulation and its peers (`pytest bench/`)."""
