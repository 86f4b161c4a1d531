"""One command for the day a GPU is available: ``python -m bench.gpu_check --out DIR`` (``make gpu-check OUT=DIR``).

On a CUDA machine (written for torch 2.11 + Triton 3.6 preinstalled, no network, after
``pip install --no-deps --no-build-isolation -e .``) it runs, inside a time budget (``--budget``, 390 s by default,
so that with the editable install and the interpreter start-up the whole command stays under 8 minutes):

1. ``warmup``: JIT-compiles every kernel variant the later sections launch, in parallel worker processes on tiny
   inputs (Triton's on-disk cache then serves the main process), so compile time is spread over the CPU cores;
2. ``accuracy``: float16 / bfloat16 / float32 exchange and warp loss (value and both gradients) against the float64
   dense reference with the accuracy rule of tests/_tolerance.py (:func:`error_bound`);
3. ``determinism``: the DVE chain twice, bitwise equal outputs and gradients (bfloat16, float32);
4. ``memory``: forward + backward at N = M = 128², peak ``torch.cuda.max_memory_allocated`` against the size of
   one dense ``N x M`` float32 matrix;
5. ``kernels``: (u, v) pairs/s of each of the six kernels (bf16, float32; C = 64, N = M = 4096, B = 16), beside the
   static report's modelled H100 bound, raw and calibrated (``bench/results/static/kernel_report.json``);
6. ``dve``: the DVE loss forward + backward, the drop-in against dense (``bench.providers``), at 48², 64², 128²,
   with peak memory (a dense out-of-memory is recorded as ``oom``): bf16, and float32 under both matmul precisions
   (``dve_kernels``: "highest", IEEE dots; ``dve_kernels-tf32``: "high", TF32 dots).

Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` (GPU, driver, torch, Triton named at the top). A section
that would not fit in the remaining budget is recorded as skipped; an exception in one is recorded and the others
still run. Exit status: 0 when every section ran and every check passed, 1 otherwise, 2 without CUDA (one line).

``--plan`` prints what would run and checks every import and the model file, without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback

DEFAULT_BUDGET_S = 390.0
# Rough cost of each section on an H100/H200-class GPU, seconds (compiles in ``warmup``); a section starts only
# when its estimate fits in what is left of the budget.
SECTION_ESTIMATES_S = {"warmup": 120.0, "accuracy": 45.0, "determinism": 10.0, "memory": 10.0, "kernels": 40.0,
                       "dve": 60.0}
SECTIONS = tuple(SECTION_ESTIMATES_S)
KERNEL_SHAPE = {"batch": 16, "n": 4096, "m": 4096, "channels": 64}
# (dtype, float32 dot algorithm): float32 under "highest" (IEEE FMA dots) and "high" (single-pass TF32) matmul
# precision, see fp32_dot
KERNEL_VARIANTS = (("bfloat16", None), ("float32", "ieee"), ("float32", "tf32"))
ACCURACY_VARIANTS = (("float16", None), ("bfloat16", None), ("float32", "ieee"))  # "tf32" is outside the rule
# (batch, N, M, C): C = C_PAD and a ragged C; odd N and M, N != M
ACCURACY_SHAPES = ((2, 1024, 1025, 64), (1, 257, 311, 59))
ACCURACY_POWS = (0.5, 1.0, 2.0, 0.7)  # every POW_MODE code path; the ragged shape only at the default 0.5
DVE_SIDES = (48, 64, 128)
DVE_BATCH = 8
DVE_DTYPES = ("bfloat16", "float32")
MEMORY_SIDE = 128
PASSES = ("exchange_fwd", "exchange_bwd_query", "exchange_bwd_aux", "warp_loss_fwd", "warp_loss_bwd_src", "warp_loss_bwd_tgt")


# ------------------------------------------------------------------------------------- coupling to dve_kernels.ops
def ops_adapter():
    """The one place that knows ``dve_kernels.ops``'s launcher names and its Triton kernels' names.

    Returns ``(launchers, kernel_names)``: ``launchers`` maps "exchange" / "warp" to ``(forward, backward)`` with
    ``forward(a, b, *extra) -> (out, lse)`` and ``backward(grad, a, b, *extra, out, lse) -> grads``; ``kernel_names``
    maps each pass of :data:`PASSES` to the name its JIT function has (what the CUDA profiler shows)."""
    from dve_kernels import ops

    launchers = {
        "exchange": (lambda q, a, scale: ops.exchange_forward(q, a, scale),
                     lambda g, q, a, scale, out, lse: ops.exchange_backward(g, q, a, out, lse, scale)),
        "warp": (lambda s, t, sxy, txy, pow, scale: ops.warp_loss_forward(s, t, sxy, txy, pow, scale),
                 lambda g, s, t, sxy, txy, pow, scale, rows, lse:
                 ops.warp_loss_backward(g, s, t, sxy, txy, rows, lse, pow, scale)),
    }
    kernel_names = {}
    for spec in ops.kernel_specializations():  # the JIT function behind each pass, whatever it is called
        pass_name = next((p for p in sorted(PASSES, key=len, reverse=True) if spec.name.startswith(p + "_")), None)
        if pass_name and pass_name not in kernel_names:
            kernel_names[pass_name] = getattr(spec.kernel, "__name__", None) or spec.kernel.fn.__name__
    missing = set(PASSES) - set(kernel_names)
    if missing:
        raise RuntimeError(f"dve_kernels.ops.kernel_specializations() lists no kernel for {sorted(missing)}")
    return launchers, kernel_names


#: torch.set_float32_matmul_precision for each float32 dot algorithm of the kernels (dve_kernels/precision.py).
MATMUL_PRECISION = {None: "highest", "ieee": "highest", "tf32": "high"}


@contextlib.contextmanager
def fp32_dot(choice):
    """Run float32 launches with dot algorithm ``choice`` (None, "ieee" or "tf32"), chosen the PyTorch way: through
    ``torch.set_float32_matmul_precision`` (restored afterwards)."""
    import torch

    if choice not in MATMUL_PRECISION:
        raise ValueError(f"float32 dot algorithm {choice!r}: the kernels have {sorted(k for k in MATMUL_PRECISION if k)}")
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(MATMUL_PRECISION[choice])
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


# ------------------------------------------------------------------------------------------------- time budget
class Budget:
    """Seconds left of ``total``, on ``clock`` (injectable for tests)."""

    def __init__(self, total: float, clock=time.monotonic):
        self.total, self.clock, self.start = float(total), clock, clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return self.total - self.elapsed()

    def allows(self, estimate: float) -> bool:
        return estimate <= self.remaining()


def run_sections(sections, budget: Budget, estimates=SECTION_ESTIMATES_S) -> dict:
    """Run ``(name, fn)`` in order while the budget allows; ``{name: record}`` with status ok / failed / skipped.

    ``fn()`` returns ``(passed, data)``. An exception fails that section only (its traceback tail is kept)."""
    records = {}
    for name, fn in sections:
        estimate = estimates.get(name, 0.0)
        if not budget.allows(estimate):
            records[name] = {"status": "skipped", "reason": f"time budget: {budget.remaining():.0f} s left, "
                                                             f"section estimated at {estimate:.0f} s"}
            continue
        start = budget.clock()
        try:
            passed, data = fn()
            records[name] = {"status": "ok" if passed else "failed", "data": data}
        except Exception as error:  # recorded; the other sections still run
            records[name] = {"status": "failed", "error": f"{type(error).__name__}: {error}"[:2000],
                             "traceback": traceback.format_exc()[-3000:]}
        records[name]["seconds"] = round(budget.clock() - start, 1)
        print(f"gpu_check: {name}: {records[name]['status']} ({records[name]['seconds']} s, "
              f"{budget.remaining():.0f} s left)", flush=True)
    return records


# --------------------------------------------------------------------------------------------------- accuracy
def error_bound(exact, dense_runs, dtype_name: str) -> float:
    """The accuracy rule of docs/contract.md section 4, as the tests state it (tests/_tolerance.py): ``dense_runs``
    are the dense computation's results at the input and its one-ulp neighbours."""
    from tests import _tolerance

    return _tolerance.tolerance(exact, dense_runs, _dtype(dtype_name))


