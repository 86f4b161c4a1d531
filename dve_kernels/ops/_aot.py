"""Ahead-of-time compilation of every kernel specialisation, on a machine with no GPU.

``python -m dve_kernels.ops._aot [--arch 80] [--arch 90] [--match REGEX] [--jobs N]`` compiles each entry of
:func:`dve_kernels.ops.kernel_specializations` with ``triton.compile`` for a CUDA target, runs the
``ptxas`` shipped with Triton with ``-v`` on the PTX, and prints one JSON line per kernel:
name, arch, registers, spill stores/loads (bytes), shared memory (bytes), compile seconds, error; and
``[aot] k of n: ...`` progress lines on stderr.

Runs in its own process because ``TRITON_INTERPRET=1`` (which the CPU tests need) turns
``@triton.jit`` kernels into interpreted functions that cannot be compiled; this module refuses to run
with the interpreter on. Works with the ``ASTSource(fn, signature, constexprs)`` API of Triton 3.3+
(3.6 and 3.9 are what the project uses): signatures name every argument, constexprs typed "constexpr".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from .._env import triton_interpreter_requested

# shared memory per block an architecture allows (opt-in maximum), bytes
SHARED_MEMORY_LIMIT = {80: 164 * 1024, 90: 227 * 1024}
PTXAS_ARCH = {80: "sm_80", 90: "sm_90a"}


def _ptxas(arch: int) -> str:
    """The ptxas Triton itself uses for this arch (3.9 uses its newer "ptxas-blackwell" from sm_90 on)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: PLC0415

        return get_ptxas(arch).path
    except (ImportError, AttributeError, TypeError):
        pass
    try:
        from triton import knobs  # noqa: PLC0415

        return knobs.nvidia.ptxas.path
    except (ImportError, AttributeError):
        import triton  # noqa: PLC0415

        return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def ptxas_report(ptx: str, arch: int) -> dict:
    """Registers and spill bytes that ``ptxas -v`` reports for one kernel's PTX."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as handle:
            handle.write(ptx)
        # the flags Triton itself passes (3.9 adds --regAllocOptLevel=2 against a ptxas 13 register
        # allocation bug; without it that ptxas reports 32 registers and kilobytes of spills)
        command = [_ptxas(arch), "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={PTXAS_ARCH[arch]}", path,
                   "-o", os.path.join(tmp, "kernel.o")]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:  # an older ptxas without the option
            command.remove("--regAllocOptLevel=2")
            result = subprocess.run(command, capture_output=True, text=True, check=True)
    text = result.stderr + result.stdout
    stores = re.search(r"(\d+) bytes spill stores", text)
    loads = re.search(r"(\d+) bytes spill loads", text)
    registers = re.search(r"Used (\d+) registers", text)
    return {
        "registers": int(registers.group(1)) if registers else None,
        "spill_stores": int(stores.group(1)) if stores else None,
        "spill_loads": int(loads.group(1)) if loads else None,
    }


def compile_specialization(spec, arch: int, return_compiled: bool = False):
    """Compile one Specialization for ``sm_<arch>``; returns the figures the AOT test checks.

    With ``return_compiled`` also the ``CompiledKernel`` (``asm["ptx"]``, ``asm["cubin"]``), as
    ``(report, compiled)``, for the static kernel report in bench/.
    """
    import triton  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler import ASTSource  # noqa: PLC0415

    from ._launch import FP_FUSION  # noqa: PLC0415

    start = time.perf_counter()
    # the runtime sees torch allocations 16-byte aligned and specialises on it: compile the same variant
    attrs = {(spec.kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in spec.pointer_args}
    source = ASTSource(fn=spec.kernel, signature=spec.signature, constexprs=spec.constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": spec.num_warps, "num_stages": spec.num_stages,
                                       "enable_fp_fusion": FP_FUSION, "maxnreg": spec.max_registers})
    report = ptxas_report(compiled.asm["ptx"], arch)
    report.update(name=spec.name, arch=arch, shared=compiled.metadata.shared, num_warps=spec.num_warps,
                  num_stages=spec.num_stages, shared_limit=SHARED_MEMORY_LIMIT[arch],
                  seconds=round(time.perf_counter() - start, 2))
    return (report, compiled) if return_compiled else report


def compile_indexed(args, then=None, variant=None) -> dict:
    """A worker process's job: compile specialisation ``index`` of kernel_specializations() for ``sm_<arch>``
    (``args = (index, arch)``), or ``variant(spec)`` of it, and return its report, with what
    ``then(spec, arch, compiled)`` adds (bench's kernel report). A failure is reported as the row's ``error``; the
    tests fail on it."""
    index, arch = args
    from dve_kernels.ops import kernel_specializations  # noqa: PLC0415

    spec = kernel_specializations()[index]
    if variant is not None:
        spec = variant(spec)
    try:
        if then is None:
            return compile_specialization(spec, arch)
        report, compiled = compile_specialization(spec, arch, return_compiled=True)
        report.update(then(spec, arch, compiled))
        return report
    except Exception as error:
        return {"name": spec.name, "arch": arch, "error": f"{type(error).__name__}: {error}"[:2000]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", choices=sorted(SHARED_MEMORY_LIMIT))
    parser.add_argument("--match", default="", help="compile only names this regular expression finds")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if triton_interpreter_requested():
        print("unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    from dve_kernels.ops import kernel_specializations  # noqa: PLC0415

    specs = kernel_specializations()
    pattern = re.compile(args.match)
    work = [(i, arch) for arch in (args.arch or [80, 90]) for i, spec in enumerate(specs) if pattern.search(spec.name)]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for done, report in enumerate(pool.map(compile_indexed, work), 1):
            print(json.dumps(report), flush=True)
            # progress on stderr, so that stdout stays one JSON line per kernel
            status = "error" if "error" in report else f"{report['seconds']:.1f} s"
            print(f"[aot] {done} of {len(work)}: {report['name']} sm_{report['arch']} ({status}; "
                  f"{time.perf_counter() - started:.0f} s so far)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
