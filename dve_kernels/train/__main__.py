"""``python -m dve_kernels.train``: train DVE embeddings, evaluate them and draw them (see ``--help``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from .config import build_parser, config_from_args
from .loop import train


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/{args.preset}")
    summary = train(config, out, resume=args.resume, evaluate=not args.no_eval)
    if "metrics" in summary:
        m = summary["metrics"]
        print(json.dumps({k: m[k] for k in ("same_identity_error", "different_identity_error",
                                            "landmark_error_iod")}))
        for key, path in summary["paths"].items():
            print(f"{key}: {path}")
    if "seconds" in summary and summary.get("checkpoint"):
        print(f"checkpoint: {summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
