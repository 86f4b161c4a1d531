"""Memory accounting through ``TorchDispatchMode``: what the tests and benchmarks use to prove the memory promise.

:class:`AllocationRecorder` sees every tensor that an ATen or custom op returns (in forward and in backward, on any
device, the ``meta`` device included) and keeps:

- ``largest_numel``: the most elements any one tensor had (docs/contract.md section 4's test: no tensor reaches ``N·M``);
- ``peak_bytes``: the peak of the bytes held by live tensor storages created inside the recorder;
- ``records``: ``(op name, shape)`` of every output, for error messages.

Running a computation on ``meta`` tensors under the recorder gives its tensor memory without computing anything.
What a compiled kernel allocates internally is not a tensor and is not seen: the C++ backward passes keep
gradient partial sums of up to ``ceil(8 / B)·B·M·C`` floats (at B = 8 as much as one ``(B, M, C)`` tensor) besides
per-thread tiles, among them the backward's kept tiles (at most 32 MiB a thread, csrc/backward.h). :func:`peak_rss` sees everything: it runs a statement in a fresh Python process and
reports the peak resident memory it added, which is what ``bench/`` uses for the CPU memory claims.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class AllocationRecorder(TorchDispatchMode):
    """Record the outputs of every op run inside ``with AllocationRecorder() as recorder:``."""

    def __init__(self):
        super().__init__()
        self.largest_numel = 0
        self.largest_record = None
        self.records: list[tuple[str, tuple[int, ...]]] = []
        self.live_bytes = 0
        self.peak_bytes = 0
        self._storages: dict[int, list] = {}  # storage key -> [nbytes, number of live tensors using it]

    def _release(self, key: int) -> None:
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live_bytes -= entry[0]
            del self._storages[key]

    def _track(self, name: str, tensor: torch.Tensor) -> None:
        shape = tuple(tensor.shape)
        self.records.append((name, shape))
        if tensor.numel() > self.largest_numel:
            self.largest_numel = tensor.numel()
            self.largest_record = (name, shape)
        storage = tensor.untyped_storage()
        key = storage._cdata
        entry = self._storages.get(key)
        if entry is None:
            entry = self._storages[key] = [storage.nbytes(), 0]
            self.live_bytes += entry[0]
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        entry[1] += 1
        weakref.finalize(tensor, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            # In-place ops return their input: already counted.
            if isinstance(tensor, torch.Tensor) and id(tensor) not in inputs:
                self._track(str(func), tensor)
        return out

    def largest_description(self) -> str:
        return f"{self.largest_record[0]} -> {self.largest_record[1]}" if self.largest_record else "nothing"


_RSS_CHILD = """
import gc, json, re

def _status(field):
    with open("/proc/self/status") as handle:
        return int(re.search(field + r":\\s+(\\d+) kB", handle.read()).group(1)) * 1024

{setup}
gc.collect()
base = _status("VmRSS")
try:  # reset the high-water mark to the current RSS (Linux 4.0+), so that only the statement counts
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    reset = True
except OSError:
    reset = False
{statement}
print("DVE_PEAK_RSS " + json.dumps({{"base": base, "peak": _status("VmHWM"), "reset": reset}}))
"""


def peak_rss(setup: str, statement: str, *, env: dict | None = None, timeout: float = 3600) -> dict:
    """Peak resident memory that ``statement`` adds, measured in a fresh Python process (Linux).

    ``setup`` runs first (imports, inputs, a warm-up); then the process's resident set is read (``base``), its
    high-water mark reset, ``statement`` run and the high-water mark read (``peak``). Returns
    ``{"base", "peak", "extra"}`` in bytes, ``extra = peak - base``: everything the statement allocated at its peak,
    tensors and the kernels' internal scratch alike. Where the high-water mark cannot be reset, ``peak`` is the
    process's whole peak and ``extra`` an upper bound (``"reset": False``).
    """
    code = _RSS_CHILD.format(setup=textwrap.dedent(setup), statement=textwrap.dedent(statement))
    child_env = dict(os.environ if env is None else env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child_env["PYTHONPATH"] = root + os.pathsep + child_env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env,
                            timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("DVE_PEAK_RSS ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"peak_rss: the measuring process failed (exit {result.returncode}):\n"
                           f"{result.stderr[-3000:]}")
    figures = json.loads(lines[-1].split(" ", 1)[1])
    figures["extra"] = figures["peak"] - figures["base"]
    return figures
