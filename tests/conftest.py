"""Shared test set-up.

Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter, which must be switched on
before ``triton`` is first imported: that is why this happens here, at collection time.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
