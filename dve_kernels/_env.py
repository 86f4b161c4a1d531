"""The environment switches the package reads, each parsed in one place (every layer may import this module)."""

from __future__ import annotations

import os


def triton_interpreter_requested() -> bool:
    """Whether ``TRITON_INTERPRET`` asks Triton to run kernels in its interpreter (CPU tensors). Triton reads it
    when it is imported: see ``dve_kernels.ops.interpreter_active`` for whether the imported Triton does."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
