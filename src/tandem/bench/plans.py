"""`tandem bench --plans 1,tp2,tp4,pp2`: one model shape under several placements on this
machine's GPUs, in one run, each beside its comm-aware ceiling and the speedup over one GPU.

Each plan runs in its own processes (`tandem.bench.parallel`: rank 0 there, the other ranks as
the cluster's runner processes), one after the other, so every plan has the GPUs to itself and
starts from empty memory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tandem.bench.report import bytes_read_per_token
from tandem.bench.shapes import named_shape
from tandem.errors import InvalidRequestError

PLAN_PATTERN = re.compile(r"^(1|tp[1-8]|pp[2-8]|auto)$")
NCCL_SAFETY = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def gpus_of(plan: str) -> int:
    return 1 if plan == "1" else int(plan[2:])


def placement_choice(shape: str) -> tuple[str, list[str]]:
    """The plan placement picks for this machine's GPUs (measured), as a plan name, with its
    explanation. A tensor-parallel-times-pipeline choice is named by its larger factor's plan."""
    from tandem.cluster.placement import Infeasible, PlacementRequest, place
    from tandem.cluster.topology import NodeInfo, Topology
    from tandem.model.shapes import shape_from_model_config
    from tandem.node.profile import profile_devices

    config, _ = named_shape(shape)
    with tempfile.TemporaryDirectory() as work:
        devices = tuple(d for d in profile_devices(Path(work)) if d.kind == "cuda")
    topology = Topology((NodeInfo("this-machine", "this machine", "127.0.0.1:0", devices),))
    placement = place(shape_from_model_config(config, shape), topology, PlacementRequest(context_length=2048))
    if isinstance(placement, Infeasible):
        return "1", [f"placement: {placement.reason}"]
    stages, members = len(placement.stages), max(len(stage.members) for stage in placement.stages)
    plan = "1" if stages == members == 1 else (f"tp{members}" if members > 1 else f"pp{stages}")
    return plan, placement.explain()


def parse_plans(text: str) -> list[str]:
    plans = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in plans if not PLAN_PATTERN.match(p)]
    if not plans or bad:
        raise InvalidRequestError(
            f"--plans takes 1, tpN or ppN (N up to 8), comma-separated; not {', '.join(bad)}"
        )
    return plans


def plan_file(results_dir: Path, shape: str, plan: str, suffix: str) -> Path:
    """Where one plan's report (json) or its processes' output (log) is kept."""
    return results_dir / f"{shape}-{plan}.{suffix}"


def run_plan(
    plan: str,
    shape: str,
    prompt_lengths: list[int],
    decode_tokens: int,
    concurrency: int,
    results_dir: Path,
    profile: bool = False,
) -> dict[str, Any]:
    """Run one plan to completion; its JSON report (and its processes' log) are kept in
    `results_dir` as soon as it ends, so a run cut short keeps the plans that finished."""
    output = plan_file(results_dir, shape, plan, "json")
    log = plan_file(results_dir, shape, plan, "log")
    command = [
        sys.executable,
        "-m",
        "tandem.bench.parallel",
        "--plan",
        plan,
        "--shape",
        shape,
        "--json",
        str(output),
        "--prompt-lengths",
        ",".join(map(str, prompt_lengths)),
        "--decode-tokens",
        str(decode_tokens),
        "--concurrency",
        str(concurrency),
        *(["--profile"] if profile else []),
    ]
    print(f"running plan {plan} of {shape} ...", file=sys.stderr, flush=True)
    with log.open("w") as log_file:
        result = subprocess.run(
            command, env={**os.environ, **NCCL_SAFETY}, stdout=log_file, stderr=subprocess.STDOUT
        )
    if result.returncode != 0 or not output.exists():
        tail = log.read_text().strip().splitlines()[-3:]
        report = {"plan": plan, "error": " | ".join(tail) or f"exit code {result.returncode}"}
    else:
        report = json.loads(output.read_text())
    rate = report.get("decode_tokens_per_second")
    print(
        f"  plan {plan}: "
        + (f"{rate:.1f} tokens/s" if rate else f"failed ({report.get('error', '')[:200]})"),
        file=sys.stderr,
        flush=True,
    )
    return report


