"""Peak tensor memory of one training step (network + DVE loss, forward and backward) of a configuration, with
the dense formulation (``dve_kernels.reference``) and with the fused backends (their fake kernels allocate exactly
what the kernels return), on the ``meta`` device: ``python -m dve_kernels.train.memory_report --preset P [flags]``.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

import torch

import dve_kernels

from .. import reference
from ..memory import AllocationRecorder
from .config import TrainConfig, build_parser, config_from_args
from .models import build_model

__all__ = ["step_peak_bytes", "main"]


def step_peak_bytes(config: TrainConfig, formulation: str, loss_only: bool = False) -> dict:
    """Peak bytes of live tensors during one step: ``formulation`` is ``"dense"`` or ``"fused"``.

    With ``loss_only`` the embeddings are a leaf tensor (the network is left out).
    """
    pairs, size = config.batch_size, config.input_size
    images = torch.empty(2 * pairs, 3, size, size, device="meta")
    grid = torch.empty(pairs, size, size, 2, device="meta")
    loss_fn = reference.dense_correlation_loss_dve if formulation == "dense" else dve_kernels.dense_correlation_loss_dve
    backend = {} if formulation == "dense" else {"backend": "cpu"}  # on meta tensors: the fused ops' fake kernels
    with AllocationRecorder() as recorder:
        if loss_only:
            side = size // 2
            feats = torch.empty(2 * pairs, config.embedding_dim, side, side, device="meta", requires_grad=True)
        else:
            feats = build_model(config).to("meta")(images)
        loss_fn(feats, {"grid": grid}, pow=config.pow, num_aux=config.num_aux, **backend).backward()
    return {"peak_bytes": recorder.peak_bytes, "largest_tensor_elements": recorder.largest_numel,
            "largest_tensor": str(recorder.largest_record)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    parser.prog, parser.description = "python -m dve_kernels.train.memory_report", __doc__
    parser.set_defaults(preset="highres")
    parser.add_argument("--loss-only", action="store_true", help="leave the network out")
    args = parser.parse_args(argv)
    config = config_from_args(args)
    side = config.input_size // 2
    report = {"preset": args.preset, "model": config.model, "input": config.input_size,
              "embedding": f"{side}x{side}x{config.embedding_dim}", "pairs_per_step": config.batch_size,
              "loss_only": args.loss_only}
    for formulation in ("dense", "fused"):
        try:
            result = step_peak_bytes(config, formulation, loss_only=args.loss_only)
            result["peak_gib"] = round(result["peak_bytes"] / 2 ** 30, 3)
        except Exception as error:  # e.g. the fused backend is not built here
            result = {"error": f"{type(error).__name__}: {error}"}
        report[formulation] = result
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
