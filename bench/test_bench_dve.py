"""Speed and memory of the whole DVE loss from (feats, grid) (eq. 6), every provider on the same inputs."""

from .harness import run_case

KERNEL = "dve"


def test_dve(benchmark, bench_settings, case):
    run_case(benchmark, bench_settings, KERNEL, *case)