def ceiling_tokens_per_second(report: dict[str, Any], read_bytes: int, num_layers: int) -> float:
    """Weight bytes over the GPUs' bandwidth, plus (tensor parallel) the all-reduce latency the
    group measured at load (a decode row with its norm) times the all-reduces per token: two a
    layer, the embedding's, and the head's gather."""
    gpus = report["gpus"]
    seconds = read_bytes / (report["copy_bandwidth"] * (gpus if report["plan"].startswith("tp") else 1))
    latency = report.get("all_reduce_seconds")
    if report["plan"].startswith("tp") and gpus > 1 and latency:  # measured on GPUs only
        seconds += (2 * num_layers + 2) * latency
    return 1.0 / seconds


def compare_plans(
    shape: str,
    plans: list[str],
    prompt_lengths: list[int],
    decode_tokens: int,
    concurrency: int = 0,
    results_dir: Path | None = None,
    profile: bool = False,
) -> list[str]:
    config, _ = named_shape(shape)
    read = bytes_read_per_token(config, 2)
    notes: list[str] = []
    if "auto" in plans:
        chosen, notes = placement_choice(shape)
        plans = [chosen if plan == "auto" else plan for plan in plans]
        notes = [f"placement's own choice on this machine: {chosen}", *("  " + line for line in notes)]
        plans = list(dict.fromkeys(plans))  # the choice may already be in the list
    results = results_dir or Path(tempfile.mkdtemp(prefix="tandem-bench-"))
    results.mkdir(parents=True, exist_ok=True)
    reports = [
        run_plan(plan, shape, prompt_lengths, decode_tokens, concurrency, results, profile) for plan in plans
    ]
    measured = [r for r in reports if "error" not in r]
    reference = next((r for r in measured if r["gpus"] == min(m["gpus"] for m in measured)), None)
    devices = sorted({r["device"] for r in measured}) or ["?"]
    lines = [
        f"{shape} on {', '.join(devices)}, batch 1 decode ({read / 1e9:.2f} GB of bfloat16 weights per token)",
        f"{'plan':>5} {'GPUs':>4} {'tokens/s':>9} {'speedup':>8} {'ceiling':>8} {'of ceiling':>10} "
        f"{'TTFT ms':>8}  all-reduce",
    ]
    for report in reports:
        if "error" in report:
            lines.append(f"{report['plan']:>5}  failed: {report['error'][:150]}")
            continue
        rate = report["decode_tokens_per_second"]
        ceiling = ceiling_tokens_per_second(report, read, config.num_layers)
        speedup = rate / reference["decode_tokens_per_second"] if reference else float("nan")
        longest = max(report["ttft_seconds"], key=int)
        latency = report.get("all_reduce_seconds")
        collective = (report.get("all_reduce") or "-") + (f", {latency * 1e6:.1f} us" if latency else "")
        lines.append(
            f"{report['plan']:>5} {report['gpus']:>4} {rate:>9.1f} {speedup:>7.2f}x {ceiling:>8.1f} "
            f"{rate / ceiling * 100:>9.0f}% {report['ttft_seconds'][longest] * 1e3:>8.1f}  {collective}"
        )
        if profile:
            lines.append(f"{'':>5} {'':>4} kernels in {plan_file(results, shape, report['plan'], 'log')}")
        if "aggregate_tokens_per_second" in report:
            lines.append(
                f"{'':>5} {'':>4} {report['concurrency']} requests together: "
                f"{report['aggregate_tokens_per_second']:.0f} tokens/s in aggregate"
            )
    if reference:
        lines.append(
            f"speedups are against plan {reference['plan']} ({reference['gpus']} GPU"
            f"{'s' if reference['gpus'] > 1 else ''}); TTFT is for the {max(prompt_lengths)}-token prompt"
        )
    lines.extend(notes)
    lines.append("JSON: " + json.dumps(reports))
    return lines
