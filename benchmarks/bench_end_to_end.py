"""Wall time and peak memory of the seed program, started as a user starts it: `python seed.py`.

Where bench_seed.py times epochs inside a process, this times the whole
program from spawn to exit: interpreter start-up, imports, model building,
compiling, 10 epochs on 1,000 samples and shutdown. That is what a user of
a short Keras script waits for.

    .venv/bin/python benchmarks/bench_end_to_end.py --repeats 5

Programs: examples/seed.py on hpctrain, and benchmarks/seed_keras.py, the same
program on Keras/TensorFlow. Runs interleave the programs, one process at a
time. Writes benchmarks/results/end_to_end.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from bench_seed import (  # noqa: E402
    REPO_DIR,
    add_process_arguments,
    interpreter_for,
    log,
    module_is_available,
    tail,
    wait_for_quiet_machine,
)
from machine import CpuSnapshot, foreign_load, machine_info  # noqa: E402
from reporting import REFERENCE_IMPLEMENTATION, finished, print_notes, write_json  # noqa: E402

KIB_PER_MIB = 1024  # ru_maxrss is in KiB on Linux


@dataclass(frozen=True)
class Program:
    # name and environment as in bench_seed.Implementation, so its helpers take a Program too.
    name: str
    environment: str  # "project" (hpctrain) or "tf" (TensorFlow venv)
    script: Path
    required_module: str


PROGRAMS: tuple[Program, ...] = (
    Program("hpctrain", "project", REPO_DIR / "examples" / "seed.py", "hpctrain"),
    Program("keras_tf", "tf", BENCH_DIR / "seed_keras.py", "tensorflow"),
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs per program, interleaved")
    add_process_arguments(parser, timeout_s=600)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


# ---------------------------------------------------------------- running one process


def spawn_and_wait(
    command: list[str], cwd: Path, timeout: float, output
) -> tuple[int, float, resource.struct_rusage]:
    """Runs command to its end; returns (exit code, wall seconds, its resource usage).

    os.wait4 gives this child's own rusage. getrusage(RUSAGE_CHILDREN) would not:
    its ru_maxrss is the largest of all children waited for so far, so every
    run after the biggest one would report the biggest one's memory.
    """
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        _pid, wait_status, usage = os.wait4(process.pid, 0)
    finally:
        watchdog.cancel()
    wall = time.perf_counter() - start
    # Reaped here, not by Popen: tell it, so it never waits for the process again.
    process.returncode = os.waitstatus_to_exitcode(wait_status)
    return process.returncode, wall, usage


def run_program(program: Program, args) -> dict:
    """One run, `python <script>` in the script's folder; returns one run record, ok or failed."""
    command = [interpreter_for(program, args), program.script.name]
    wait_for_quiet_machine(program, args)
    load_before = CpuSnapshot.take()
    # The output goes to a file, not a pipe: nothing here has to drain it while waiting.
    with tempfile.TemporaryFile() as output:
        exit_code, wall, usage = spawn_and_wait(command, program.script.parent, args.timeout, output)
        output.seek(0)
        output_text = output.read().decode(errors="replace")
    load = foreign_load(load_before, CpuSnapshot.take(), wall)
    record = {"command": shlex.join(command), "cwd": str(program.script.parent), "exit_code": exit_code}
    if exit_code != 0:
        note = f"exit code {exit_code}" + (" (killed: timed out)" if wall >= args.timeout else "")
        return {"status": "failed", "note": note, "output_tail": tail(output_text), **record}
    return {
        "status": "ok",
        "wall_s": wall,
        "peak_rss_mib": usage.ru_maxrss / KIB_PER_MIB,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "machine_load": load,
        "contended": load["other_share"] > args.busy_threshold,
        **record,
    }


def run_with_retries(program: Program, label: str, args) -> tuple[dict, list[dict]]:
    """One run; a run slowed by other work on the machine is retried (see bench_seed.py)."""
    discarded: list[dict] = []
    while True:
        log(f"[{label}] running {program.script.name} ...")
        run = run_program(program, args)
        if run["status"] != "ok":
            log(f"[{label}] FAILED: {run['note']}\n{run['output_tail']}")
            return run, discarded
        log(f"[{label}] {run['wall_s']:.2f} s, peak RSS {run['peak_rss_mib']:.0f} MiB")
        if not run["contended"] or len(discarded) >= args.retry_contended:
            return run, discarded
        log(f"[{label}] other work used {run['machine_load']['other_share']:.0%} of the CPUs; retrying")
        discarded.append(run)


