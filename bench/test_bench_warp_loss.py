"""Speed and memory of the warp loss (eq. 3), every provider on the same inputs."""

from .harness import run_case

KERNEL = "warp_loss"


def test_warp_loss(benchmark, bench_settings, case):
    run_case(benchmark, bench_settings, KERNEL, *case)
