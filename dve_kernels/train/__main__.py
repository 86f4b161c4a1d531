"""``python -m dve_kernels.train``: train DVE embeddings, evaluate them and draw them (see ``--help``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from .checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from .config import build_parser, config_from_args
from .data import DatasetError
from .loop import train


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out or f"runs/{args.preset or 'demo'}")
    try:
        base = None
        if args.resume is not None:  # the run's own settings, then the flags given now (checked by the trainer)
            path = out / CHECKPOINT_NAME if args.resume == "auto" else Path(args.resume)
            if args.resume == "auto" and not path.exists():
                raise CheckpointError(f"nothing to resume in {out}: it has no {CHECKPOINT_NAME}")
            base = load_checkpoint(path)["config"]
        config = config_from_args(args, base=base)
        summary = train(config, out, resume=args.resume, evaluate=not args.no_eval)
    except (ValueError, CheckpointError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if "metrics" in summary:
        m = summary["metrics"]
        print(json.dumps({k: m[k] for k in ("same_identity_error", "different_identity_error",
                                            "landmark_error_iod")}))
        for key, path in summary["paths"].items():
            print(f"{key}: {path}")
    print(f"checkpoint: {summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
