"""The drop-in DVE loss, forward + backward on the C++ backend, timed side by side for several package trees.

    python -m bench.side_by_side NAME=PATH [NAME=PATH ...] [--sides 35 48] [--rounds 2]

Each ``PATH`` is a directory holding a built ``dve_kernels`` package (a checkout or ``git worktree`` with its
extension built in place). The trees run in turns, each in a fresh process on one thread, ``--rounds`` times;
the best of 3 calls per process and of all rounds is printed, with the ratio to the first tree. On a shared
machine only the ratios mean much.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
import dve_kernels
out = {}
for side in map(int, sys.argv[2].split(",")):
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        feats = torch.randn(16, 64, side, side, dtype=dtype, requires_grad=True)
        grid = torch.rand(8, side, side, 2, dtype=dtype) * 2 - 1
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            dve_kernels.dense_correlation_loss_dve(feats, {"grid": grid}, backend="cpu").backward()
            best = min(best, time.perf_counter() - start)
        out[f"{side}x{side} {str(dtype).removeprefix('torch.')}"] = best
print(json.dumps(out))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", metavar="NAME=PATH", help="a name and a tree holding dve_kernels")
    parser.add_argument("--sides", type=int, nargs="+", default=[35, 48], help="feature-map sides (B=8, C=64)")
    parser.add_argument("--rounds", type=int, default=2, help="turns per tree")
    args = parser.parse_args(argv)
    trees = []
    for item in args.trees:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"expected NAME=PATH, got {item!r}")
        trees.append((name, path))
    best: dict[tuple[str, str], float] = {}
    for round_ in range(args.rounds):
        for name, path in trees:
            print(f"round {round_ + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
            run = subprocess.run([sys.executable, "-c", _CHILD, path, ",".join(map(str, args.sides))],
                                 capture_output=True, text=True)
            if run.returncode:
                print(run.stderr, file=sys.stderr)
                return run.returncode
            for case, seconds in json.loads(run.stdout).items():
                best[case, name] = min(best.get((case, name), float("inf")), seconds)
    cases = list(dict.fromkeys(case for case, _ in best))
    print("| case | " + " | ".join(name for name, _ in trees) + " |")
    print("|---|" + "---|" * len(trees))
    for case in cases:
        first = best[case, trees[0][0]]
        cells = [f"{best[case, name]:.3f} s ({best[case, name] / first:.2f}x)" for name, _ in trees]
        print(f"| {case} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
