"""The static kernel report: what every Triton kernel specialisation costs, read off its compiled code, no GPU needed.

For every entry of :func:`dve_kernels.ops.kernel_specializations`, compiled ahead of time for sm_80 and sm_90 on
the CPU (``triton.compile`` with a ``GPUTarget``; the same compilation as ``tests/test_triton_aot.py``):

- registers per thread and spill bytes (``ptxas -v``), shared memory per block (Triton's metadata);
- the hot loop's instruction mix: the innermost loop of the SASS (``nvdisasm``, shipped with Triton) that holds
  the softmax's ``MUFU.EX2`` (the steady-state one where a loop is unrolled over several tiles); its
  instructions, issued once per warp per iteration, cover ``BLOCK_N x BLOCK_M`` (u, v) pairs per tile, so per
  pair: MUFU operations (``n_MUFU · 32 lanes · num_warps / pairs``), tensor-core MMA instructions, FP32/FP64
  FMA-pipe instructions and warp issue slots (``n_instructions · num_warps / pairs``);
- a modelled H100 SXM bound in pairs/s for the sm_90 build: the smallest of the issue bound
  (4 warp-instructions per clock per SM), the MUFU bound (16 lanes per clock per SM, about 3.9e12 ops/s for the
  chip) and, for 16-bit data, the tensor-core bound (989 TFLOP/s dense at ``2·C_PAD`` flops per dot per pair;
  for float32 through the TF32 split (``_tf32x3_`` rows) 494.7 TFLOP/s TF32 at three dots per dot).

Calibration: the same model applied to a FlashAttention-style forward of published H100 speed
(:mod:`bench.calibration`, head dimension 64, bf16) predicts about 2.3x what Triton's tutorial kernel measures
(``calibration.json``); every bound is reported raw and divided by that factor. The model ignores: memory and L2
bandwidth and latency; occupancy and latency hiding (registers and shared memory per block decide how many warps an
SM holds, and the MMA -> softmax -> MMA dependency chain stalls a warp unless another covers it, which FA3 schedules
by hand and Triton does not); scoreboard waits on shared-memory and global loads; the code outside the hot loop
(prologue, epilogue, the partial last tile); wave quantisation and launch overhead; the sustained clock under
tensor-core load (below the 1.83 GHz assumed); FMA/ALU pipe throughput beyond issue slots; register-bank
conflicts. The calibration factor folds all of that into one number for a kernel of the same shape; it is a scale,
not a per-kernel correction.

Usage: ``python -m bench.kernel_report [--arch 80 --arch 90] [--filter fp32_c64] [--jobs 2]``; writes
``bench/results/static/kernel_report.json`` and ``kernel_report.md`` (committed, so every change to a kernel
shows its cost). ``--calibrate`` recompiles only the calibration kernel and rewrites ``calibration.json``;
``--from-json`` re-renders the markdown from the committed JSON without compiling anything; ``--merge`` compiles
only what ``--filter`` selects and replaces those rows of the committed JSON; ``--split-candidates`` compiles, instead
of the float32 IEEE specialisations it selects, their three-way TF32 split twins (``_tf32x3_``, which the launchers do
not use: the report shows both paths side by side). The committed rows: ``--merge --split-candidates --filter
_fp32_c64``. ``pytest bench/test_kernel_report.py`` checks it on the C = 64 specialisations.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dve_kernels._env import triton_interpreter_requested
from dve_kernels.ops._aot import compile_indexed

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "static")
CALIBRATION_PATH = os.path.join(OUT_DIR, "calibration.json")

# H100 SXM5 model. The clock is the one that makes 16 MUFU lanes x 132 SMs = 3.9e12 ops/s (DESIGN.md).
H100_SMS = 132
H100_CLOCK_HZ = 1.83e9
ISSUE_PER_CLOCK_PER_SM = 4
MUFU_LANES_PER_CLOCK_PER_SM = 16
H100_TENSOR_FLOPS_16BIT = 989e12
H100_TENSOR_FLOPS_TF32 = 494.7e12  # dense TF32 (the split runs three TF32 dots per float32 dot)
MUFU_CEILING = MUFU_LANES_PER_CLOCK_PER_SM * H100_SMS * H100_CLOCK_HZ
# Dots of length C_PAD per (u, v) pair in each pass (forward: logits (+ P·V); backward: recomputed logits, dP,
# and one or two gradient products).
DOTS_PER_PAIR = {"exchange_fwd": 2, "exchange_bwd_query": 3, "exchange_bwd_aux": 4,
                 "warp_loss_fwd": 1, "warp_loss_bwd_src": 2, "warp_loss_bwd_tgt": 2,
                 "attention_fwd": 2}  # the calibration kernel (bench/calibration.py): S = Q K^T and P V

_INSTRUCTION = re.compile(r"/\*([0-9a-f]+)\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def _nvdisasm() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")


def sass(cubin: bytes) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as handle:
            handle.write(cubin)
        return subprocess.run([_nvdisasm(), "-c", path], capture_output=True, text=True, check=True).stdout


def loops(text: str):
    """``(instructions, loops)``: every instruction's opcode, and each loop as ``(first, last)`` indices of a
    backward branch's target label and the branch itself."""
    opcodes, labels, branches = [], {}, []
    for line in text.splitlines():
        label = _LABEL.match(line.strip())
        if label:
            labels[label.group(1)] = len(opcodes)
            continue
        match = _INSTRUCTION.search(line)
        if not match:
            continue
        opcode = match.group(2)
        target = _TARGET.search(line)
        if opcode.startswith("BRA") and target:
            branches.append((len(opcodes), target.group(1)))
        opcodes.append(opcode)
    found = [(labels[t], i) for i, t in branches if t in labels and labels[t] < i]
    return opcodes, found


