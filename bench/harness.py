"""Run one benchmark case: time (median, p20, p80) and peak memory of one provider, kernel, mode and shape.

Before its timing counts, every provider's loss on the case's inputs is checked against the float64 value of the
same inputs (:func:`true_loss`, computed once per input set in row chunks, so in bounded memory), within the
dtype's tolerance (:data:`RTOL`): a provider that computes something else fails its case instead of producing a
timing.

Every case writes rows to the session's results (one CSV across runs, Liger-Kernel's column set) whatever
happens: ``ok``, ``oom`` (it could not fit the memory budget, decided before running from a lower-bound estimate,
or an out-of-memory error while running), ``unavailable`` (the provider is not installed or cannot run this),
or ``wrong`` (its loss was not the true one).
"""

from __future__ import annotations

import csv
import functools
import gc
import os
import statistics
import subprocess
import time
from dataclasses import dataclass, field

import pytest
import torch

import dve_kernels
from dve_kernels import conventions, reference
from dve_kernels.memory import AllocationRecorder

from . import providers

MODES = ("forward", "backward", "full")
CSV_COLUMNS = ["kernel_name", "kernel_provider", "kernel_operation_mode", "metric_name", "metric_unit", "x_name",
               "x_value", "y_value_50", "y_value_20", "y_value_80", "channels", "batch", "dtype", "device", "status",
               "note", "version", "commit", "timestamp"]
#: The columns that identify a row of results.csv: a new run's row replaces an old one with the same key.
KEY = ("kernel_name", "kernel_provider", "kernel_operation_mode", "metric_name", "x_value", "channels", "batch",
       "dtype", "device")


