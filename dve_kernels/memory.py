"""Memory accounting through ``TorchDispatchMode``: what the tests and benchmarks use to prove the memory promise.

:class:`AllocationRecorder` sees every tensor that an ATen or custom op returns (in forward and in backward, on any
device, the ``meta`` device included) and keeps:

- ``largest_numel``: the most elements any one tensor had (the SPEC's test: no tensor reaches ``N·M``);
- ``peak_bytes``: the peak of the bytes held by live tensor storages created inside the recorder;
- ``records``: ``(op name, shape)`` of every output, for error messages.

Running a computation on ``meta`` tensors under the recorder gives its tensor memory without computing anything,
which is how ``bench/`` finds the largest feature map each formulation can train at for a memory budget.
Scratch memory that a compiled kernel allocates internally (small per-thread tiles) is not a tensor and is not seen.
"""

from __future__ import annotations

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
