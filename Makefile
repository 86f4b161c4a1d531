# One-command set-up on a fresh machine: an isolated environment in .venv that
# - keeps a torch that is already installed (GPU users keep their CUDA build: the venv sees site-packages),
# - otherwise installs the CPU build of torch $(TORCH_VERSION) (never a bare `pip install torch`, which pulls CUDA),
# - installs Triton from the registry when it is missing, the test/train requirements, and this package
#   with its C++ extension (dve_kernels._C, built by setup.py with ninja).
#
#   make job        the reference training (demo preset, built-in synthetic faces) + evaluation + figures
#   make test       the C++ ctest suite + the fast pytest tier, `pytest tests` (Triton kernels in the interpreter
#                   when there is no GPU, a 48-compile AOT sample for sm_80/sm_90)
#   make test-full  make test + the slow tier, `pytest tests -m slow` (the AOT sweep: 552 compiles)
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
	$(PY) -m pytest bench

clean:
	rm -rf $(VENV) build $(CMAKE_BUILD) dve_kernels/_C*.so *.egg-info
