"""Where a training step's time goes, by thread and function, from a sampling profile (Linux perf).

Trains the workload's MLP through hpctrain's Keras front end in a child process (two warm-up
epochs, then ``--epochs`` more); ``perf record`` samples that process for ``--seconds`` of those
epochs. The table lists, per thread, the functions it was seen in, as microseconds of that
thread's CPU time per training step (samples / sampling rate / steps in the window). Unlike
``profile_seed_step.py`` (``torch.profiler``: operators only, ~1 us added per call) this adds
nothing to the loop and sees inside the kernels: MKL's GEMM, the fused Adam kernel, the OpenMP
runtime's fork/join waits, the batch gather's copies. A thread's rows sum to its CPU time per
step; a thread that sleeps (futex) between parallel regions has fewer.

    .venv/bin/python benchmarks/perf_step_loop.py [--workload seed|mlp1024] [--threads 2] [--seconds 3] [--output FILE]

Needs ``perf`` (linux-tools) and permission to attach to a process (root, or
``kernel.perf_event_paranoid`` <= 1).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WORKLOADS  # noqa: E402
from reporting import print_and_save  # noqa: E402

READY = "PROFILE_READY"
# "  12.34%   1234  10419:python  libtorch_cpu.so  [.] symbol  -  -" (overhead, samples, tid:comm, dso,
# symbol, then columns perf may add, shown as "-")
REPORT_LINE = re.compile(r"^\s*([\d.]+)%\s+(\d+)\s+(\d+):\S+\s+(.+?)\s+\[[.k]\]\s+(.*?)(?:\s+-)*\s*$")


def train_child(workload_name: str, epochs: int, threads: int) -> None:
    """The profiled process: warms up, says so on stdout, trains, prints its epoch times as JSON.
    The thread count is fixed, so that the plan does not change it inside the sampled window."""
    import hpctrain as tf
    from common import make_dataset
    from profile_seed_step import EpochTimes
    from torch_common import hpctrain_mlp

    workload = WORKLOADS[workload_name]
    x, _, y = make_dataset(workload)
    model = hpctrain_mlp(workload, plan=tf.make_plan(threads=threads))
    model.fit(x, y, batch_size=workload.batch_size, epochs=2, verbose=0)
    print(READY, flush=True)
    times = EpochTimes()
    model.fit(x, y, batch_size=workload.batch_size, epochs=epochs, verbose=0, callbacks=[times.attach(tf)])
    plan = model.plan
    print(json.dumps({"epoch_seconds": times.seconds, "threads": plan.threads, "executor": plan.executor,
                      "step_loop": dict(plan.reasons).get("step_loop", "")}), flush=True)


def readable(symbol: str, dso: str) -> str:
    """A short name: unresolved addresses by library (libgomp's are its fork/join waits; "[JIT]" is
    machine code generated at run time, which on the CPU is oneDNN's matrix-multiply kernels)."""
    if dso.startswith("[JIT]"):
        return "[JIT] generated code (oneDNN's matrix-multiply kernels)"
    if re.fullmatch(r"0x[0-9a-f]+", symbol):
        return f"[{dso}]" + (" OpenMP runtime (waits at fork/join)" if dso.startswith("libgomp") else "")
    symbol = symbol.replace("(anonymous namespace)::", "").replace("at::native::", "").replace("at::internal::", "")
    return symbol if len(symbol) <= 80 else symbol[:77] + "..."


def sampled_rows(perf_data: str) -> list[tuple[int, str, int]]:
    """``(thread id, function, samples)`` for each function a thread was seen in."""
    report = subprocess.run(["perf", "report", "-i", perf_data, "--stdio", "--no-children", "-n",
                             "--sort", "pid,dso,symbol"], capture_output=True, text=True, check=True).stdout
    totals: dict[tuple[int, str], int] = {}
    for line in report.splitlines():
        match = REPORT_LINE.match(line)
        if match:
            key = (int(match[3]), readable(match[5], match[4]))
            totals[key] = totals.get(key, 0) + int(match[2])
    return [(tid, name, samples) for (tid, name), samples in totals.items()]


def profile(args) -> tuple[dict, list[tuple[int, str, int]], int]:
    """Runs the child, samples it for ``args.seconds``; returns its report, the rows and its pid."""
    child = subprocess.Popen([sys.executable, __file__, "--child", "--workload", args.workload,
                              "--epochs", str(args.epochs), "--threads", str(args.threads)],
                             stdout=subprocess.PIPE, text=True)
    for line in child.stdout:
        if line.strip() == READY:
            break
    else:
        raise SystemExit(f"the training process ended before its warm-up was done (exit code {child.wait()})")
    with tempfile.TemporaryDirectory() as folder:
        perf_data = os.path.join(folder, "perf.data")
        subprocess.run(["perf", "record", "-q", "-F", str(args.frequency), "-p", str(child.pid), "-o", perf_data,
                        "--", "sleep", str(args.seconds)], check=True, stderr=subprocess.DEVNULL)
        rows = sampled_rows(perf_data)
    result = json.loads(child.stdout.read().strip().splitlines()[-1])
    if child.wait() != 0:
        raise SystemExit(f"the training process failed (exit code {child.returncode})")
    return result, rows, child.pid


def table(args, result: dict, rows, pid: int) -> str:
    workload = WORKLOADS[args.workload]
    step_seconds = statistics.median(result["epoch_seconds"]) / workload.steps_per_epoch
    steps_sampled = args.seconds / step_seconds
    per_step_us = 1e6 / args.frequency / steps_sampled
    lines = [f"{workload.name} workload ({workload.label}, batch {workload.batch_size}), hpctrain fit: "
             f"executor={result['executor']}, threads={result['threads']}, step_loop: {result['step_loop']}",
             f"{step_seconds * 1e6:.1f} us/step wall (median epoch of {len(result['epoch_seconds'])}); "
             f"perf at {args.frequency} Hz for {args.seconds:g} s (~{steps_sampled:.0f} steps)"]
    threads = sorted({tid for tid, _, _ in rows}, key=lambda tid: (tid != pid, tid))
    for number, tid in enumerate(threads):
        mine = sorted(((name, samples) for t, name, samples in rows if t == tid), key=lambda row: -row[1])
        total = sum(samples for _, samples in mine) * per_step_us
        role = "main thread (runs the loop)" if tid == pid else f"worker thread {number}"
        lines += ["", f"{role}: {total:.1f} us of CPU per step", f"{'function':82s} {'us/step':>8s}"]
        shown = mine[:args.rows]
        lines += [f"{name:82s} {samples * per_step_us:8.1f}" for name, samples in shown]
        rest = sum(samples for _, samples in mine[len(shown):]) * per_step_us
        lines.append(f"{'everything else':82s} {rest:8.1f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=[name for name, w in WORKLOADS.items() if w.model == "mlp"],
                        default="seed")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to sample (default 3)")
    parser.add_argument("--frequency", type=int, default=5000, help="samples per second per thread")
    parser.add_argument("--epochs", type=int, help="epochs trained after warm-up (default: enough for --seconds)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch's threads, fixed (default 2)")
    parser.add_argument("--rows", type=int, default=20, help="functions listed per thread (default 20)")
    parser.add_argument("--output", type=Path, help="also write the table here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        train_child(args.workload, args.epochs, args.threads)
        return
    if shutil.which("perf") is None:
        raise SystemExit("perf is not installed (Debian/Ubuntu: apt install linux-perf or linux-tools-generic)")
    if args.epochs is None:  # a generous guess: the sampling window must end inside training
        args.epochs = 60 if args.workload == "seed" else 8
    print_and_save(table(args, *profile(args)), args.output)


if __name__ == "__main__":
    main()