def _dtype(name: str):
    import torch

    return getattr(torch, name)


def _features(batch, rows, channels, device, generator, normalize=True):
    """float64 embeddings; ``normalize``: unit length x 20 as the drop-in's normalize_vectors=True."""
    import torch

    x = torch.randn(batch, rows, channels, dtype=torch.float64, generator=generator).to(device)
    return 20 * x / x.norm(dim=-1, keepdim=True) if normalize else x


def accuracy_case(op: str, shape, dtype_name: str, pow: float = 0.5, dot=None, device: str = "cuda",
                  backend: str = "triton", seed: int = 0, normalize: bool = True) -> dict:
    """One op's value and gradients, fused (public API, ``backend``; float32 dots by ``dot``, see :func:`fp32_dot`)
    and dense in ``dtype``, against dense float64."""
    import torch

    import dve_kernels
    from dve_kernels import reference

    batch, n, m, c = shape
    generator = torch.Generator().manual_seed(seed)
    a, b = _features(batch, n, c, device, generator, normalize), _features(batch, m, c, device, generator, normalize)
    if op == "exchange":
        upstream = torch.randn(batch, n, c, dtype=torch.float64, generator=generator).to(device)

        def dense(x, y):
            return reference.exchange(x, y, scale=1.0)

        def fused(x, y):
            return dve_kernels.exchange(x, y, scale=1.0, backend=backend)
    else:
        src_xy = (torch.rand(batch, n, 2, dtype=torch.float64, generator=generator) * 64).to(device)
        tgt_xy = (torch.rand(batch, m, 2, dtype=torch.float64, generator=generator) * 64).to(device)
        upstream = (torch.rand(batch, n, dtype=torch.float64, generator=generator) + 0.5).to(device)

        from dve_kernels.precision import accumulate_dtype as coords

        def dense(x, y):
            return reference.warp_loss_rows(x, y, src_xy.to(coords(x)), tgt_xy.to(coords(x)), pow, 1.0)

        def fused(x, y):
            return dve_kernels.warp_loss(x, y, src_xy, tgt_xy, pow=pow, reduction="none", backend=backend)

    def run_on(fn, tensors):
        inputs = [t.detach().requires_grad_(True) for t in tensors]
        out = fn(*inputs)
        grads = torch.autograd.grad(out, inputs, upstream.to(out.dtype))
        return [out.detach().double()] + [g.detach().double() for g in grads]

    def run(fn, dtype):
        return run_on(fn, [t.to(dtype) for t in (a, b)])

    from tests._tolerance import neighbourhood

    low = _dtype(dtype_name)
    a, b = a.to(low), b.to(low)  # the values the dtype holds: every computation sees the same inputs
    exact = run(dense, torch.float64)
    neighbours = neighbourhood([a.cpu(), b.cpu()], generator)
    dense_runs = [run_on(dense, [x.to(device) for x in nbr]) for nbr in neighbours]
    with fp32_dot(dot):
        fused_low = run(fused, low)
    checks = {}
    for i, (name, f, e) in enumerate(zip(("value", "grad_a", "grad_b"), fused_low, exact)):
        fused_error = (f - e).abs().max().item() if torch.isfinite(f).all() else float("inf")
        dense_error = max((r[i] - e).abs().max().item() for r in dense_runs)
        bound = error_bound(e, [r[i] for r in dense_runs], dtype_name)
        checks[name] = {"fused_error": fused_error, "dense_error": dense_error, "bound": bound,
                        "passed": fused_error <= bound}
    return {"op": op, "shape": list(shape), "dtype": dtype_name, "pow": pow if op == "warp" else None, "dot": dot,
            "checks": checks, "passed": all(c["passed"] for c in checks.values())}


