"""Sections 1, 4, 5 and 6: the compile warm-up, peak memory, the kernels' speed beside the static report's model,
and the DVE loss against dense."""

from __future__ import annotations

import json
import os
import statistics

from .accuracy import accuracy_case, accuracy_cases
from .common import KERNEL_SHAPE, KERNEL_VARIANTS, features, fp32_dot, ops_adapter, torch_dtype

DVE_SIDES = (48, 64, 128)
DVE_BATCH = 8
DVE_DTYPES = ("bfloat16", "float32")
MEMORY_SIDE = 128


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
        dtype = torch_dtype(dtype_name)
        a = features(batch, n, c, "cuda", generator).to(dtype)
        b = features(batch, m, c, "cuda", generator).to(dtype)
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
    from .. import kernel_report

    path = path or os.path.join(kernel_report.OUT_DIR, "kernel_report.json")
    with open(path) as handle:
        rows = json.load(handle)
    return {row["name"]: {**row, "calibrated_pairs_per_s": kernel_report.calibrated(row.get("modelled_pairs_per_s"))}
            for row in rows if row.get("arch") == 90 and "error" not in row}


def memory():
    """Forward + backward at N = M = 128² (B = 2, C = 64, float32): the peak against one dense N x M matrix."""
    import torch

    import dve_kernels

    batch, n, c = 2, MEMORY_SIDE * MEMORY_SIDE, 64
    generator = torch.Generator().manual_seed(2)
    src, tgt, aux = (features(batch, n, c, "cuda", generator).float().requires_grad_(True) for _ in range(3))
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

    from .. import providers

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
                    inputs = providers.make_inputs("dve", side, 64, DVE_BATCH, torch_dtype(dtype_name), "cuda")
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
