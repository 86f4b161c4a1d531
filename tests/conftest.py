"""Shared test set-up.

Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter, which must be switched on
before ``triton`` is first imported: that is why this happens here, at collection time.

Strict mode (``CI=true``, or ``DVE_TEST_STRICT=1``, which ``.ci/run`` sets): a missing compiled extension
(``dve_kernels._C``), Triton or hypothesis stops the run with an error instead of skipping the tests that need
them. Without it, a user without a C++ compiler gets those tests skipped, each with the reason.
"""

import importlib
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

STRICT = os.environ.get("DVE_TEST_STRICT", "0") == "1" or os.environ.get("CI", "").lower() == "true"
REQUIRED = {
    "dve_kernels._C": "the C++ extension; build it with `make env` or `pip install --no-build-isolation -e .`",
    "triton": "`pip install triton`",
    "hypothesis": "`pip install hypothesis` (requirements-dev.txt)",
}


def pytest_configure(config):
    if not STRICT:
        return
    missing = []
    for module, how in REQUIRED.items():
        try:
            importlib.import_module(module)
        except ImportError as error:
            missing.append(f"  {module}: {error}; {how}")
    if missing:
        raise pytest.UsageError("strict test run (CI=true or DVE_TEST_STRICT=1): these would only be skipped, "
                                "so the run stops instead:\n" + "\n".join(missing))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
