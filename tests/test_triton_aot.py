"""Ahead-of-time compilation of the Triton kernels for sm_80 and sm_90, on a machine with no GPU.

The interpreter accepts code the GPU compiler rejects (tl.dot needs K >= 16, power-of-two blocks), and
only the compiler shows register spills and shared-memory overflow: this test keeps the GPU path honest.
Each kernel is compiled with triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32)) in a
subprocess (``python -m dve_kernels.ops._aot``) because TRITON_INTERPRET=1, which the other tests need,
turns the kernels into interpreted functions. Compiling takes 3-20 s per kernel variant and architecture
on a small CPU; progress ("AOT compile k of n") goes to the terminal as it happens.

Two tiers:

- fast (``pytest tests``): a sample, one specialisation per kernel and dtype (C = 64 = its pad, the warp-loss
  kernels at pow = 0.5), 24 specialisations for both architectures: 48 compiles;
- slow (``pytest tests -m slow``, ``make test-full``): every launch configuration the launchers can pick
  (``launch_config`` depends on the pass, C_PAD and the dtype: all six kernels x 4 dtypes x 5 channel pads, the
  warp-loss kernels at pow = 0.5, each with C = C_PAD (EVEN_C) and with any other C (``_ragged``)), plus the
  other distance-power code paths (pow 1, 2, any) at C = 64 in bfloat16 and float32: 276 of the 600
  specialisations, each for both architectures (552 compiles). ``DVE_AOT_FULL=1`` makes it every
  specialisation :func:`dve_kernels.ops.kernel_specializations` lists (1200 compiles); ``DVE_AOT_MATCH=REGEX``
  another subset by name. Triton's cache (``TRITON_CACHE_DIR``) makes reruns fast.

``python -m bench.kernel_report`` compiles and reports the 300 EVEN_C ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading

import pytest

pytest.importorskip("triton")

from dve_kernels.ops._aot import SHARED_MEMORY_LIMIT  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = ("exchange_fwd", "exchange_bwd_query", "exchange_bwd_aux", "warp_loss_fwd", "warp_loss_bwd_src", "warp_loss_bwd_tgt")
DTYPES = ("fp32", "fp32_tf32", "fp16", "bf16", "fp64")  # fp32_tf32: the kernels under "high" matmul precision
C_PADS = (16, 32, 64, 128, 256)
ARCHS = (80, 90)
SAMPLE = r"^(exchange_[a-z0-9_]+_c64|warp_[a-z0-9_]+_c64_pow0\.5)$"
FULL = os.environ.get("DVE_AOT_FULL", "0") == "1"
SWEEP = os.environ.get("DVE_AOT_MATCH", "" if FULL else r"^exchange_|_pow0\.5|_(bf16|fp32)_c64_pow")


def _env():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _names():
    """Specialisation names, read in a clean subprocess (no interpreter)."""
    code = "from dve_kernels.ops import kernel_specializations as k; print('\\n'.join(s.name for s in k()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env=_env())
    return out.stdout.split()


def _say(config, line: str) -> None:
    """A line on the terminal now, past pytest's output capture (a long compile must not look like a hang)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        print(line, file=sys.__stderr__, flush=True)
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line(line)


def compile_all(config, match: str, label: str, archs=ARCHS) -> list[dict]:
    """Run the AOT compiler on every specialisation ``match`` finds, for ``archs``, with progress."""
    command = [sys.executable, "-m", "dve_kernels.ops._aot", "--match", match]
    for arch in archs:
        command += ["--arch", str(arch)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=_env())
    watchdog = threading.Timer(4 * 3600, proc.kill)
    watchdog.start()
    results, other = [], []
    _say(config, f"\n[{label}] compiling --match {match!r} for {', '.join(f'sm_{a}' for a in archs)} ...")
    try:
        for line in proc.stdout:
            if line.startswith("{"):
                results.append(json.loads(line))
            elif line.startswith("[aot]"):
                _say(config, f"[{label}] {line[6:].rstrip()}")
            else:
                other.append(line)
    finally:
        proc.wait()
        watchdog.cancel()
    assert proc.returncode == 0, f"the AOT compiler exited with {proc.returncode}:\n" + "".join(other)[-4000:]
    assert results, f"nothing was compiled for --match {match!r}"
    return results


# The fast tier's sample: sm_90 (the GPUs this targets) only; the slow tier's sweep compiles sm_80 and sm_90.
SAMPLE_ARCHS = (90,)


