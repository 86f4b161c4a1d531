"""The report: the machine's description and the markdown beside the JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time

from .common import SECTIONS


def environment() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "host": platform.node(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError as error:
        info["triton"] = f"missing ({error})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"sm_{props.major}{props.minor}", sms=props.multi_processor_count,
                    gpu_memory_bytes=props.total_memory)
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError, IndexError):
        info["driver"] = "unknown"
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        timeout=10, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        info["commit"] = "unknown"
    return info


def _e(value):
    return "" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# gpu_check: {env.get('gpu', 'no GPU')}", "",
             f"GPU {env.get('gpu', '?')} ({env.get('capability', '?')}, {env.get('sms', '?')} SMs), driver "
             f"{env.get('driver', '?')}, torch {env.get('torch', '?')} (CUDA {env.get('cuda_runtime', '?')}), "
             f"Triton {env.get('triton', '?')}, commit {env.get('commit', '?')}, {env.get('time_utc', '')}; "
             f"{result['elapsed_s']:.0f} s of a {result['budget_s']:.0f} s budget. Overall: "
             f"**{'passed' if result['passed'] else 'FAILED'}**.", "", "| section | status | seconds | note |",
             "|---|---|---|---|"]
    for name in SECTIONS:
        record = result["sections"].get(name, {"status": "not run"})
        note = record.get("reason") or record.get("error", "")
        lines.append(f"| {name} | {record['status']} | {_e(record.get('seconds'))} | {note[:160]} |")
    sections = result["sections"]
    accuracy = sections.get("accuracy", {}).get("data")
    if accuracy:
        lines += ["", "## Accuracy against float64 (max abs error; bound: tests/_tolerance.py, 4 x the dense error over the input's "
                  "one-ulp neighbourhood, or the floor)", "",
                  "| op | shape B,N,M,C | dtype | fp32 dot | pow | value fused / dense / bound | grad a | grad b | pass |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for case in accuracy["cases"]:
            cells = [" / ".join(_e(c[k]) for k in ("fused_error", "dense_error", "bound"))
                     for c in (case["checks"][k] for k in ("value", "grad_a", "grad_b"))]
            lines.append(f"| {case['op']} | {','.join(map(str, case['shape']))} | {case['dtype']} | "
                         f"{case.get('dot') or ''} | {_e(case['pow'])} | {' | '.join(cells)} | {'yes' if case['passed'] else '**no**'} |")
    for name in ("determinism", "memory"):
        data = sections.get(name, {}).get("data")
        if data:
            lines += ["", f"{name}: `{json.dumps(data)}`"]
    kernel_data = sections.get("kernels", {}).get("data")
    if kernel_data:
        shape = kernel_data["shape"]
        lines += ["", f"## Kernels at B = {shape['batch']}, N = {shape['n']}, M = {shape['m']}, C = {shape['channels']}"
                  " ((u, v) pairs/s; model: bench/results/static/kernel_report.json, sm_90, H100 SXM)", "",
                  "| kernel | dtype | fp32 dot | ms | measured pairs/s | modelled (raw) | modelled / calibration | measured / "
                  "calibrated | model limited by | timed |", "|---|---|---|---|---|---|---|---|---|---|"]
        for row in kernel_data["rows"]:
            lines.append(f"| {row['pass']} | {row['dtype']} | {row.get('dot') or ''} | {_e(row['ms'])} | {_e(row['pairs_per_s'])} | "
                         f"{_e(row['modelled_pairs_per_s'])} | {_e(row['calibrated_pairs_per_s'])} | "
                         f"{_e(row.get('measured_over_calibrated'))} | {row.get('limited_by') or ''} | "
                         f"{row['timed']} |")
    dve_data = sections.get("dve", {}).get("data")
    if dve_data:
        lines += ["", "## DVE loss forward + backward (B = 8, C = 64)", "",
                  "| dtype | side | provider | status | median ms | peak extra MiB | speed-up vs dense |",
                  "|---|---|---|---|---|---|---|"]
        for row in dve_data["rows"]:
            peak = row.get("peak_extra_bytes")
            lines.append(f"| {row['dtype']} | {row['side']}² | {row['provider']} | {row['status']} | "
                         f"{_e(row.get('median_ms'))} | {_e(peak / 2**20 if peak is not None else None)} | "
                         f"{_e(row.get('speedup_vs_dense'))} |")
    return "\n".join(lines) + "\n"


def write_report(result: dict, out_dir: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path, md_path = os.path.join(out_dir, "gpu_check.json"), os.path.join(out_dir, "gpu_check.md")
    with open(json_path, "w") as handle:
        json.dump(result, handle, indent=1, default=str)
    with open(md_path, "w") as handle:
        handle.write(markdown(result))
    return json_path, md_path
