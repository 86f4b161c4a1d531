"""Checkpoints: atomic writes, loads that can never run code and say what is wrong, and loading a run.

A checkpoint holds only tensors and plain Python containers and is loaded with ``weights_only=True``. It is
written to ``.<name>.tmp<pid>`` in the same folder, flushed and moved into place with ``os.replace``, so a kill
never leaves a half-written checkpoint; a temporary file left by a kill is removed by the next run.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from .config import TrainConfig
from .models import build_model

__all__ = ["CheckpointError", "CHECKPOINT_NAME", "FORMAT", "save_checkpoint", "load_checkpoint", "load_run",
           "remove_stale_temporaries"]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 2
_REQUIRED = ("format", "config", "model", "optimizer", "scheduler", "epoch", "batch_index", "global_step")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not one of ours; the message names the file and the problem."""


def remove_stale_temporaries(folder: Path, name: str = CHECKPOINT_NAME) -> None:
    """Remove temporary checkpoint files left in ``folder`` by killed writes."""
    for path in Path(folder).glob(f".{name}.tmp*"):
        path.unlink(missing_ok=True)


def save_checkpoint(path, payload: dict) -> None:
    """Write ``payload`` atomically (a temporary file, flushed, then ``os.replace``); no temporary file remains."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path, map_location="cpu") -> dict:
    """A training checkpoint (``weights_only=True``), or :class:`CheckpointError` naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint {path} {what}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is truncated or not a PyTorch file (not a complete zip archive, "
                              f"{path.stat().st_size} bytes)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reasons = [line.strip().split(". ")[0] for line in str(error).splitlines() if "Unsupported" in line]
        raise CheckpointError(f"checkpoint {path} holds objects other than tensors and plain containers, so it "
                              f"was not written by dve_kernels.train; refusing to unpickle it "
                              f"({reasons[0] if reasons else type(error).__name__})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is truncated or not a PyTorch file "
                              f"({type(error).__name__}: {error})") from None
    missing = [key for key in _REQUIRED if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a dve_kernels.train checkpoint: it has no "
                              f"{', '.join(missing)}")
    if payload["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {payload['format']}; this version reads {FORMAT}")
    return payload


def load_run(path, map_location="cpu"):
    """``(config, model, checkpoint)`` of a run directory (or a checkpoint file): the one place that loads a run."""
    path = Path(path)
    ckpt = load_checkpoint(path / CHECKPOINT_NAME if path.is_dir() else path, map_location=map_location)
    config = TrainConfig.from_dict(ckpt["config"])
    model = build_model(config)
    model.load_state_dict(ckpt["model"])
    return config, model, ckpt