def accuracy_cases():
    """``(op, shape, dtype, pow, fp32 dot)`` of the accuracy section."""
    cases = []
    for dtype, dot in ACCURACY_VARIANTS:
        for shape in ACCURACY_SHAPES:
            cases.append(("exchange", shape, dtype, 0.5, dot))
            for pow in ACCURACY_POWS if shape == ACCURACY_SHAPES[0] else (0.5,):
                cases.append(("warp", shape, dtype, pow, dot))
    return cases


# ----------------------------------------------------------------------------------------------------- warm-up
def warmup_cases():
    """``(op, dtype, C, pow, fp32 dot)`` for every kernel variant the sections launch (a compile per kernel each;
    the determinism, memory and DVE sections use the default float32 dot)."""
    seen = [(op, dtype, shape[3], pow, dot) for op, shape, dtype, pow, dot in accuracy_cases()]
    for dtype, dot in KERNEL_VARIANTS + tuple((d, None) for d in DVE_DTYPES + ("float32",)):
        seen += [("exchange", dtype, 64, 0.5, dot), ("warp", dtype, 64, 0.5, dot)]
    return sorted(set(seen), key=str)


def _warm(case) -> str:
    """Compile one variant by running it forward + backward on tiny CUDA inputs (a worker process)."""
    op, dtype_name, channels, pow, dot = case
    accuracy_case(op, (1, 37, 45, channels), dtype_name, pow, dot)
    return f"{op} {dtype_name} C={channels} pow={pow} dot={dot}"