@pytest.fixture(scope="module")
def sample(request):
    return compile_all(request.config, SAMPLE, "AOT sample", SAMPLE_ARCHS)


@pytest.fixture(scope="module")
def sweep(request):
    return compile_all(request.config, SWEEP, "AOT sweep")


def _compiled(reports, arch):
    return {r["name"] for r in reports if r["arch"] == arch}


def check_reports(reports):
    problems = []
    for r in reports:
        label = f"{r['name']} sm_{r['arch']}"
        if "error" in r:
            problems.append(f"{label}: {r['error'][:300]}")
            continue
        limit = SHARED_MEMORY_LIMIT[r["arch"]]
        if r["shared"] > limit:
            problems.append(f"{label}: shared memory {r['shared']} B > {limit} B")
        if r["spill_stores"] or r["spill_loads"]:
            problems.append(f"{label}: spills {r['spill_stores']} B stored, {r['spill_loads']} B loaded "
                            f"({r['registers']} registers, {r['num_warps']} warps)")
    assert not problems, f"{len(problems)} of {len(reports)} compiles failed the checks:\n" + "\n".join(problems)


def test_sample_has_one_specialisation_per_kernel_and_dtype(sample):
    for arch in SAMPLE_ARCHS:
        compiled = _compiled(sample, arch)
        expected = {f"{kernel}_{dtype}_c64" + ("_pow0.5" if kernel.startswith("warp") else "")
                    for kernel in KERNELS for dtype in DTYPES}
        assert compiled == expected, (f"sm_{arch}: missing {sorted(expected - compiled)}, "
                                      f"unexpected {sorted(compiled - expected)}")


def test_sample_compiles_fits_shared_memory_and_does_not_spill(sample):
    check_reports(sample)


@pytest.mark.slow
def test_sweep_covers_every_launch_configuration(sweep):
    """Every (kernel, dtype, channel pad), i.e. every launch configuration, C = C_PAD or not, both archs."""
    if os.environ.get("DVE_AOT_MATCH"):
        pytest.skip("DVE_AOT_MATCH: a custom subset need not cover every launch configuration")
    if FULL:
        names = set(_names())
        for arch in ARCHS:
            assert _compiled(sweep, arch) == names, f"sm_{arch}: missing {sorted(names - _compiled(sweep, arch))}"
        return
    for arch in ARCHS:
        compiled = _compiled(sweep, arch)
        for kernel in KERNELS:
            for dtype in DTYPES:
                for c_pad in C_PADS:
                    prefix = f"{kernel}_{dtype}_c{c_pad}"
                    even = [n for n in compiled if n.startswith(prefix) and not n.endswith("_ragged")]
                    ragged = [n for n in compiled if n.startswith(prefix) and n.endswith("_ragged")]
                    assert even and ragged, f"sm_{arch}: {prefix} compiled for C = C_PAD: {even}, other C: {ragged}"


@pytest.mark.slow
def test_sweep_compiles_fits_shared_memory_and_does_not_spill(sweep):
    check_reports(sweep)


def test_highest_precision_uses_the_dot_the_static_report_models_faster():
    """Under torch's default "highest" matmul precision the float32 kernels use IEEE FMA dots; the alternative that
    keeps float32 accuracy, the three-way TF32 split, is compiled for the static report on the same tiles
    (bench/kernel_report.py --split-candidates). The choice stands only while the report models IEEE at least as
    fast on every float32 C = 64 kernel of sm_90 (docs/gpu.md)."""
    import torch

    from dve_kernels import precision

    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert precision.float32_dot() == "ieee"
    finally:
        torch.set_float32_matmul_precision(before)
    with open(os.path.join(ROOT, "bench", "results", "static", "kernel_report.json")) as handle:
        rows = {(row["name"], row["arch"]): row for row in json.load(handle) if "error" not in row}
    ieee = {name: row for (name, arch), row in rows.items() if arch == 90 and "_fp32_c64" in name}
    assert len(ieee) == 15, sorted(ieee)  # 3 exchange kernels, 3 warp-loss kernels x 4 distance powers
    for name, row in ieee.items():
        split = rows.get((name.replace("_fp32_", "_tf32x3_"), 90))
        assert split is not None, f"no split twin of {name} in the report"
        assert row["modelled_pairs_per_s"] >= split["modelled_pairs_per_s"], (name, row["modelled_pairs_per_s"],
                                                                             split["modelled_pairs_per_s"])
