"""Build dve_kernels, with its compiled CPU kernels (dve_kernels._C) when a C++ compiler is present.

``pip install --no-build-isolation -e .`` compiles ``csrc/`` (the torch-free kernels) and ``python/``
(the bindings) into ``dve_kernels._C`` with ninja through torch's cpp_extension. Without a compiler the
package still installs and imports; ``backend="cpu"`` then says how to build it.
"""

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _compiler_available() -> bool:
    return shutil.which(os.environ.get("CXX", "c++")) is not None or shutil.which("g++") is not None


def extension_modules():
    """The C++ extension, or nothing (with a message) when it cannot be built here."""
    sources = sorted(glob.glob(os.path.join("python", "*.cpp")))
    if not sources:
        return [], {}
    if os.environ.get("DVE_KERNELS_NO_EXTENSION") == "1":
        print("dve_kernels: DVE_KERNELS_NO_EXTENSION=1, skipping the C++ extension", file=sys.stderr)
        return [], {}
    if not _compiler_available():
        print("dve_kernels: no C++ compiler found, installing without dve_kernels._C "
              "(backend='cpu' will be unavailable)", file=sys.stderr)
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("dve_kernels: torch is not importable in the build environment, installing without "
              "dve_kernels._C; build it with `pip install --no-build-isolation -e .`", file=sys.stderr)
        return [], {}

    # Portable flags: no -march. The kernels are compiled once per instruction set in python/isa_*.cpp
    # (`#pragma GCC target`: generic, AVX2+FMA, AVX-512) and bindings.cpp picks one at run time, so one
    # binary runs anywhere and still uses FMA/AVX-512 where the CPU has them. -ffp-contract=fast: the
    # ISO -std=c++NN mode would otherwise forbid fusing a*b+c into one FMA in the micro-kernels;
    # -fno-math-errno, -fno-trapping-math: let sqrt and the branch-free exp / selects of the softmax
    # rows vectorise (the kernels never read errno or FP exception flags). No -std here: torch's
    # cpp_extension picks the standard its headers need (C++20 for torch 2.13); csrc/ is plain C++17.
    extra_compile_args = ["-O3", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math"]
    extension = CppExtension(
        name="dve_kernels._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args=extra_compile_args,
        extra_link_args=["-fopenmp"],
    )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()

setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
