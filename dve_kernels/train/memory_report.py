"""Peak tensor memory of one training step (network + DVE loss, forward and backward) for a preset, with the
dense formulation and with the fused backends, computed on the ``meta`` device (nothing is allocated or run).

    python -m dve_kernels.train.memory_report --preset highres [--batch-size 16]

The fused backend's registered fake implementation allocates exactly what its kernels return, so the numbers are
the tensors the step holds; the dense numbers are those of ``dve_kernels.reference`` (the original formulation).
"""

from __future__ import annotations

import argparse
import json
from typing import Optional, Sequence

import torch

import dve_kernels

from .. import reference
from ..memory import AllocationRecorder
from .config import PRESETS, TrainConfig
from .models import build_model

__all__ = ["step_peak_bytes", "main"]


def step_peak_bytes(config: TrainConfig, formulation: str, loss_only: bool = False) -> dict:
    """Peak bytes of live tensors during one step: ``formulation`` is ``"dense"`` or ``"fused"``.

    With ``loss_only`` the embeddings are a leaf tensor (the network is left out).
    """
    pairs, size = config.batch_size, config.input_size
    images = torch.empty(2 * pairs, 3, size, size, device="meta")
    grid = torch.empty(pairs, size, size, 2, device="meta")
    with AllocationRecorder() as recorder:
        if loss_only:
            side = size // 2
            feats = torch.empty(2 * pairs, config.embedding_dim, side, side, device="meta", requires_grad=True)
        else:
            model = build_model(config).to("meta")
            feats = model(images)
        if formulation == "dense":
            loss = reference.dense_correlation_loss_dve(feats, {"grid": grid}, pow=config.pow, num_aux=config.num_aux)
        else:
            # meta tensors run the fused ops' fake kernels: exactly the tensors the kernels return
            loss = dve_kernels.dense_correlation_loss_dve(feats, {"grid": grid}, pow=config.pow, num_aux=config.num_aux,
                                                          backend="cpu")
        loss.backward()
    return {"peak_bytes": recorder.peak_bytes, "largest_tensor_elements": recorder.largest_numel,
            "largest_tensor": str(recorder.largest_record)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dve_kernels.train.memory_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="highres")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--loss-only", action="store_true", help="leave the network out")
    args = parser.parse_args(argv)
    values = dict(PRESETS[args.preset])
    if args.batch_size:
        values["batch_size"] = args.batch_size
    config = TrainConfig.from_dict(values)
    side = config.input_size // 2
    report = {"preset": args.preset, "model": config.model, "input": config.input_size,
              "embedding": f"{side}x{side}x{config.embedding_dim}", "pairs_per_step": config.batch_size,
              "loss_only": args.loss_only}
    for formulation in ("dense", "fused"):
        try:
            result = step_peak_bytes(config, formulation, loss_only=args.loss_only)
        except Exception as error:  # e.g. the fused backend is not built here
            result = {"error": f"{type(error).__name__}: {error}"}
        if "peak_bytes" in result:
            result["peak_gib"] = round(result["peak_bytes"] / 2 ** 30, 3)
        report[formulation] = result
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