def classify(opcodes) -> dict:
    def count(*prefixes):
        return sum(1 for op in opcodes if op.startswith(prefixes))

    return {
        "instructions": len(opcodes),
        "mufu": count("MUFU"),
        "mufu_ex2": count("MUFU.EX2"),
        "mma": count("HMMA", "HGMMA", "DMMA", "IMMA"),
        "ffma_pipe": count("FFMA", "FMUL", "FADD"),
        "dfma_pipe": count("DFMA", "DMUL", "DADD"),
    }


def hot_loop(text: str, tiles_per_iteration: int = 1):
    """The innermost loop that computes the softmax's exponentials (``MUFU.EX2``); else the largest loop.

    A kernel whose steady-state loop is unrolled over several tiles (``tiles_per_iteration``) also has
    one-tile loops for the remainder: then the largest innermost exp loop is the steady state."""
    opcodes, found = loops(text)
    if not found:
        return None, 0

    def nested_in(first, last):
        return sum(1 for a, b in found if first <= a and b <= last and (a, b) != (first, last))

    with_exp = [(a, b) for a, b in found if any(op.startswith("MUFU.EX2") for op in opcodes[a:b + 1])]
    if with_exp and tiles_per_iteration > 1:
        innermost = [(a, b) for a, b in with_exp if not nested_in(a, b)] or with_exp
        first, last = max(innermost, key=lambda ab: ab[1] - ab[0])
    elif with_exp:
        first, last = min(with_exp, key=lambda ab: ab[1] - ab[0])
    else:
        first, last = max(found, key=lambda ab: ab[1] - ab[0])
    return opcodes[first:last + 1], nested_in(first, last)


def pass_of(name: str) -> str:
    return next(p for p in sorted(DOTS_PER_PAIR, key=len, reverse=True) if name.startswith(p))


def analyse(spec, arch: int, compiled) -> dict:
    """Registers/spills/shared (from the AOT compile) plus the hot loop's cost per (u, v) pair."""
    tiles = getattr(spec, "tiles_per_iteration", 1)
    body, nested = hot_loop(sass(compiled.asm["cubin"]), tiles)
    pairs = spec.constexprs["BLOCK_N"] * spec.constexprs["BLOCK_M"] * tiles
    mix = classify(body or [])
    per_pair = {
        "issue_slots_per_pair": mix["instructions"] * spec.num_warps / pairs,
        "mufu_per_pair": mix["mufu"] * 32 * spec.num_warps / pairs,
        "mma_per_pair": mix["mma"] * spec.num_warps / pairs,
        "fma_pipe_per_pair": (mix["ffma_pipe"] + mix["dfma_pipe"]) * 32 * spec.num_warps / pairs,
    }
    report = {"hot_loop": mix, "nested_loops_in_hot_loop": nested, **per_pair}
    if arch == 90:
        clock = H100_CLOCK_HZ * H100_SMS
        bounds = {"issue_bound": ISSUE_PER_CLOCK_PER_SM * clock / max(per_pair["issue_slots_per_pair"], 1e-12)}
        if per_pair["mufu_per_pair"]:
            bounds["mufu_bound"] = MUFU_LANES_PER_CLOCK_PER_SM * clock / per_pair["mufu_per_pair"]
        depth = spec.constexprs.get("C_PAD", spec.constexprs.get("HEAD_DIM"))
        flops = 2 * depth * DOTS_PER_PAIR[pass_of(spec.name)]
        if "fp16" in spec.name or "bf16" in spec.name:
            bounds["tensor_bound"] = H100_TENSOR_FLOPS_16BIT / flops
        elif "_tf32x3_" in spec.name:
            bounds["tensor_bound"] = H100_TENSOR_FLOPS_TF32 / (3 * flops)
        report.update(bounds)
        report["modelled_pairs_per_s"] = min(bounds.values())
        report["limited_by"] = min(bounds, key=bounds.get).replace("_bound", "")
    return report