def write_results(out: str, rows: list, plot: bool = True) -> str:
    """Merge ``rows`` into ``out/results.csv`` (a new row replaces an old one with the same key) and plot."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "results.csv")
    merged = {}
    if os.path.exists(path):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                merged[tuple(row[k] for k in KEY)] = row
    for row in rows:
        merged[tuple(str(row[k]) for k in KEY)] = row
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in merged.values():
            writer.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
    if plot:
        from .plot import plot_results
        plot_results(path, out)
    return path


def git_commit() -> str:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: str) -> str:
    """A folder-safe name of the machine: the GPU's model, or the CPU's model and core count."""
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = "unknown"
        try:
            with open("/proc/cpuinfo") as info:
                name = next(line.split(":", 1)[1] for line in info if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        name = f"cpu {name} x{os.cpu_count()}"
    words = "".join(c.lower() if c.isalnum() else " " for c in name.replace("(R)", "").replace("(TM)", "")).split()
    return "-".join(w for w in words if w not in ("cpu", "processor") or w == words[0])


@dataclass
class Settings:
    device: str
    budget_bytes: float
    seconds_per_case: float
    full: bool
    rows: list = field(default_factory=list)
    commit: str = field(default_factory=git_commit)

    out_dir: str = ""

    def flush(self) -> None:
        """Merge the rows so far into ``results.csv`` (after every case: an interrupted run keeps what it measured)."""
        if self.out_dir and self.rows:
            write_results(self.out_dir, self.rows, plot=False)

    def record(self, kernel, provider, mode, metric, unit, side, values, channels, batch, dtype, status, note=""):
        p50, p20, p80 = values if values else ("", "", "")
        self.rows.append({
            "kernel_name": kernel, "kernel_provider": provider, "kernel_operation_mode": mode,
            "metric_name": metric, "metric_unit": unit, "x_name": "resolution", "x_value": side,
            "y_value_50": p50, "y_value_20": p20, "y_value_80": p80, "channels": channels, "batch": batch,
            "dtype": str(dtype).replace("torch.", ""), "device": device_name(self.device), "status": status,
            "note": note, "version": dve_kernels.__version__, "commit": self.commit,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })


def _quantiles(samples):
    ordered = sorted(samples)

    def q(fraction):
        return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]

    return statistics.median(ordered), q(0.2), q(0.8)


def _synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _step(fn, inputs, mode, device):
    """One call of the measured work; for ``backward`` the forward runs first, outside the measured part."""
    params = providers.grad_inputs(inputs)
    if mode == "forward":
        return lambda: fn(**inputs)
    if mode == "full":
        return lambda: torch.autograd.grad(fn(**inputs), params)
    raise AssertionError(mode)


def peak_memory(fn, inputs, mode, device) -> float:
    """Peak bytes of tensors alive during one call (plus the inputs' own, which every provider shares)."""
    params = providers.grad_inputs(inputs)
    if torch.device(device).type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss = fn(**inputs)
        if mode != "forward":
            torch.autograd.grad(loss, params)
        del loss
        _synchronize(device)
        return torch.cuda.max_memory_allocated() - base
    with AllocationRecorder() as recorder:
        loss = fn(**inputs)
        if mode != "forward":
            torch.autograd.grad(loss, params)
        del loss
    return recorder.peak_bytes


def time_calls(fn, inputs, mode, device, seconds):
    """Median, p20, p80 in ms after a warm-up; CUDA events on the GPU, ``perf_counter`` on the CPU."""
    params = providers.grad_inputs(inputs)
    cuda = torch.device(device).type == "cuda"
    samples = []
    started = time.perf_counter()
    while len(samples) < 3 or (time.perf_counter() - started < seconds and len(samples) < 50):
        loss = fn(**inputs) if mode == "backward" else None
        _synchronize(device)
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        else:
            begin = time.perf_counter()
        if mode == "forward":
            fn(**inputs)
        elif mode == "backward":
            torch.autograd.grad(loss, params)
        else:
            torch.autograd.grad(fn(**inputs), params)
        if cuda:
            end.record()
            torch.cuda.synchronize()
            samples.append(begin.elapsed_time(end))
        else:
            samples.append((time.perf_counter() - begin) * 1e3)
    return _quantiles(samples), samples


def required_bytes(kernel, provider, side, channels, batch, dtype) -> float:
    """Peak tensor memory of one forward+backward, found without computing: the dense providers run on the
    ``meta`` device under the :class:`AllocationRecorder`; the others use the lower bound of
    :func:`providers.dense_bytes_estimate`."""
    if provider not in ("original", "dense", "dense-compiled"):
        return providers.dense_bytes_estimate(kernel, provider, side, channels, batch, torch.finfo(dtype).bits // 8)
    fn = providers.loss_function(kernel, "dense" if provider == "dense-compiled" else provider, "meta")
    inputs = providers.make_inputs(kernel, side, channels, batch, dtype, "meta")
    return peak_memory(fn, inputs, "full", "meta")


#: How far a provider's loss may be from the float64 value, relative to the sum of the magnitudes of its terms.
#: float32: every CPU provider was within 1.1e-7 at 20² and 35², C = 64 (a wrong scale or a missing term is off by
#: 1e-2 or more); 16-bit: a few units of the format's epsilon (2^-11, 2^-8), not yet measured on a GPU.
RTOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2, torch.float64: 1e-9}
#: Source rows per float64 chunk of :func:`true_loss`: B x rows x M float64 logits stay near 128 MiB.
_CHUNK_BYTES = 128 * 2**20


def _row_chunks(batch, n, m):
    rows = max(1, _CHUNK_BYTES // (8 * batch * m))
    return [slice(start, min(n, start + rows)) for start in range(0, n, rows)]


def _exchange_rows(query, aux):
    return torch.bmm(torch.softmax(torch.bmm(query, aux.transpose(1, 2)), dim=-1), aux)


_TRUTH: dict = {}  # key -> (value, magnitude): providers of one case share their inputs, hence their truth


def _true_loss(kernel, *tensors):
    """(value, magnitude) in float64: the loss, and the sum of the magnitudes of its terms (the error scale)."""
    if kernel == "exchange":
        src, aux, probe = tensors
        value = magnitude = 0.0
        for rows in _row_chunks(src.shape[0], src.shape[1], aux.shape[1]):
            terms = _exchange_rows(src[:, rows], aux) * probe[:, rows]
            value += terms.sum().item()
            magnitude += terms.abs().sum().item()
        return value, magnitude
    if kernel == "warp_loss":
        src, tgt, src_xy, tgt_xy = tensors
        rebuild = False
    else:
        feats, grid = tensors
        src, tgt, src_xy, tgt_xy = conventions.prepare_pairs(feats, grid, True)
        aux = conventions.gather_auxiliary(src, 1)
        rebuild = True
    total = 0.0
    for rows in _row_chunks(src.shape[0], src.shape[1], tgt.shape[1]):
        query = _exchange_rows(src[:, rows], aux) if rebuild else src[:, rows]
        total += reference.warp_loss_rows(query, tgt, src_xy[:, rows], tgt_xy, 0.5, 1.0).sum().item()
    value = total / (src.shape[0] * src.shape[1])
    return value, abs(value)  # every term is positive


def true_loss(kernel, inputs, key):
    """The float64 loss of ``inputs`` (what every provider must compute), cached by ``key``."""
    if key not in _TRUTH:
        with torch.no_grad():
            _TRUTH[key] = _true_loss(kernel, *[t.detach().to("cpu", torch.float64) for t in inputs.values()])
    return _TRUTH[key]


def check_loss(fn, inputs, kernel, provider, dtype, key):
    """Fail unless ``fn`` computes the true loss of ``inputs`` within ``RTOL[dtype]``; returns the relative error."""
    value = float(fn(**inputs).detach())  # with autograd on, as timed (no_grad would recompile torch.compile)
    truth, magnitude = true_loss(kernel, inputs, key)
    error = abs(value - truth) / max(magnitude, 1e-30)
    if not error <= RTOL[dtype]:  # NaN fails too
        raise WrongResult(f"{provider} computed {value!r} for {kernel}, the float64 value is {truth!r}: relative "
                          f"error {error:.3g} > {RTOL[dtype]:g} ({dtype})")
    return error


class WrongResult(AssertionError):
    """A provider's loss is not the true one: its timing does not count."""


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower() \
        or isinstance(error, MemoryError)


def run_case(benchmark, settings: Settings, kernel, provider, mode, side, channels, batch, dtype):
    """Measure one case and record it; skips (recorded) when the provider cannot run it."""
    device = settings.device
    record = functools.partial(settings.record, kernel, provider, mode)
    estimate = required_bytes(kernel, provider, side, channels, batch, dtype)
    if estimate > settings.budget_bytes:
        note = f"needs {providers.sizeof_fmt(estimate)} > budget {providers.sizeof_fmt(settings.budget_bytes)}"
        for metric, unit in (("time", "ms"), ("memory", "MiB")):
            record(metric, unit, side, None, channels, batch, dtype, "oom", note)
        settings.flush()
        pytest.skip(f"out of memory: {note}")
    try:
        fn = providers.loss_function(kernel, provider, device)
        inputs = providers.make_inputs(kernel, side, channels, batch, dtype, device)
        if provider in ("dense-compiled", "keops") or torch.device(device).type == "cuda":
            # warm-up outside the recorder: compilation (torch.compile, KeOps, Triton) happens here
            _step(fn, inputs, "full" if mode == "backward" else mode, device)()
            _synchronize(device)
        memory = peak_memory(fn, inputs, mode, device)  # on the CPU this call is also the warm-up
        error = check_loss(fn, inputs, kernel, provider, dtype, (kernel, side, channels, batch, dtype, device))
        (p50, p20, p80), samples = time_calls(fn, inputs, mode, device, settings.seconds_per_case)
    except providers.Unavailable as error:
        for metric, unit in (("time", "ms"), ("memory", "MiB")):
            record(metric, unit, side, None, channels, batch, dtype, "unavailable", str(error)[:200])
        pytest.skip(f"{provider} unavailable: {error}")
    except WrongResult as wrong:
        for metric, unit in (("time", "ms"), ("memory", "MiB")):
            record(metric, unit, side, None, channels, batch, dtype, "wrong", str(wrong)[:200])
        settings.flush()
        raise
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        for metric, unit in (("time", "ms"), ("memory", "MiB")):
            record(metric, unit, side, None, channels, batch, dtype, "oom", str(error)[:200])
        pytest.skip(f"out of memory while running: {error}")
    record("time", "ms", side, (p50, p20, p80), channels, batch, dtype, "ok")
    record("memory", "MiB", side, (memory / 2**20,) * 3, channels, batch, dtype, "ok")
    settings.flush()
    pairs = providers.pairs_per_call(kernel, side, batch)
    benchmark.extra_info.update({
        "kernel": kernel, "provider": provider, "mode": mode, "resolution": side, "N": side * side,
        "channels": channels, "batch": batch, "dtype": str(dtype), "device": device_name(device),
        "peak_memory_mib": memory / 2**20, "pairs_per_s": pairs / (p50 / 1e3), "version": dve_kernels.__version__,
        "commit": settings.commit, "median_ms": p50, "p20_ms": p20, "p80_ms": p80, "loss_relative_error": error,
    })
    # pytest-benchmark's own statistics come from the same samples (its timer cannot see CUDA events).
    samples_iter = iter(samples)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.stats.stats.data[:] = [s / 1e3 for s in samples_iter]
    return p50, memory



#: Providers whose calls take tens of seconds on a 2-core CPU are kept to the small sizes of the default grid.
SLOW_ON_CPU = {"original": 35, "keops": 35}


def cases(kernel: str, full: bool, device: str):
    """The grid of ``(provider, mode, side, channels, batch, dtype)`` for one kernel.

    Default (about 12 minutes on a 2-core CPU: the cases of the former, 20-minute default that remain; README):
    forward+backward at 35², 48² and 64² with C = 64 (DVE: B = 8; the single ops: B = 4) for every provider (on
    the CPU the per-pair ``original`` loop and ``keops`` only at 35²: their calls take 5 to 25 seconds there),
    forward and backward alone at 48², C in {3, 16} at 48² for the single ops, and the fused provider alone at 96².
    ``full``: 35² to 256², every mode and C, every provider everywhere, fp16/bf16 on the GPU.
    """
    cuda = torch.device(device).type == "cuda"
    batch = 8 if kernel == "dve" else 4
    dtypes = [torch.float32] + ([torch.float16, torch.bfloat16] if cuda and full else [])
    sides = (35, 48, 64, 96, 128, 192, 256) if full else (35, 48, 64)
    chosen = []
    for dtype in dtypes:
        for provider in providers.PROVIDERS:
            largest = sides[-1] if (full or cuda) else SLOW_ON_CPU.get(provider, sides[-1])
            for side in sides:
                if side > largest:
                    continue
                for mode in (MODES if full else ("full",)):
                    chosen.append((provider, mode, side, 64, batch, dtype))
            if provider in SLOW_ON_CPU and not (full or cuda):
                continue
            chosen += [(provider, mode, 48, 64, batch, dtype) for mode in ("forward", "backward")]
            if full or kernel != "dve":
                chosen += [(provider, "full", 48, channels, batch, dtype) for channels in (3, 16)]
        if not full:
            chosen.append(("dve_kernels", "full", 96, 64, batch, dtype))
    return list(dict.fromkeys(chosen))


def case_id(case) -> str:
    provider, mode, side, channels, batch, dtype = case
    return f"{provider}-{mode}-{side}x{side}-C{channels}-B{batch}-{str(dtype).replace('torch.', '')}"
