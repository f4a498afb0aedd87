"""Epoch-time benchmark of hpctrain against Keras/TensorFlow and plain PyTorch.

Each implementation runs in its own fresh child process, one after another,
so that no implementation inherits warmed caches, thread pools or imported
modules from another, and none competes with another for the CPU cores.

    .venv/bin/python benchmarks/bench_seed.py --workload seed --epochs 5 --repeats 3
    .venv/bin/python benchmarks/bench_seed.py --workload mlp1024 --epochs 3 --repeats 2
    .venv/bin/python benchmarks/bench_seed.py --skip hpctrain
    .venv/bin/python benchmarks/bench_seed.py --only torch_handtuned,gemm_limit

Writes benchmarks/results/<workload>.json and <workload>.png and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from common import RESULT_PREFIX, WORKLOADS, selected_workload  # noqa: E402
from machine import CpuSnapshot, foreign_load, machine_info, wait_until_idle  # noqa: E402
from reporting import (  # noqa: E402
    LIMIT_IMPLEMENTATION,
    REFERENCE_IMPLEMENTATION,
    print_report,
    write_chart,
    write_json,
)

DEFAULT_PROJECT_PYTHON = REPO_DIR / ".venv" / "bin" / "python"
DEFAULT_TF_PYTHON = BENCH_DIR / ".venv-tf" / "bin" / "python"
# Child result fields that differ from run to run; the rest describe the implementation.
PER_RUN_FIELDS = ("epoch_seconds", "first_epoch_end_unix", "last_epoch_loss", "last_epoch_accuracy")


@dataclass(frozen=True)
class Implementation:
    name: str
    environment: str  # "project" (torch, hpctrain) or "tf" (TensorFlow venv)
    script: str
    script_args: tuple[str, ...] = ()
    required_module: str | None = None  # checked before spawning, to skip cleanly
    description: str = ""
    models: tuple[str, ...] = ("mlp", "convnet")  # the workload models it implements


IMPLEMENTATIONS: tuple[Implementation, ...] = (
    Implementation(
        "hpctrain",
        "project",
        "impl_keras_style.py",
        ("--frontend", "hpctrain", "--name", "hpctrain"),
        required_module="hpctrain",
        description="hpctrain Keras-compatible API, model.fit",
    ),
    Implementation(
        "keras_torch",
        "project",
        "impl_keras_style.py",
        ("--frontend", "keras_torch", "--name", "keras_torch"),
        required_module="keras",
        description="Keras 3 on PyTorch, its own model.fit (hpctrain's engine off)",
    ),
    Implementation(
        LIMIT_IMPLEMENTATION,
        "project",
        "impl_gemm_limit.py",
        required_module="torch",
        description="only the step's matrix multiplies, each on the faster of MKL and oneDNN",
        models=("mlp",),
    ),
    Implementation(
        "keras_tf",
        "tf",
        "impl_keras_style.py",
        ("--frontend", "keras", "--name", "keras_tf"),
        required_module="tensorflow",
        description="Keras 3 on TensorFlow, default model.fit",
    ),
    Implementation(
        "keras_tf_spe32",
        "tf",
        "impl_keras_style.py",
        ("--frontend", "keras", "--name", "keras_tf_spe32", "--steps-per-execution", "32"),
        required_module="tensorflow",
        description="Keras 3 on TensorFlow, compile(steps_per_execution=32)",
    ),
    Implementation(
        "torch_dataloader",
        "project",
        "impl_torch_dataloader.py",
        required_module="torch",
        description="PyTorch TensorDataset + DataLoader, textbook loop",
        models=("mlp",),
    ),
    Implementation(
        "torch_handtuned",
        "project",
        "impl_torch_handtuned.py",
        required_module="torch",
        description="PyTorch randperm + index gather, fused Adam",
    ),
    Implementation(
        "gemm_limit_mkl",
        "project",
        "impl_gemm_limit.py",
        ("--backend", "mkl", "--name", "gemm_limit_mkl"),
        required_module="torch",
        description="only the step's matrix multiplies, torch.mm (MKL) into preallocated buffers",
        models=("mlp",),
    ),
)
IMPLEMENTATION_NAMES = tuple(impl.name for impl in IMPLEMENTATIONS)


def log(message: str) -> None:
    # Progress goes to stderr so stdout holds only the report.
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- arguments


def parse_name_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(IMPLEMENTATION_NAMES))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown implementation(s) {unknown}; choose from {list(IMPLEMENTATION_NAMES)}"
        )
    return names


def interpreter_path(text: str) -> str:
    """Absolute path of an interpreter, so it still works from the children's cwd.

    No resolve(): a venv's python is a symlink and must be called through the link.
    """
    if os.sep in text:
        return os.path.abspath(text)
    return shutil.which(text) or text


def add_process_arguments(parser: argparse.ArgumentParser, timeout_s: float) -> None:
    """Interpreters, output folder and the quiet-machine options; shared with bench_end_to_end.py."""
    parser.add_argument(
        "--python",
        type=interpreter_path,
        default=str(DEFAULT_PROJECT_PYTHON if DEFAULT_PROJECT_PYTHON.exists() else sys.executable),
        help="interpreter for hpctrain and PyTorch implementations",
    )
    parser.add_argument(
        "--tf-python", type=interpreter_path, default=str(DEFAULT_TF_PYTHON), help="interpreter of the TensorFlow venv"
    )
    parser.add_argument("--output-dir", "--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--timeout", type=float, default=timeout_s, help="seconds before a child run is abandoned")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=60,
        help="before each run, wait up to this many seconds for other CPU load to stop (0: don't wait)",
    )
    parser.add_argument(
        "--retry-contended",
        type=int,
        default=2,
        help="rerun a run that shared the CPUs with other work up to this many times (kept in the JSON as discarded)",
    )
    parser.add_argument(
        "--busy-threshold",
        type=float,
        default=0.05,
        help="share of CPU capacity used by others above which a run is flagged as contended",
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="seed")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs, after the warm-up")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up epochs")
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="use this many samples instead of the workload's 60,000 "
        "(for quick checks of the harness, not for numbers to compare)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="fresh processes per implementation, interleaved round by round; epochs are pooled",
    )
    selection = parser.add_mutually_exclusive_group()
    selection.add_argument("--only", type=parse_name_list, help="comma-separated implementations to run")
    selection.add_argument(
        "--skip", type=parse_name_list, default=[], help="comma-separated implementations to leave out"
    )
    add_process_arguments(parser, timeout_s=1800)
    parser.add_argument("--no-plot", action="store_true", help="skip writing the PNG chart")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("--epochs and --repeats must be >= 1, --warmup >= 0")
    if args.samples is not None and args.samples < 1:
        parser.error("--samples must be >= 1")
    return args


def selected_implementations(args) -> list[Implementation]:
    if args.only:
        return [impl for impl in IMPLEMENTATIONS if impl.name in args.only]
    return [impl for impl in IMPLEMENTATIONS if impl.name not in args.skip]


# ---------------------------------------------------------------- running one process


def interpreter_for(impl: Implementation, args) -> str:
    return args.tf_python if impl.environment == "tf" else args.python


def module_is_available(python: str, module: str) -> bool:
    """Asks the child interpreter (not this one) whether it can find the module."""
    if not Path(python).exists():
        return False
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    completed = subprocess.run([python, "-c", probe], cwd=BENCH_DIR, capture_output=True)
    return completed.returncode == 0


def child_command(impl: Implementation, args) -> list[str]:
    samples = ["--samples", str(args.samples)] if args.samples is not None else []
    return [
        interpreter_for(impl, args),
        str(BENCH_DIR / impl.script),
        "--workload",
        args.workload,
        "--epochs",
        str(args.warmup + args.epochs),
        *samples,
        *impl.script_args,
    ]


def parse_child_result(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return None


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def wait_for_quiet_machine(impl: Implementation, args) -> None:
    if args.wait_idle <= 0:
        return
    fraction = wait_until_idle(args.wait_idle, threshold=args.busy_threshold)
    if fraction > args.busy_threshold:
        log(f"[{impl.name}] machine still {fraction:.0%} busy after waiting {args.wait_idle:.0f} s; running anyway")


def run_process(impl: Implementation, args) -> dict:
    """Runs one implementation in a fresh process; returns one run record, ok or failed."""
    command = child_command(impl, args)
    wait_for_quiet_machine(impl, args)
    load_before = CpuSnapshot.take()
    # Taken immediately before the spawn: start-to-first-epoch includes interpreter
    # start-up, imports, data generation, model building and the first epoch.
    spawn_unix = time.time()
    process = subprocess.Popen(command, cwd=REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        return {"status": "failed", "note": f"timed out after {args.timeout:.0f} s", "command": command}
    load = foreign_load(load_before, CpuSnapshot.take(), time.time() - spawn_unix)
    child = parse_child_result(stdout)
    if process.returncode != 0 or child is None:
        note = f"exit code {process.returncode}, no result line"
        return {"status": "failed", "note": note, "stderr_tail": tail(stderr), "command": command}
    return {
        "status": "ok",
        "command": command,
        "start_to_first_epoch_s": child["first_epoch_end_unix"] - spawn_unix,
        "machine_load": load,
        "contended": load["other_share"] > args.busy_threshold,
        "child": child,
    }


# ---------------------------------------------------------------- aggregating runs


def first_epoch_overhead(epoch_seconds: list[float]) -> dict:
    """How much longer a process's first epoch took than its later ones.

    The first epoch carries every one-time cost inside fit (tracing, compiling,
    allocating, warming caches). The share is of a 3-epoch run (first epoch plus
    two typical ones), the run length in which such a pause is judged.
    None when the process ran a single epoch.
    """
    if len(epoch_seconds) < 2:
        return {"first_epoch_s": epoch_seconds[0], "first_epoch_overhead_s": None, "overhead_share_of_3_epochs": None}
    first, later = epoch_seconds[0], statistics.median(epoch_seconds[1:])
    overhead = first - later
    return {
        "first_epoch_s": first,
        "first_epoch_overhead_s": overhead,
        "overhead_share_of_3_epochs": overhead / (first + 2 * later),
    }


def median_or_none(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarize_runs(impl: Implementation, runs: list[dict], warmup: int) -> dict:
    """Pools the timed epochs of all runs of one implementation into the reported numbers."""
    failures = [run for run in runs if run["status"] != "ok"]
    if failures:
        return {"description": impl.description, "status": "failed", "note": failures[0]["note"], "runs": runs}
    children = [run.pop("child") for run in runs]
    for run, child in zip(runs, children):
        run.update({field: child[field] for field in PER_RUN_FIELDS})
        run.update(first_epoch_overhead(child["epoch_seconds"]))
    for run, child in zip(runs, children):
        run["median_epoch_s"] = statistics.median(child["epoch_seconds"][warmup:])
    timed = [seconds for child in children for seconds in child["epoch_seconds"][warmup:]]
    median = statistics.median(timed)
    # The workload is recorded once at the top of the report.
    implementation_info = {
        key: value
        for key, value in children[0].items()
        if key not in PER_RUN_FIELDS and key not in ("workload", "implementation")
    }
    return {
        "description": impl.description,
        "status": "ok",
        "median_epoch_s": median,
        "min_epoch_s": min(timed),
        "mean_epoch_s": statistics.fmean(timed),
        "us_per_step": median / children[0]["steps_per_epoch"] * 1e6,
        "start_to_first_epoch_s": statistics.median(run["start_to_first_epoch_s"] for run in runs),
        # Medians over the processes of each process's own first-vs-later difference.
        "first_epoch_overhead_s": median_or_none([run["first_epoch_overhead_s"] for run in runs]),
        "overhead_share_of_3_epochs": median_or_none([run["overhead_share_of_3_epochs"] for run in runs]),
        "timed_epoch_s": timed,
        "contended": any(run["contended"] for run in runs),
        **implementation_info,
        "runs": runs,
    }


RATIOS = {"ratio_to_hpctrain": REFERENCE_IMPLEMENTATION, "ratio_to_limit": LIMIT_IMPLEMENTATION}


def add_ratios(results: dict[str, dict]) -> None:
    """Median epoch relative to hpctrain's and to the GEMM-only limit's (None where that one did not run)."""
    for key, denominator_name in RATIOS.items():
        denominator = results.get(denominator_name, {}).get("median_epoch_s")
        for result in results.values():
            if result["status"] == "ok" and denominator:
                result[key] = result["median_epoch_s"] / denominator
            else:
                result[key] = None


def add_same_round_ratios(results: dict[str, dict]) -> None:
    """Each round's median epoch over the GEMM-only limit's in the same round, and their median.

    The machine has phases in which whole processes run ~1.5-1.8x slower; a ratio of pooled
    medians compares processes that may have landed in different phases. The limit runs right
    after hpctrain in every round, so their same-round ratio mostly compares like with like.
    """
    limit = results.get(LIMIT_IMPLEMENTATION, {})
    for result in results.values():
        result["same_round_ratios_to_limit"] = result["same_round_ratio_to_limit"] = None
        if result["status"] != "ok" or limit.get("status") != "ok" or len(result["runs"]) != len(limit["runs"]):
            continue
        ratios = [run["median_epoch_s"] / base["median_epoch_s"] for run, base in zip(result["runs"], limit["runs"])]
        result["same_round_ratios_to_limit"] = ratios
        result["same_round_ratio_to_limit"] = statistics.median(ratios)


def available_implementations(implementations, args) -> tuple[list[Implementation], dict[str, dict]]:
    """Splits the selection into runnable ones and skip records for the rest."""
    runnable, skipped = [], {}
    model = selected_workload(args).model
    for impl in implementations:
        python = interpreter_for(impl, args)
        if model not in impl.models:
            skipped[impl.name] = {"description": impl.description, "status": "skipped",
                                  "note": f"skipped: no {model} implementation"}
        elif impl.required_module and not module_is_available(python, impl.required_module):
            note = f"skipped: {impl.required_module} not available to {python}"
            log(f"[{impl.name}] {note}")
            skipped[impl.name] = {"description": impl.description, "status": "skipped", "note": note}
        else:
            runnable.append(impl)
    return runnable, skipped


def run_with_retries(impl: Implementation, label: str, args) -> tuple[dict, list[dict]]:
    """One run of impl; a run slowed by other work on the machine is retried.

    Returns the kept run and the discarded contended ones. If every try was
    contended, the last one is kept and stays flagged in the report.
    """
    discarded: list[dict] = []
    while True:
        log(f"[{label}] running {impl.description} ...")
        run = run_process(impl, args)
        if run["status"] != "ok":
            log(f"[{label}] FAILED: {run['note']}\n{run.get('stderr_tail', '')}")
            return run, discarded
        epochs = " ".join(f"{seconds:.3f}" for seconds in run["child"]["epoch_seconds"])
        log(f"[{label}] epochs: {epochs} s")
        if not run["contended"] or len(discarded) >= args.retry_contended:
            return run, discarded
        log(f"[{label}] other work used {run['machine_load']['other_share']:.0%} of the CPUs; retrying")
        run["epoch_seconds"] = run.pop("child")["epoch_seconds"]
        discarded.append(run)


def run_all(implementations: list[Implementation], args) -> dict[str, dict]:
    """Runs every implementation once per round, one process at a time.

    Rounds interleave the implementations, so slow drifts of the machine's speed
    spread over all of them instead of penalising whichever ran last.
    """
    runnable, skipped = available_implementations(implementations, args)
    runs: dict[str, list[dict]] = {impl.name: [] for impl in runnable}
    discarded: dict[str, list[dict]] = {impl.name: [] for impl in runnable}
    for round_number in range(1, args.repeats + 1):
        for impl in runnable:
            label = impl.name + (f" {round_number}/{args.repeats}" if args.repeats > 1 else "")
            run, contended_runs = run_with_retries(impl, label, args)
            runs[impl.name].append(run)
            discarded[impl.name] += contended_runs
    results = {}
    for impl in implementations:
        if impl.name in skipped:
            results[impl.name] = skipped[impl.name]
            continue
        results[impl.name] = summarize_runs(impl, runs[impl.name], args.warmup)
        results[impl.name]["discarded_contended_runs"] = discarded[impl.name]
    add_ratios(results)
    add_same_round_ratios(results)
    return results


# ---------------------------------------------------------------- main


def chart_title(args, machine: dict) -> str:
    workload = selected_workload(args)
    layers = workload.label
    runs = f", {args.repeats} runs each" if args.repeats > 1 else ""
    samples = f", {workload.num_samples} samples" if args.samples is not None else ""
    return (
        f"{workload.name}: {layers}, batch {workload.batch_size}{samples}, {args.epochs} timed epochs{runs}\n"
        f"{machine['cpu_model']}, {machine['nproc']} CPUs"
    )


def build_report(args, machine: dict, results: dict[str, dict]) -> dict:
    workload = selected_workload(args)
    return {
        "benchmark": "epoch time per implementation, each run in a fresh process, one at a time",
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "workload": {**asdict(workload), "steps_per_epoch": workload.steps_per_epoch},
        "warmup_epochs": args.warmup,
        "timed_epochs": args.epochs,
        "repeats": args.repeats,
        "machine": machine,
        "implementations": results,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.epochs < 3:
        log("note: fewer than 3 timed epochs; medians are not reliable")
    machine = machine_info(args.python, args.tf_python, REPO_DIR)
    results = run_all(selected_implementations(args), args)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.output_dir / f"{args.workload}.json"
    write_json(json_path, build_report(args, machine, results))
    written = [json_path]
    chart_path = args.output_dir / f"{args.workload}.png"
    if not args.no_plot:
        try:
            if write_chart(chart_path, chart_title(args, machine), results):
                written.append(chart_path)
        except ModuleNotFoundError as missing:  # the measurements are written; only the chart is missing
            log(f"No chart: {missing.name} is not installed (pip install -e '.[bench]').")

    print_report(results)
    log("\nWrote " + ", ".join(str(path) for path in written))
    failed = any(result["status"] == "failed" for result in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