def calibrate(path: str = CALIBRATION_PATH) -> dict:
    """Model the calibration kernel (bench/calibration.py) on sm_90 and divide by its published speed.

    The factor is the most optimistic modelled configuration over the Triton tutorial's measured pairs/s (the
    tutorial's autotuner keeps its fastest configuration; dividing the best model by it errs towards a larger
    factor, i.e. lower calibrated bounds). Writes ``path`` and returns what it wrote."""
    from dve_kernels.ops._aot import compile_specialization

    from . import calibration

    rows = []
    for spec in calibration.specializations():
        report, compiled = compile_specialization(spec, 90, return_compiled=True)
        report.update(analyse(spec, 90, compiled))
        rows.append(report)
    best = max(rows, key=lambda row: row["modelled_pairs_per_s"])
    published = calibration.PUBLISHED_PAIRS_PER_S
    result = {
        "kernel": "bench/calibration.py _attention_fwd_kernel (bf16, head dim 64, non-causal)",
        "rows": rows, "published": published, "calibrated_against": calibration.CALIBRATE_AGAINST,
        "modelled_pairs_per_s": best["modelled_pairs_per_s"], "modelled_config": best["name"],
        "model_over_published": {key: best["modelled_pairs_per_s"] / value["pairs_per_s"]
                                 for key, value in published.items()},
    }
    result["factor"] = result["model_over_published"][calibration.CALIBRATE_AGAINST]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(result, handle, indent=1)
    load_calibration.cache_clear()
    return result


@functools.lru_cache(maxsize=None)
def load_calibration(path: str = CALIBRATION_PATH) -> dict | None:
    """The committed calibration (see :func:`calibrate`), or None when there is none."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def calibrated(value, calibration: dict | None = None):
    """A modelled pairs/s divided by the calibration factor (None when either is missing)."""
    calibration = calibration if calibration is not None else load_calibration()
    if value is None or not calibration:
        return None
    return value / calibration["factor"]


def analyse_with_tiles(spec, arch: int, compiled) -> dict:
    """:func:`analyse`, plus the specialisation's tile (what each worker of :func:`build` adds to a compile)."""
    return {**analyse(spec, arch, compiled), "block_n": spec.constexprs["BLOCK_N"], "block_m": spec.constexprs["BLOCK_M"]}


def split_twin(spec):
    """The float32 IEEE specialisation ``spec`` with the three-way TF32 split for its dots (``DOT="tf32x3"``, named
    ``_tf32x3_``): a candidate for ``"highest"`` that the launchers do not use (see docs/gpu.md), compiled only for
    this report, on the same tiles."""
    return dataclasses.replace(spec, name=spec.name.replace("_fp32_", "_tf32x3_"),
                               constexprs=dict(spec.constexprs, DOT="tf32x3"))


def build(archs=(80, 90), name_filter: str = "", jobs: int = os.cpu_count() or 1, ragged: bool = False,
          split_candidates: bool = False) -> list[dict]:
    """Compile and analyse the specialisations whose name contains ``name_filter``: the ``EVEN_C`` ones (C a power
    of two from 16 on, the fast path the performance targets are about), plus the ``_ragged`` twins if asked.
    ``split_candidates``: instead, the :func:`split_twin` of each float32 IEEE one among them."""
    if triton_interpreter_requested():
        raise RuntimeError("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    from dve_kernels.ops import kernel_specializations

    work = [(i, arch) for arch in archs for i, spec in enumerate(kernel_specializations())
            if name_filter in spec.name and (ragged or not spec.name.endswith("_ragged"))
            and (not split_candidates or "_fp32_c" in spec.name)]
    job = functools.partial(compile_indexed, then=analyse_with_tiles, variant=split_twin if split_candidates else None)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(job, work))


