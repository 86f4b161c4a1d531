"""``bench/gpu_check`` on the CPU: everything that does not need a GPU, so that one GPU run is enough.

Imports and the ops adapter (the launcher and kernel names it relies on exist), argument parsing, the no-CUDA
refusal (one line, non-zero exit), the time-budget logic on a fake clock, the accuracy case run in Triton's
interpreter on tiny inputs against the float64 reference, and the report writer fed with fake timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from bench.gpu_check import accuracy, common, report, run, timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_parse_args_defaults_and_errors():
    args = run.parse_args(["--out", "somewhere"])
    assert (args.out, args.budget, args.only, args.plan) == ("somewhere", run.DEFAULT_BUDGET_S, None, False)
    assert run.parse_args(["--out", "x", "--only", "kernels", "--only", "dve"]).only == ["kernels", "dve"]
    for bad in ([], ["--out", "x", "--budget", "0"], ["--out", "x", "--only", "nonsense"]):
        with pytest.raises(SystemExit):
            run.parse_args(bad)


def test_budget_fits_eight_minutes_with_the_install():
    """The sections' estimates fit in the default budget, and the budget leaves >= 90 s of the 8 minutes for
    ``pip install -e .`` (the C++ extension) and the interpreter start-up."""
    assert sum(common.SECTION_ESTIMATES_S.values()) <= run.DEFAULT_BUDGET_S
    assert run.DEFAULT_BUDGET_S <= 8 * 60 - 90


def test_no_cuda_refusal_is_one_line_and_non_zero(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(tmp_path / "out")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "no CUDA device" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_no_cuda_refusal_in_process(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_run_sections_skips_what_the_budget_cannot_hold_and_survives_failures():
    clock = FakeClock()
    budget = run.Budget(100.0, clock)
    ran = []

    def section(name, seconds, passed=True, fail=False):
        def fn():
            ran.append(name)
            clock.now += seconds
            if fail:
                raise RuntimeError("kernel exploded")
            return passed, {"name": name}
        return name, fn

    estimates = {"a": 30, "b": 10, "c": 10, "d": 50, "e": 5}
    records = run.run_sections([section("a", 40), section("b", 5, fail=True), section("c", 10, passed=False),
                                      section("d", 1), section("e", 1)], budget, estimates)
    # a: 40 s (60 left); b raises (55 left); c fails its checks (45 left); d's 50 s no longer fits; e does
    assert ran == ["a", "b", "c", "e"]
    assert [records[k]["status"] for k in "abcde"] == ["ok", "failed", "failed", "skipped", "ok"]
    assert "kernel exploded" in records["b"]["error"] and "RuntimeError" in records["b"]["traceback"]
    assert "45 s left" in records["d"]["reason"] and records["a"]["seconds"] == 40.0
    assert budget.remaining() == 44.0


def test_error_bound_is_the_tests_rule():
    """gpu_check holds the GPU to the one rule of tests/_tolerance.py: 4x the largest dense error over the
    neighbourhood, or the float32 floor of 1e-5 of the max-norm."""
    exact = torch.tensor([1.0, -10.0], dtype=torch.float64)
    dense = [exact + 1e-2, exact + 2e-2]
    assert accuracy.error_bound(exact, dense, "bfloat16") == pytest.approx(8e-2)
    assert accuracy.error_bound(exact, [exact, exact], "float32") == pytest.approx(1e-4)  # the max-norm floor


def test_ops_adapter_names_exist():
    """The adapter's launchers run and its kernel names are JIT functions of dve_kernels.ops (the profiler
    attributes device time by these names)."""
    import dve_kernels.ops as ops

    launchers, kernel_names = common.ops_adapter()
    assert set(kernel_names) == set(common.PASSES) and set(launchers) == {"exchange", "warp"}
    assert kernel_names["exchange_fwd"] == "_exchange_fwd_kernel", kernel_names
    assert len(set(kernel_names.values())) == len(common.PASSES), kernel_names  # one JIT function per pass
    assert all(any(spec.kernel.fn.__name__ == name for spec in ops.kernel_specializations())
               for name in kernel_names.values()), kernel_names
    q, a = torch.randn(1, 20, 16), torch.randn(1, 23, 16)
    out, lse = launchers["exchange"][0](q, a, 1.0)
    grads = launchers["exchange"][1](torch.ones_like(out), q, a, 1.0, out, lse)
    assert out.shape == q.shape and [g.shape for g in grads] == [q.shape, a.shape]
    xy_q, xy_a = torch.rand(1, 20, 2) * 8, torch.rand(1, 23, 2) * 8
    rows, lse = launchers["warp"][0](q, a, xy_q, xy_a, 0.5, 1.0)
    grads = launchers["warp"][1](torch.ones_like(rows), q, a, xy_q, xy_a, 0.5, 1.0, rows, lse)
    assert rows.shape == (1, 20) and [g.shape for g in grads] == [q.shape, a.shape]


@pytest.mark.parametrize("dot", ["ieee"])
@pytest.mark.parametrize("op,pow,normalize", [("exchange", 0.5, True), ("warp", 0.5, False), ("warp", 0.7, False)])
def test_accuracy_case_in_the_interpreter(op, pow, normalize, dot):
    """The accuracy section's own code on CPU tensors (Triton interpreter): float32 passes its bound.

    """
    case = accuracy.accuracy_case(op, (1, 19, 23, 16), "float32", pow, dot, device="cpu", backend="triton",
                                   normalize=normalize)
    assert case["dot"] == dot
    assert case["passed"], case
    assert set(case["checks"]) == {"value", "grad_a", "grad_b"}
    for check in case["checks"].values():
        assert 0 <= check["fused_error"] <= check["bound"] and check["bound"] > 0, check


def test_accuracy_case_fails_a_wrong_backend(monkeypatch):
    """The comparison can fail: a fused exchange that is off by 1e-3 of its value misses the float32 bound."""
    import dve_kernels

    real = dve_kernels.exchange
    monkeypatch.setattr(dve_kernels, "exchange", lambda *a, **k: real(*a, **k) * (1 + 1e-3))
    case = accuracy.accuracy_case("exchange", (1, 19, 23, 16), "float32", device="cpu", backend="triton")
    assert not case["passed"] and not case["checks"]["value"]["passed"], case


def test_plan_checks_imports_and_model_rows():
    args = run.parse_args(["--out", "x", "--plan"])
    plan = run.plan(args)
    assert plan["model_rows_missing"] == [], plan["model_rows_missing"]
    assert plan["accuracy_cases"] == 7 * len(accuracy.ACCURACY_VARIANTS) == 21, plan["accuracy_cases"]
    covered = set(timing.warmup_cases())
    assert plan["warmup_variants"] == len(covered)
    for op, shape, dtype, pow, dot in accuracy.accuracy_cases():  # every variant a section launches is warmed
        assert (op, dtype, shape[3], pow, dot) in covered
    for dtype, dot in common.KERNEL_VARIANTS:
        assert ("exchange", dtype, 64, 0.5, dot) in covered and ("warp", dtype, 64, 0.5, dot) in covered


def _fake_result():
    models = timing.load_model_rows()
    rows = []
    for index, pass_name in enumerate(common.PASSES):
        for dtype, dot in common.KERNEL_VARIANTS:
            rows.append(timing.kernel_row(pass_name, dtype, dot, 0.25 + index / 10, "kernel", models))
    accuracy = [{"op": "exchange", "shape": [2, 1024, 1025, 64], "dtype": "bfloat16", "pow": None, "passed": True,
                 "checks": {k: {"fused_error": 1e-3, "dense_error": 2e-3, "bound": 4e-3, "passed": True}
                            for k in ("value", "grad_a", "grad_b")}}]
    dve = [{"dtype": "float32", "side": 128, "batch": 8, "channels": 64, "provider": "dve_kernels", "status": "ok",
            "median_ms": 12.5, "peak_extra_bytes": 3 * 2**20, "speedup_vs_dense": 30.0},
           {"dtype": "float32", "side": 128, "batch": 8, "channels": 64, "provider": "dense", "status": "oom",
            "note": "CUDA out of memory"}]
    sections = {"warmup": {"status": "ok", "seconds": 80.0, "data": {}},
                "accuracy": {"status": "ok", "seconds": 30.0, "data": {"cases": accuracy}},
                "determinism": {"status": "ok", "seconds": 3.0, "data": {"bitwise_equal": {"float32": True}}},
                "memory": {"status": "failed", "seconds": 2.0, "error": "RuntimeError: boom"},
                "kernels": {"status": "ok", "seconds": 20.0, "data": {"shape": common.KERNEL_SHAPE, "rows": rows}},
                "dve": {"status": "skipped", "reason": "time budget: 10 s left"}}
    sections["dve"] = {"status": "ok", "seconds": 40.0, "data": {"rows": dve}}
    env = {"gpu": "NVIDIA H200", "capability": "sm_90", "sms": 132, "driver": "570.86.15", "torch": "2.11.0+cu128",
           "cuda_runtime": "12.8", "triton": "3.6.0", "commit": "abc1234", "time_utc": "2026-12-01T21:00:00Z"}
    return {"environment": env, "budget_s": 390.0, "elapsed_s": 175.0, "sections": sections, "passed": False}


def test_report_writer_with_fake_timings(tmp_path):
    result = _fake_result()
    json_path, md_path = report.write_report(result, str(tmp_path / "run"))
    assert json.loads(open(json_path).read())["environment"]["gpu"] == "NVIDIA H200"
    text = open(md_path).read()
    for needle in ("NVIDIA H200", "driver 570.86.15", "torch 2.11.0+cu128", "Triton 3.6.0", "**FAILED**",
                   "| memory | failed |", "RuntimeError: boom", "| 128² | dense | oom |", "| 128² | dve_kernels | ok |"):
        assert needle in text, needle
    kernel_lines = [line for line in text.splitlines() if line.startswith(tuple(f"| {p} |" for p in common.PASSES))]
    assert len(kernel_lines) == len(common.PASSES) * len(common.KERNEL_VARIANTS)
    # exchange_fwd bf16 at 0.25 ms: 16 · 4096² / 0.25e-3 pairs/s, beside its modelled and calibrated bounds
    row = next(r for r in result["sections"]["kernels"]["data"]["rows"]
               if r["pass"] == "exchange_fwd" and r["dtype"] == "bfloat16")
    assert row["pairs_per_s"] == pytest.approx(16 * 4096 * 4096 / 0.25e-3)
    assert row["spec"] == "exchange_fwd_bf16_c64" and row["modelled_pairs_per_s"] > row["calibrated_pairs_per_s"] > 0
    assert row["measured_over_calibrated"] == pytest.approx(row["pairs_per_s"] / row["calibrated_pairs_per_s"])
    line = next(line for line in kernel_lines if line.startswith("| exchange_fwd | bfloat16 |  |"))
    assert f"{row['pairs_per_s']:.3g}" in line and f"{row['calibrated_pairs_per_s']:.3g}" in line, line
    warp = next(r for r in result["sections"]["kernels"]["data"]["rows"] if r["pass"] == "warp_loss_bwd_tgt")
    assert warp["spec"].endswith("_c64_pow0.5"), warp
    specs = {(r["pass"], r["dot"]): r["spec"] for r in result["sections"]["kernels"]["data"]["rows"]}
    assert specs[("exchange_fwd", "ieee")] == "exchange_fwd_fp32_c64"  # float32 beside its model
    assert all(r["modelled_pairs_per_s"] for r in result["sections"]["kernels"]["data"]["rows"]), "a row has no model"


def test_fp32_dot_sets_the_matmul_precision_the_pytorch_way():
    before = torch.get_float32_matmul_precision()
    with common.fp32_dot("tf32"):
        assert torch.get_float32_matmul_precision() == "high"
        from dve_kernels import precision
        assert precision.float32_dot() == "tf32"
    assert torch.get_float32_matmul_precision() == before
    with common.fp32_dot("ieee"):
        assert torch.get_float32_matmul_precision() == "highest"
    with pytest.raises(ValueError, match="3xtf32"):
        with common.fp32_dot("3xtf32"):
            pass