def warmup(jobs: int):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    cases = warmup_cases()
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(cases))),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        done = list(pool.map(_warm, cases))
    return True, {"variants": done, "jobs": jobs}


# ------------------------------------------------------------------------------------------------- measurement
def cuda_time_ms(fn, repeats: int = 20, warmup_calls: int = 3) -> dict:
    """Median / min / max of ``fn()`` in ms by CUDA events, after ``warmup_calls`` calls."""
    import torch

    for _ in range(warmup_calls):
        fn()
    samples = []
    for _ in range(repeats):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(begin.elapsed_time(end))
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "max_ms": max(samples),
            "repeats": repeats}


def kernel_times_ms(fn, names, calls: int = 5) -> dict:
    """Average device time per call of each named kernel (substring of the profiler's kernel name)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    totals = dict.fromkeys(names, 0.0)
    for event in prof.key_averages():
        device_us = getattr(event, "device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "cuda_time_total", 0.0)
        for name in names:
            if name in event.key:
                totals[name] += device_us
    return {name: total / 1e3 / calls for name, total in totals.items() if total > 0}


def pairs_per_second(batch: int, n: int, m: int, milliseconds: float) -> float:
    return batch * n * m / (milliseconds * 1e-3)


def kernels(model_rows):
    """(u, v) pairs/s of each pass at :data:`KERNEL_SHAPE`, per kernel (profiler) and per launcher (CUDA events)."""
    import torch

    launchers, kernel_names = ops_adapter()
    batch, n, m, c = (KERNEL_SHAPE[k] for k in ("batch", "n", "m", "channels"))
    generator = torch.Generator().manual_seed(0)
    rows = []
    for dtype_name, dot in KERNEL_VARIANTS:
        dtype = _dtype(dtype_name)
        a = _features(batch, n, c, "cuda", generator).to(dtype)
        b = _features(batch, m, c, "cuda", generator).to(dtype)
        xy_a = torch.rand(batch, n, 2, device="cuda") * 64
        xy_b = torch.rand(batch, m, 2, device="cuda") * 64
        fwd, bwd = launchers["exchange"]
        wfwd, wbwd = launchers["warp"]
        with fp32_dot(dot):
            out, lse = fwd(a, b, 1.0)
            wrows, wlse = wfwd(a, b, xy_a, xy_b, 0.5, 1.0)
        grad_out = torch.randn_like(out)
        calls = {"exchange_fwd": (lambda: fwd(a, b, 1.0), ("exchange_fwd",)),
                 "exchange_bwd": (lambda: bwd(grad_out, a, b, 1.0, out, lse),
                                  ("exchange_bwd_query", "exchange_bwd_aux"))}
        grad_rows = torch.rand_like(wrows) + 0.5
        calls["warp_loss_fwd"] = (lambda: wfwd(a, b, xy_a, xy_b, 0.5, 1.0), ("warp_loss_fwd",))
        calls["warp_loss_bwd"] = (lambda: wbwd(grad_rows, a, b, xy_a, xy_b, 0.5, 1.0, wrows, wlse),
                             ("warp_loss_bwd_src", "warp_loss_bwd_tgt"))
        for launcher, (fn, passes) in calls.items():
            with fp32_dot(dot):
                timing = cuda_time_ms(fn)
                try:
                    per_kernel = kernel_times_ms(fn, [kernel_names[p] for p in passes])
                except Exception as error:  # the profiler is optional: the launcher's time still stands
                    per_kernel, timing["profiler_error"] = {}, f"{type(error).__name__}: {error}"[:300]
            for pass_name in passes:
                kernel_ms = per_kernel.get(kernel_names[pass_name])
                measured_ms = kernel_ms if kernel_ms is not None else timing["median_ms"]
                rows.append(kernel_row(pass_name, dtype_name, dot, measured_ms, "kernel" if kernel_ms is not None
                                       else f"launcher {launcher} (both kernels)", model_rows, launcher_ms=timing))
    return True, {"shape": KERNEL_SHAPE, "rows": rows}


def kernel_row(pass_name, dtype_name, dot, measured_ms, timed, model_rows, launcher_ms=None) -> dict:
    """One row of the kernel table: measured pairs/s beside the static report's model for ``<pass>_<dtype>_c64``."""
    batch, n, m = KERNEL_SHAPE["batch"], KERNEL_SHAPE["n"], KERNEL_SHAPE["m"]
    spec_name = model_spec_name(pass_name, dtype_name, KERNEL_SHAPE["channels"], dot)
    model = model_rows.get(spec_name, {})
    measured = pairs_per_second(batch, n, m, measured_ms)
    row = {"pass": pass_name, "dtype": dtype_name, "dot": dot, "spec": spec_name, "ms": measured_ms, "timed": timed,
           "pairs_per_s": measured, "modelled_pairs_per_s": model.get("modelled_pairs_per_s"),
           "calibrated_pairs_per_s": model.get("calibrated_pairs_per_s"), "limited_by": model.get("limited_by")}
    if launcher_ms is not None:
        row["launcher"] = launcher_ms
    if row["calibrated_pairs_per_s"]:
        row["measured_over_calibrated"] = measured / row["calibrated_pairs_per_s"]
    return row


