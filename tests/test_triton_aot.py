"""Ahead-of-time compilation of the Triton kernels for sm_80 and sm_90, on a machine with no GPU.

The interpreter accepts code the GPU compiler rejects (tl.dot needs K >= 16, power-of-two blocks), and
only the compiler shows register spills and shared-memory overflow: this test keeps the GPU path honest.
Each kernel is compiled with triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32)) in a
subprocess (``python -m dve_kernels.ops._aot``) because TRITON_INTERPRET=1, which the other tests need,
turns the kernels into interpreted functions.

Compiling is slow on a small CPU (3-20 s per kernel variant and architecture), so by default every launch
configuration the launchers can pick is compiled (``launch_config`` depends on the pass, C_PAD and the dtype:
all six kernels x 4 dtypes x 5 channel pads, the warp-loss kernels at pow = 0.5, each with C = C_PAD (EVEN_C)
and with any other C (``_ragged``)), plus the other distance-power code paths (pow 1, 2, any) at C = 64 in
bfloat16 and float32: 276 of the 600 specialisations, each for both architectures.
``python -m bench.kernel_report`` compiles and reports the 300 EVEN_C ones.
``DVE_AOT_FULL=1`` compiles every specialisation :func:`dve_kernels.ops.kernel_specializations` lists,
i.e. everything the launchers can pick (1200 compiles, over an hour on 2 cores; Triton's cache makes
reruns fast); ``DVE_AOT_MATCH=REGEX`` picks another subset by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = os.environ.get("DVE_AOT_FULL", "0") == "1"
MATCH = os.environ.get("DVE_AOT_MATCH", "" if FULL else r"^exchange_|_pow0\.5|_(bf16|fp32)_c64_pow")
SHARED_LIMIT = {80: 164 * 1024, 90: 227 * 1024}


def _names():
    """Specialisation names, read in a clean subprocess (no interpreter)."""
    code = "from dve_kernels.ops import kernel_specializations as k; print('\\n'.join(s.name for s in k()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env=_env())
    return out.stdout.split()


def _env():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def reports():
    proc = subprocess.run(
        [sys.executable, "-m", "dve_kernels.ops._aot", "--arch", "80", "--arch", "90", "--match", MATCH],
        capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=4 * 3600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert results, f"nothing was compiled for --match {MATCH!r}"
    return results


def test_subset_covers_every_kernel(reports):
    """Every kernel function appears in what was compiled, for both architectures."""
    if os.environ.get("DVE_AOT_MATCH"):
        pytest.skip("a custom subset need not cover every kernel")
    kernels = {"exchange_fwd", "exchange_bwd_query", "exchange_bwd_aux", "warp_fwd", "warp_bwd_src", "warp_bwd_tgt"}
    for arch in (80, 90):
        compiled = {r["name"] for r in reports if r["arch"] == arch}
        for kernel in kernels:
            assert any(name.startswith(kernel + "_") for name in compiled), (kernel, arch)
    if FULL:
        assert {r["name"] for r in reports} == set(_names())
    else:  # every (kernel, dtype, channel pad), i.e. every launch configuration, C = C_PAD or not, both archs
        for arch in (80, 90):
            compiled = {r["name"] for r in reports if r["arch"] == arch}
            for kernel in kernels:
                for dtype in ("fp32", "fp16", "bf16", "fp64"):
                    for c_pad in (16, 32, 64, 128, 256):
                        prefix = f"{kernel}_{dtype}_c{c_pad}"
                        even = [n for n in compiled if n.startswith(prefix) and not n.endswith("_ragged")]
                        ragged = [n for n in compiled if n.startswith(prefix) and n.endswith("_ragged")]
                        assert even and ragged, (prefix, arch)



def test_compiles_fits_shared_memory_and_does_not_spill(reports):
    problems = []
    for r in reports:
        label = f"{r['name']} sm_{r['arch']}"
        if "error" in r:
            problems.append(f"{label}: {r['error'][:300]}")
            continue
        if r["shared"] > SHARED_LIMIT[r["arch"]]:
            problems.append(f"{label}: shared memory {r['shared']} B > {SHARED_LIMIT[r['arch']]} B")
        if r["spill_stores"] or r["spill_loads"]:
            problems.append(f"{label}: spills {r['spill_stores']} B stored, {r['spill_loads']} B loaded "
                            f"({r['registers']} registers, {r['num_warps']} warps)")
    assert not problems, "\n".join(problems)
