# One-command set-up on a fresh machine: an isolated environment in .venv that
# - keeps a torch that is already installed (GPU users keep their CUDA build: the venv sees site-packages),
# - otherwise installs the CPU build of torch $(TORCH_VERSION) (never a bare `pip install torch`, which pulls CUDA),
# - installs Triton from the registry when it is missing, the test/train requirements, and this package
#   with its C++ extension (dve_kernels._C, built by setup.py with ninja).
#
#   make job        the reference training (demo preset, built-in synthetic faces) + evaluation + figures
#   make test       the C++ ctest suite + the fast pytest tier, `pytest tests` (Triton kernels in the interpreter
#                   when there is no GPU, an AOT sample for sm_90: one specialisation per kernel and dtype, 30 compiles)
#   make test-full  make test + the slow tier, `pytest tests -m slow` (the AOT sweep: 672 compiles)
#   make bench      pytest bench/ (memory and speed against the dense formulation and the peers)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
# Extra arguments for the torch install, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
JOB_ARGS ?= --preset demo --out runs/demo
PYTEST_ARGS ?=
CMAKE_BUILD ?= build/cmake

.PHONY: env test test-full pytest pytest-slow ctest job bench clean

env: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml requirements-dev.txt $(wildcard csrc/*.h python/*.cpp)
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS)
	$(PY) -c "import triton" 2>/dev/null || $(PIP) install triton
	$(PIP) install -r requirements-dev.txt
	$(PIP) install --upgrade "setuptools>=70.1" wheel  # the venv's own setuptools may predate bdist_wheel
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PY) -c "import dve_kernels, dve_kernels.functional as f; print('dve_kernels', dve_kernels.__version__, '| C++ extension:', f.cpu_extension_available())"
	touch $@

pytest: env
	$(PY) -m pytest tests $(PYTEST_ARGS)

pytest-slow: env
	$(PY) -m pytest tests -m slow $(PYTEST_ARGS)

# Builds only the test executables (their names are the tests' names); `cmake --build build/cmake` also
# builds the kernel timing programs bench_kernels_<isa>.
ctest: env
	cmake -S . -B $(CMAKE_BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(CMAKE_BUILD) --parallel 2 --target \
	  $$(ctest --test-dir $(CMAKE_BUILD) -N | sed -n 's/^ *Test *#[0-9]*: *//p')
	ctest --test-dir $(CMAKE_BUILD) --output-on-failure

test: ctest pytest

test-full: test pytest-slow

job: env
	$(PY) -m dve_kernels.train $(JOB_ARGS)

bench: env
	$(PY) -m pytest bench $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build $(CMAKE_BUILD) dve_kernels/_C*.so *.egg-info

# ------------------------------------------------------------------------------------------ GPU day (issue 11)
#   make gpu-check OUT=dir   on a CUDA machine with torch and Triton preinstalled (no network): the editable install
#                            without dependencies, then python -m bench.gpu_check (a 390 s budget; the whole target fits in
#                            8 minutes); writes dir/gpu_check.json and dir/gpu_check.md. Without CUDA: one line, exit 2.
#   make triton-env          Triton $(TRITON_ALT) (the GPU machine's) and $(TRITON_FLOOR) (the declared floor), each
#                            with NumPy $(OLD_TRITON_NUMPY) (their interpreter breaks on NumPy 2.4), in
#                            $(TRITON_ENVS)/<version> for the venv's Python: put one first on PYTHONPATH to use it.
#   make aot-sample          the representative AOT sample (each kernel; fp32, fp64 and bf16; C = 64, C = 64 ragged,
#                            C = 32 ragged; sm_80 and sm_90: 108 compiles)
#                            with Triton $(TRITON_ALT) (aot-sample-alt, which CI runs), then with the venv's newest:
#                            tests/test_triton_aot.py fails on any error, spill or shared-memory overflow.
#   make test-triton-floor   the interpreter tests ($(FLOOR_TESTS)) on the declared floor, Triton $(TRITON_FLOOR).
GPU_PYTHON ?= python3
OUT ?= bench/results/gpu-check
TRITON_ALT ?= 3.6.0
TRITON_FLOOR ?= 3.5.1
TRITON_ENVS ?= build/triton
OLD_TRITON_NUMPY ?= 2.3.5
AOT_SAMPLE ?= _(fp32|fp64|bf16)_(c64(_pow0\.5)?(_ragged)?|c32(_pow0\.5)?_ragged)$$
FLOOR_TESTS ?= tests/test_ops_triton_kernels.py tests/test_ops_numerics.py

.PHONY: gpu-check triton-env aot-sample aot-sample-alt test-triton-floor

gpu-check:
	$(GPU_PYTHON) -m pip install --no-deps --no-build-isolation -e .
	$(GPU_PYTHON) -m bench.gpu_check --out $(OUT)

$(TRITON_ENVS)/%/.installed:
	$(PIP) install --no-deps --target $(TRITON_ENVS)/$* "triton==$*" "numpy==$(OLD_TRITON_NUMPY)"
	touch $@

triton-env: env $(TRITON_ENVS)/$(TRITON_ALT)/.installed $(TRITON_ENVS)/$(TRITON_FLOOR)/.installed

AOT_SAMPLE_TEST = tests/test_triton_aot.py -m slow -k sweep_compiles -q

aot-sample: aot-sample-alt
	DVE_AOT_MATCH='$(AOT_SAMPLE)' $(PY) -m pytest $(AOT_SAMPLE_TEST)

aot-sample-alt: triton-env
	PYTHONPATH=$(abspath $(TRITON_ENVS)/$(TRITON_ALT)) DVE_AOT_MATCH='$(AOT_SAMPLE)' $(PY) -m pytest $(AOT_SAMPLE_TEST)

test-triton-floor: triton-env
	PYTHONPATH=$(abspath $(TRITON_ENVS)/$(TRITON_FLOOR)) $(PY) -m pytest $(FLOOR_TESTS) -q
