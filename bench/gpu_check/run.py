"""The command: the time budget, the sections in order, the command line and ``main``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

from .accuracy import accuracy, accuracy_cases, determinism
from .common import KERNEL_SHAPE, KERNEL_VARIANTS, PASSES, SECTION_ESTIMATES_S, SECTIONS, ops_adapter
from .report import environment, write_report
from .timing import dve, kernels, load_model_rows, memory, model_spec_name, warmup, warmup_cases

DEFAULT_BUDGET_S = 390.0
_DESCRIPTION = "One command for the day a GPU is available: accuracy, determinism, memory and speed on CUDA."


class Budget:
    """Seconds left of ``total``, on ``clock`` (injectable for tests)."""

    def __init__(self, total: float, clock=time.monotonic):
        self.total, self.clock, self.start = float(total), clock, clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return self.total - self.elapsed()

    def allows(self, estimate: float) -> bool:
        return estimate <= self.remaining()


def run_sections(sections, budget: Budget, estimates=SECTION_ESTIMATES_S) -> dict:
    """Run ``(name, fn)`` in order while the budget allows; ``{name: record}`` with status ok / failed / skipped.

    ``fn()`` returns ``(passed, data)``. An exception fails that section only (its traceback tail is kept)."""
    records = {}
    for name, fn in sections:
        estimate = estimates.get(name, 0.0)
        if not budget.allows(estimate):
            records[name] = {"status": "skipped", "reason": f"time budget: {budget.remaining():.0f} s left, "
                                                             f"section estimated at {estimate:.0f} s"}
            continue
        start = budget.clock()
        try:
            passed, data = fn()
            records[name] = {"status": "ok" if passed else "failed", "data": data}
        except Exception as error:  # recorded; the other sections still run
            records[name] = {"status": "failed", "error": f"{type(error).__name__}: {error}"[:2000],
                             "traceback": traceback.format_exc()[-3000:]}
        records[name]["seconds"] = round(budget.clock() - start, 1)
        print(f"gpu_check: {name}: {records[name]['status']} ({records[name]['seconds']} s, "
              f"{budget.remaining():.0f} s left)", flush=True)
    return records


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=_DESCRIPTION)
    parser.add_argument("--out", required=True, help="directory for gpu_check.json and gpu_check.md")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all sections")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes for the warm-up")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only these sections (repeatable)")
    parser.add_argument("--plan", action="store_true", help="check imports and the model file, print the plan, "
                                                            "run nothing (works without a GPU)")
    args = parser.parse_args(argv)
    if args.budget <= 0 or args.jobs < 1:
        parser.error(f"--budget must be > 0 and --jobs >= 1, got {args.budget} and {args.jobs}")
    return args


def plan(args) -> dict:
    """What would run: checks that everything the sections import is importable and the model file loads."""
    import dve_kernels  # noqa: F401

    from .. import kernel_report, providers  # noqa: F401

    launchers, kernel_names = ops_adapter()
    models = load_model_rows()
    names = [model_spec_name(p, d, KERNEL_SHAPE["channels"], dot) for p in PASSES for d, dot in KERNEL_VARIANTS]
    missing = [name for name in names if name not in models]
    return {"sections": list(args.only or SECTIONS), "budget_s": args.budget, "warmup_variants": len(warmup_cases()),
            "accuracy_cases": len(accuracy_cases()), "kernel_names": kernel_names, "model_rows_missing": missing,
            "estimated_s": sum(SECTION_ESTIMATES_S[s] for s in (args.only or SECTIONS))}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plan:
        print(json.dumps(plan(args), indent=1))
        return 0
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, torch.cuda.is_available() is False); "
              "nothing was measured", file=sys.stderr)
        return 2
    budget = Budget(args.budget)
    torch.backends.cuda.matmul.allow_tf32 = False  # the dense float32 comparisons must be IEEE float32
    torch.backends.cudnn.allow_tf32 = False
    model_rows = load_model_rows()

    available = {"warmup": lambda: warmup(args.jobs), "accuracy": accuracy, "determinism": determinism,
                 "memory": memory, "kernels": lambda: kernels(model_rows), "dve": dve}
    chosen = [(name, available[name]) for name in SECTIONS if not args.only or name in args.only]
    sections = run_sections(chosen, budget)
    result = {"environment": environment(), "budget_s": args.budget, "elapsed_s": budget.elapsed(),
              "sections": sections, "passed": all(r["status"] == "ok" for r in sections.values())}
    json_path, md_path = write_report(result, args.out)
    print(f"gpu_check: {'passed' if result['passed'] else 'FAILED'} in {budget.elapsed():.0f} s; wrote {json_path} "
          f"and {md_path}")
    return 0 if result["passed"] else 1