def model_spec_name(pass_name: str, dtype_name: str, channels: int, dot=None) -> str:
    """The static report's row for a pass; float32 by its dot algorithm (None: the default, IEEE)."""
    short = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}[dtype_name]
    suffix = "_pow0.5" if pass_name.startswith("warp") else ""
    return f"{pass_name}_{short}_c{channels}{suffix}"


def load_model_rows(path=None) -> dict:
    """The sm_90 rows of the committed static kernel report, by name, with their calibrated bound."""
    from . import kernel_report

    path = path or os.path.join(kernel_report.OUT_DIR, "kernel_report.json")
    with open(path) as handle:
        rows = json.load(handle)
    return {row["name"]: {**row, "calibrated_pairs_per_s": kernel_report.calibrated(row.get("modelled_pairs_per_s"))}
            for row in rows if row.get("arch") == 90 and "error" not in row}


def determinism():
    import torch

    import dve_kernels

    results = {}
    generator = torch.Generator().manual_seed(1)
    for dtype_name, dot in KERNEL_VARIANTS:
        src, tgt, aux = (_features(4, 2304, 64, "cuda", generator).to(_dtype(dtype_name)).requires_grad_(True)
                         for _ in range(3))
        src_xy = torch.rand(4, 2304, 2, device="cuda") * 96
        tgt_xy = torch.rand(4, 2304, 2, device="cuda") * 96

        def run():
            rebuilt = dve_kernels.exchange(src, aux, backend="triton")
            loss = dve_kernels.warp_loss(rebuilt, tgt, src_xy, tgt_xy, backend="triton")
            return [loss.detach()] + list(torch.autograd.grad(loss, (src, tgt, aux)))

        with fp32_dot(dot):
            first, second = run(), run()
        results[dtype_name + (f" {dot}" if dot else "")] = all(torch.equal(x, y) for x, y in zip(first, second))
    return all(results.values()), {"bitwise_equal": results}