# ---------------------------------------------------------------- all runs


def summarize(runs: list[dict]) -> dict:
    failures = [run for run in runs if run["status"] != "ok"]
    if failures:
        return {"status": "failed", "note": failures[0]["note"], "runs": runs}
    walls = [run["wall_s"] for run in runs]
    return {
        "status": "ok",
        "median_wall_s": statistics.median(walls),
        "min_wall_s": min(walls),
        "peak_rss_mib": statistics.median(run["peak_rss_mib"] for run in runs),
        "median_cpu_s": statistics.median(run["cpu_s"] for run in runs),
        "runs": runs,
    }


RATIOS = {"wall_ratio_to_hpctrain": "median_wall_s", "memory_ratio_to_hpctrain": "peak_rss_mib"}


def add_ratios(results: dict[str, dict]) -> None:
    """Wall time and memory relative to hpctrain's (None where hpctrain did not run)."""
    reference = finished(results).get(REFERENCE_IMPLEMENTATION)
    for result in finished(results).values():
        for key, measure in RATIOS.items():
            result[key] = result[measure] / reference[measure] if reference else None


def available_programs(args, programs=PROGRAMS) -> tuple[list[Program], dict[str, dict]]:
    """Splits the programs into runnable ones and skip records for the rest."""
    runnable, skipped = [], {}
    for program in programs:
        python = interpreter_for(program, args)
        if module_is_available(python, program.required_module):
            runnable.append(program)
        else:
            note = f"skipped: {program.required_module} not available to {python}"
            log(f"[{program.name}] {note}")
            skipped[program.name] = {"status": "skipped", "note": note}
    return runnable, skipped


def run_all(args, programs=PROGRAMS) -> dict[str, dict]:
    """Every available program once per round, one process at a time, as in bench_seed.py."""
    runnable, skipped = available_programs(args, programs)
    runs = {program.name: [] for program in runnable}
    discarded = {program.name: [] for program in runnable}
    for round_number in range(1, args.repeats + 1):
        for program in runnable:
            label = program.name + (f" {round_number}/{args.repeats}" if args.repeats > 1 else "")
            run, contended_runs = run_with_retries(program, label, args)
            runs[program.name].append(run)
            discarded[program.name] += contended_runs
    results = {}
    for program in programs:
        if program.name in skipped:
            results[program.name] = skipped[program.name]
            continue
        results[program.name] = {
            "script": str(program.script.relative_to(REPO_DIR)),
            **summarize(runs[program.name]),
            "discarded_contended_runs": discarded[program.name],
        }
    add_ratios(results)
    return results


# ---------------------------------------------------------------- report


def format_ratio(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}"


def markdown_table(results: dict[str, dict]) -> str:
    header = (
        "| implementation | median wall s | min wall s | peak RSS MB | × hpctrain wall | × hpctrain memory |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    rows = [
        f"| {name} | {result['median_wall_s']:.2f} | {result['min_wall_s']:.2f} | {result['peak_rss_mib']:.0f} "
        f"| {format_ratio(result['wall_ratio_to_hpctrain'])} | {format_ratio(result['memory_ratio_to_hpctrain'])} |"
        for name, result in finished(results).items()
    ]
    return "\n".join([header, *rows])


def main(argv=None) -> int:
    args = parse_args(argv)
    machine = machine_info(args.python, args.tf_python, REPO_DIR)
    results = run_all(args)
    report = {
        "benchmark": "`python seed.py` from spawn to exit: wall time and peak resident memory (MB = MiB)",
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "repeats": args.repeats,
        "machine": machine,
        "implementations": results,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.output_dir / "end_to_end.json"
    write_json(json_path, report)
    print(markdown_table(results))
    print_notes(results)
    log(f"\nWrote {json_path}")
    return 1 if any(result["status"] == "failed" for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