def _fmt(value, digits=2):
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}e}" if value >= 1e5 else f"{value:.{digits}f}"
    return str(value)


def _bounds_cell(row: dict, factor: float | None) -> str:
    """``issue / MUFU / tensor`` bounds of one row, divided by ``factor`` when given (blank: no such bound)."""
    cells = []
    for key in ("issue_bound", "mufu_bound", "tensor_bound"):
        value = row.get(key)
        cells.append(_fmt(value / factor if value is not None and factor else value) or "-")
    return " / ".join(cells)


def calibration_markdown(calibration: dict | None) -> list[str]:
    if not calibration:
        return ["No calibration (run `python -m bench.kernel_report --calibrate`): the bounds below are raw.", ""]
    lines = ["## Calibration", "",
             f"The model applied to {calibration['kernel']}, compiled for sm_90 (`bench/calibration.py`):", "",
             "| configuration | regs | spills | issue / MUFU / tensor bound | modelled pairs/s | limited by |",
             "|---|---|---|---|---|---|"]
    for row in calibration["rows"]:
        lines.append(f"| {row['name']} | {row['registers']} | {row['spill_stores']}/{row['spill_loads']} | "
                     f"{_bounds_cell(row, None)} | {_fmt(row['modelled_pairs_per_s'])} | {row['limited_by']} |")
    lines += ["", "| published (H100 SXM, d = 64, forward) | pairs/s | TFLOP/s | model / published | source |",
              "|---|---|---|---|---|"]
    for key, value in calibration["published"].items():
        lines.append(f"| {key} | {_fmt(value['pairs_per_s'])} | {value['tflops']:.0f} | "
                     f"{calibration['model_over_published'][key]:.2f} | {value['source']} |")
    lines += ["", f"Calibration factor: **{calibration['factor']:.2f}** (best modelled configuration "
                  f"`{calibration['modelled_config']}`, {_fmt(calibration['modelled_pairs_per_s'])} pairs/s, over "
                  f"{calibration['calibrated_against']}). Calibrated = modelled / {calibration['factor']:.2f}.",
              "The model ignores memory/L2 bandwidth and latency, occupancy and latency hiding (the MMA -> softmax",
              "-> MMA dependency chain), load scoreboard waits, code outside the hot loop, wave quantisation, the",
              "sustained clock under tensor-core load, ALU pipe throughput beyond issue slots and register-bank",
              "conflicts (see the module docstring of bench/kernel_report.py).", ""]
    return lines


