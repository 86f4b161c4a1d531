"""Speed and memory of the exchange reconstruction (eq. 5), every provider on the same inputs."""

from .harness import run_case

KERNEL = "exchange"


def test_exchange(benchmark, bench_settings, case):
    run_case(benchmark, bench_settings, KERNEL, *case)
