"""`pytest bench/`: options, and the results every run leaves under ``bench/results/local/<device>/`` (git ignores it;
committing results is an explicit step: ``--bench-out bench/results/<device>``).

Options:
  --bench-full           the full grid (all resolutions up to 256², C in {3, 16, 64}, fp16/bf16 on GPU);
                         the default grid takes about 12 minutes on a 2-core CPU (README, Benchmarks)
  --bench-device DEV     cpu or cuda (default: cuda when available)
  --bench-budget-gib G   memory budget for running a case and for "largest trainable resolution"
                         (default 16 on GPU, 8 on CPU)
  --bench-seconds S      time spent sampling each case (default 1.0)
  --bench-out DIR        where results go (default bench/results/local/<device>, ignored by git)

Writes: ``benchmark-<time>.json`` (pytest-benchmark, one per run, with device, dtype, shape, provider, version and commit in
``extra_info``), ``results.csv`` (one CSV across runs: rows of a new run replace those with the same key),
and the plots of ``bench/plot.py``.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from .harness import Settings, device_name, write_results

#: Where a run writes by default: a folder git ignores, so that `make bench` leaves the checkout clean.
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "local")


def pytest_addoption(parser):
    group = parser.getgroup("dve_kernels benchmarks")
    group.addoption("--bench-full", action="store_true", help="run the full grid")
    group.addoption("--bench-device", default="cuda" if torch.cuda.is_available() else "cpu")
    group.addoption("--bench-budget-gib", type=float, default=None)
    group.addoption("--bench-seconds", type=float, default=1.0)
    group.addoption("--bench-out", default=None)


def _out_dir(config) -> str:
    return config.getoption("bench_out") or os.path.join(RESULTS, device_name(config.getoption("bench_device")))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if not hasattr(config.option, "benchmark_json") or config.option.benchmark_json or config.option.collectonly:
        return
    out = _out_dir(config)
    os.makedirs(out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")  # one JSON per run; results.csv merges them all
    config.option.benchmark_json = open(os.path.join(out, f"benchmark-{stamp}.json"), "wb")  # noqa: SIM115


@pytest.fixture(scope="session")
def bench_settings(request):
    config = request.config
    device = config.getoption("bench_device")
    budget = config.getoption("bench_budget_gib") or (16.0 if device.startswith("cuda") else 8.0)
    settings = Settings(device=device, budget_bytes=budget * 2**30,
                        seconds_per_case=config.getoption("bench_seconds"), full=config.getoption("bench_full"),
                        out_dir=_out_dir(config))
    yield settings
    if settings.rows:
        write_results(settings.out_dir, settings.rows)


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        from .harness import case_id, cases
        kernel = metafunc.module.KERNEL
        grid = cases(kernel, metafunc.config.getoption("bench_full"), metafunc.config.getoption("bench_device"))
        metafunc.parametrize("case", grid, ids=[case_id(c) for c in grid])