def float32_paths_markdown(rows: list[dict], calibration: dict | None) -> list[str]:
    """sm_90 float32 rows side by side: IEEE FMA dots (``_fp32_``) against the TF32 split (``_tf32x3_``)."""
    by_name = {row["name"]: row for row in rows if row.get("arch") == 90 and "error" not in row}
    pairs = [(row, by_name.get(row["name"].replace("_fp32_", "_tf32x3_"))) for row in by_name.values()
             if "_fp32_" in row["name"]]
    pairs = [(ieee, split) for ieee, split in pairs if split]
    if not pairs:
        return []
    lines = ["## float32: IEEE FMA dots against the three-way TF32 split (sm_90, modelled H100 pairs/s)", "",
             "| kernel | IEEE raw | IEEE calibrated | IEEE limited by | split raw | split calibrated | split limited by "
             "| split / IEEE |", "|---|---|---|---|---|---|---|---|"]
    for ieee, split in pairs:
        a, b = ieee.get("modelled_pairs_per_s"), split.get("modelled_pairs_per_s")
        lines.append(f"| {ieee['name'].replace('_fp32_', '_<fp32>_')} | {_fmt(a)} | {_fmt(calibrated(a, calibration))} | "
                     f"{ieee.get('limited_by', '')} | {_fmt(b)} | {_fmt(calibrated(b, calibration))} | "
                     f"{split.get('limited_by', '')} | {_fmt(b / a) if a and b else ''} |")
    return lines + [""]


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with every row of ``new`` in place of the one of the same (name, arch), or appended."""
    fresh = {(row["name"], row["arch"]): row for row in new}
    merged = [fresh.pop((row["name"], row["arch"]), row) for row in old]
    return merged + [row for row in new if (row["name"], row["arch"]) in fresh]


def markdown(rows: list[dict], calibration: dict | None = None) -> str:
    calibration = calibration if calibration is not None else load_calibration()
    factor = calibration["factor"] if calibration else None
    header = ("| kernel | arch | warps | BLOCK_N x BLOCK_M | regs | spills (st/ld B) | shared KiB | hot-loop instr | "
              "MUFU/pair | MMA/pair | FMA-pipe/pair | issue slots/pair | issue / MUFU / tensor bound (raw) | "
              "modelled H100 pairs/s (raw) | same ÷ calibration | calibrated H100 pairs/s | limited by |")
    lines = [
        "# Static kernel report",
        "",
        "Generated by `python -m bench.kernel_report` (Triton's compiler on the CPU, no GPU). Per pair = per (u, v)",
        "pair of the hot loop. Modelled H100 bound: min(issue, MUFU, tensor-core) for the sm_90 build; the MUFU",
        f"ceiling of the chip is {MUFU_CEILING:.2e} ops/s (one exp per pair caps a pass at that many pairs/s).",
        "Every bound is shown raw and divided by the calibration factor below.",
        "",
        *calibration_markdown(calibration),
        *float32_paths_markdown(rows, calibration),
        "## Kernels",
        "",
        header,
        "|" + "|".join(["---"] * (header.count("|") - 1)) + "|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['name']} | {row['arch']} | error: {row['error'][:120]} |")
            continue
        modelled = row.get("modelled_pairs_per_s")
        lines.append("| " + " | ".join([
            row["name"], str(row["arch"]), str(row["num_warps"]), f"{row['block_n']} x {row['block_m']}",
            _fmt(row["registers"]), f"{row['spill_stores']}/{row['spill_loads']}", _fmt(row["shared"] / 1024, 1),
            str(row["hot_loop"]["instructions"]), _fmt(row["mufu_per_pair"]), _fmt(row["mma_per_pair"], 3),
            _fmt(row["fma_pipe_per_pair"]), _fmt(row["issue_slots_per_pair"], 3),
            _bounds_cell(row, None) if modelled is not None else "",
            _fmt(modelled), _bounds_cell(row, factor) if modelled is not None and factor else "",
            _fmt(calibrated(modelled, calibration)), row.get("limited_by", ""),
        ]) + " |")
    return "\n".join(lines) + "\n"


def write(rows: list[dict], out_dir: str = OUT_DIR, calibration: dict | None = None) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "kernel_report.json"), "w") as handle:
        json.dump(rows, handle, indent=1)
    with open(os.path.join(out_dir, "kernel_report.md"), "w") as handle:
        handle.write(markdown(rows, calibration))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", choices=(80, 90))
    parser.add_argument("--filter", default="", help="only specialisations whose name contains this")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ragged", action="store_true", help="also the variants for C not a power of two")
    parser.add_argument("--out", default=OUT_DIR)
    parser.add_argument("--calibrate", action="store_true", help="recompile the calibration kernel first")
    parser.add_argument("--from-json", action="store_true",
                        help="re-render the markdown from OUT/kernel_report.json, compiling nothing else")
    parser.add_argument("--merge", action="store_true",
                        help="replace (or add) only the compiled rows in OUT/kernel_report.json, keep the others")
    parser.add_argument("--split-candidates", action="store_true",
                        help="compile the three-way TF32 split twin (_tf32x3_) of each float32 IEEE specialisation "
                             "instead (with --merge: beside the committed rows)")
    args = parser.parse_args(argv)
    if triton_interpreter_requested():
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    calibration = calibrate(os.path.join(args.out, "calibration.json")) if args.calibrate else \
        load_calibration(os.path.join(args.out, "calibration.json"))
    if args.from_json:
        with open(os.path.join(args.out, "kernel_report.json")) as handle:
            rows = json.load(handle)
    else:
        rows = build(tuple(args.arch or (80, 90)), args.filter, args.jobs, args.ragged, args.split_candidates)
        if args.merge:
            with open(os.path.join(args.out, "kernel_report.json")) as handle:
                rows = merge_rows(json.load(handle), rows)
    write(rows, args.out, calibration)
    print(markdown(rows, calibration))
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