def memory():
    """Forward + backward at N = M = 128² (B = 2, C = 64, float32): the peak against one dense N x M matrix."""
    import torch

    import dve_kernels

    batch, n, c = 2, MEMORY_SIDE * MEMORY_SIDE, 64
    generator = torch.Generator().manual_seed(2)
    src, tgt, aux = (_features(batch, n, c, "cuda", generator).float().requires_grad_(True) for _ in range(3))
    xy = torch.rand(batch, n, 2, device="cuda") * 512
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = dve_kernels.warp_loss(dve_kernels.exchange(src, aux, backend="triton"), tgt, xy, xy, backend="triton")
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    dense_matrix = batch * n * n * 4
    feature_bytes = batch * n * c * 4
    data = {"side": MEMORY_SIDE, "batch": batch, "channels": c, "peak_extra_bytes": extra,
            "one_dense_matrix_bytes": dense_matrix, "feature_bytes": feature_bytes}
    # nothing may reach N·M elements; in practice the extra is a few feature-sized buffers
    return extra < min(dense_matrix / 4, 12 * feature_bytes), data


#: The drop-in under each float32 matmul precision: provider name -> float32 dot algorithm (see fp32_dot).
FUSED_DVE = {"dve_kernels": "ieee", "dve_kernels-tf32": "tf32"}


def dve():
    """DVE loss forward + backward, fused against dense, at :data:`DVE_SIDES` (B = 8, C = 64)."""
    import gc

    import torch

    from . import providers

    rows = []
    for dtype_name in DVE_DTYPES:
        for side in DVE_SIDES:
            for provider in tuple(FUSED_DVE) + ("dense",):
                if provider == "dve_kernels-tf32" and dtype_name != "float32":
                    continue
                row = {"dtype": dtype_name, "side": side, "batch": DVE_BATCH, "channels": 64, "provider": provider}
                precision = fp32_dot(FUSED_DVE.get(provider, "ieee"))
                try:
                    precision.__enter__()
                    fn = providers.loss_function("dve", provider.removesuffix("-tf32"), "cuda")
                    inputs = providers.make_inputs("dve", side, 64, DVE_BATCH, _dtype(dtype_name), "cuda")
                    params = providers.grad_inputs(inputs)
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    torch.autograd.grad(fn(**inputs), params)
                    torch.cuda.synchronize()
                    row["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
                    row.update(cuda_time_ms(lambda: torch.autograd.grad(fn(**inputs), params), repeats=5,
                                            warmup_calls=1))
                    row["status"] = "ok"
                except torch.OutOfMemoryError as error:
                    row.update(status="oom", note=str(error).splitlines()[0][:200])
                finally:
                    precision.__exit__(None, None, None)
                    inputs = params = fn = None
                    gc.collect()
                    torch.cuda.empty_cache()
                rows.append(row)
    for row in rows:
        dense = next((r for r in rows if r["provider"] == "dense" and r["side"] == row["side"]
                      and r["dtype"] == row["dtype"]), None)
        if row["provider"] in FUSED_DVE and row["status"] == "ok" and dense and dense["status"] == "ok":
            row["speedup_vs_dense"] = dense["median_ms"] / row["median_ms"]
    return all(r["status"] == "ok" for r in rows if r["provider"] in FUSED_DVE), {"rows": rows}


# ------------------------------------------------------------------------------------------------- environment
def environment() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "host": platform.node(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError as error:
        info["triton"] = f"missing ({error})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"sm_{props.major}{props.minor}", sms=props.multi_processor_count,
                    gpu_memory_bytes=props.total_memory)
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError, IndexError):
        info["driver"] = "unknown"
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        timeout=10, cwd=os.path.dirname(os.path.dirname(
                                            os.path.abspath(__file__)))).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        info["commit"] = "unknown"
    return info


# ------------------------------------------------------------------------------------------------------ report
def _e(value):
    return "" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# gpu_check: {env.get('gpu', 'no GPU')}", "",
             f"GPU {env.get('gpu', '?')} ({env.get('capability', '?')}, {env.get('sms', '?')} SMs), driver "
             f"{env.get('driver', '?')}, torch {env.get('torch', '?')} (CUDA {env.get('cuda_runtime', '?')}), "
             f"Triton {env.get('triton', '?')}, commit {env.get('commit', '?')}, {env.get('time_utc', '')}; "
             f"{result['elapsed_s']:.0f} s of a {result['budget_s']:.0f} s budget. Overall: "
             f"**{'passed' if result['passed'] else 'FAILED'}**.", "", "| section | status | seconds | note |",
             "|---|---|---|---|"]
    for name in SECTIONS:
        record = result["sections"].get(name, {"status": "not run"})
        note = record.get("reason") or record.get("error", "")
        lines.append(f"| {name} | {record['status']} | {_e(record.get('seconds'))} | {note[:160]} |")
    sections = result["sections"]
    accuracy = sections.get("accuracy", {}).get("data")
    if accuracy:
        lines += ["", "## Accuracy against float64 (max abs error; bound: tests/_tolerance.py, 4 x the dense error over the input's "
                  "one-ulp neighbourhood, or the floor)", "",
                  "| op | shape B,N,M,C | dtype | fp32 dot | pow | value fused / dense / bound | grad a | grad b | pass |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for case in accuracy["cases"]:
            cells = [" / ".join(_e(c[k]) for k in ("fused_error", "dense_error", "bound"))
                     for c in (case["checks"][k] for k in ("value", "grad_a", "grad_b"))]
            lines.append(f"| {case['op']} | {','.join(map(str, case['shape']))} | {case['dtype']} | "
                         f"{case.get('dot') or ''} | {_e(case['pow'])} | {' | '.join(cells)} | {'yes' if case['passed'] else '**no**'} |")
    for name in ("determinism", "memory"):
        data = sections.get(name, {}).get("data")
        if data:
            lines += ["", f"{name}: `{json.dumps(data)}`"]
    kernel_data = sections.get("kernels", {}).get("data")
    if kernel_data:
        shape = kernel_data["shape"]
        lines += ["", f"## Kernels at B = {shape['batch']}, N = {shape['n']}, M = {shape['m']}, C = {shape['channels']}"
                  " ((u, v) pairs/s; model: bench/results/static/kernel_report.json, sm_90, H100 SXM)", "",
                  "| kernel | dtype | fp32 dot | ms | measured pairs/s | modelled (raw) | modelled / calibration | measured / "
                  "calibrated | model limited by | timed |", "|---|---|---|---|---|---|---|---|---|---|"]
        for row in kernel_data["rows"]:
            lines.append(f"| {row['pass']} | {row['dtype']} | {row.get('dot') or ''} | {_e(row['ms'])} | {_e(row['pairs_per_s'])} | "
                         f"{_e(row['modelled_pairs_per_s'])} | {_e(row['calibrated_pairs_per_s'])} | "
                         f"{_e(row.get('measured_over_calibrated'))} | {row.get('limited_by') or ''} | "
                         f"{row['timed']} |")
    dve_data = sections.get("dve", {}).get("data")
    if dve_data:
        lines += ["", "## DVE loss forward + backward (B = 8, C = 64)", "",
                  "| dtype | side | provider | status | median ms | peak extra MiB | speed-up vs dense |",
                  "|---|---|---|---|---|---|---|"]
        for row in dve_data["rows"]:
            peak = row.get("peak_extra_bytes")
            lines.append(f"| {row['dtype']} | {row['side']}² | {row['provider']} | {row['status']} | "
                         f"{_e(row.get('median_ms'))} | {_e(peak / 2**20 if peak is not None else None)} | "
                         f"{_e(row.get('speedup_vs_dense'))} |")
    return "\n".join(lines) + "\n"


def write_report(result: dict, out_dir: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path, md_path = os.path.join(out_dir, "gpu_check.json"), os.path.join(out_dir, "gpu_check.md")
    with open(json_path, "w") as handle:
        json.dump(result, handle, indent=1, default=str)
    with open(md_path, "w") as handle:
        handle.write(markdown(result))
    return json_path, md_path


# -------------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for gpu_check.json and gpu_check.md")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all sections")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes for the warm-up")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only these sections (repeatable)")
    parser.add_argument("--plan", action="store_true", help="check imports and the model file, print the plan, "
                                                            "run nothing (works without a GPU)")
    args = parser.parse_args(argv)
    if args.budget <= 0 or args.jobs < 1:
        parser.error(f"--budget must be > 0 and --jobs >= 1, got {args.budget} and {args.jobs}")
    return args


def plan(args) -> dict:
    """What would run: checks that everything the sections import is importable and the model file loads."""
    import dve_kernels  # noqa: F401

    from . import kernel_report, providers  # noqa: F401

    launchers, kernel_names = ops_adapter()
    models = load_model_rows()
    names = [model_spec_name(p, d, KERNEL_SHAPE["channels"], dot) for p in PASSES for d, dot in KERNEL_VARIANTS]
    missing = [name for name in names if name not in models]
    return {"sections": list(args.only or SECTIONS), "budget_s": args.budget, "warmup_variants": len(warmup_cases()),
            "accuracy_cases": len(accuracy_cases()), "kernel_names": kernel_names, "model_rows_missing": missing,
            "estimated_s": sum(SECTION_ESTIMATES_S[s] for s in (args.only or SECTIONS))}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plan:
        print(json.dumps(plan(args), indent=1))
        return 0
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, torch.cuda.is_available() is False); "
              "nothing was measured", file=sys.stderr)
        return 2
    budget = Budget(args.budget)
    torch.backends.cuda.matmul.allow_tf32 = False  # the dense float32 comparisons must be IEEE float32
    torch.backends.cudnn.allow_tf32 = False
    model_rows = load_model_rows()

    def accuracy():
        cases = [accuracy_case(*case) for case in accuracy_cases()]
        return all(c["passed"] for c in cases), {"cases": cases}

    available = {"warmup": lambda: warmup(args.jobs), "accuracy": accuracy, "determinism": determinism,
                 "memory": memory, "kernels": lambda: kernels(model_rows), "dve": dve}
    chosen = [(name, available[name]) for name in SECTIONS if not args.only or name in args.only]
    sections = run_sections(chosen, budget)
    result = {"environment": environment(), "budget_s": args.budget, "elapsed_s": budget.elapsed(),
              "sections": sections, "passed": all(r["status"] == "ok" for r in sections.values())}
    json_path, md_path = write_report(result, args.out)
    print(f"gpu_check: {'passed' if result['passed'] else 'FAILED'} in {budget.elapsed():.0f} s; wrote {json_path} "
          f"and {md_path}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
