"""hpctrain's Keras front end against its peers: four real Keras models, then the seed program end to end.

    .venv/bin/python benchmarks/bench_keras_front.py --out benchmarks/results/keras_front/
    .venv/bin/python benchmarks/bench_keras_front.py --quick --out /tmp/keras_front   # harness check only

Each model is a real Keras 3 model, the same program for every Keras peer (impl_keras_style.py):
hpctrain (`import hpctrain as tf`, `from hpctrain.keras...`), Keras on torch's own fit (hpctrain's
engine off), and Keras on TensorFlow (default fit, steps_per_execution=32, jit_compile=True; in
benchmarks/.venv-tf, made by setup_tf_env.sh); beside them hand-tuned PyTorch (channels-last
images, fused Adam), the same with torch.compile, and the GEMM-only limit for the dense models.
Every implementation runs in its own fresh process, one at a time, rounds interleaved
(bench_seed.py's harness). First, bench_end_to_end.py's harness times `python seed.py` for
hpctrain, Keras/torch and Keras/TF, and startup_probe.py itemizes the start-up.

Writes <out>/<model>.json per model, <out>/end_to_end.json, and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from bench_seed import REPO_DIR, Implementation, add_process_arguments, build_report, log, run_all  # noqa: E402
from keras_front_startup import startup_report  # noqa: E402
from machine import machine_info, package_version  # noqa: E402
from reporting import finished, format_or_na, print_notes, write_json  # noqa: E402

KERAS_STYLE = "impl_keras_style.py"
ALL_MODELS = ("mlp", "convnet", "residual")

IMPLEMENTATIONS: tuple[Implementation, ...] = (
    Implementation("hpctrain", "project", KERAS_STYLE, ("--frontend", "hpctrain", "--name", "hpctrain"),
                   "hpctrain", "real Keras model, hpctrain's Keras front end and engine", ALL_MODELS),
    Implementation("keras_torch", "project", KERAS_STYLE, ("--frontend", "keras_torch", "--name", "keras_torch"),
                   "keras", "the same Keras model, Keras 3 on torch, its own fit", ALL_MODELS),
    Implementation("gemm_limit", "project", "impl_gemm_limit.py", (), "torch",
                   "only the step's matrix multiplies, each on the faster of MKL and oneDNN; for the convnet "
                   "its convolutions and products (forward, backward, validation forward)", ALL_MODELS),
    Implementation("keras_tf", "tf", KERAS_STYLE, ("--frontend", "keras", "--name", "keras_tf"),
                   "tensorflow", "Keras 3 on TensorFlow, default fit", ALL_MODELS),
    Implementation("keras_tf_spe32", "tf", KERAS_STYLE,
                   ("--frontend", "keras", "--name", "keras_tf_spe32", "--steps-per-execution", "32"),
                   "tensorflow", "Keras 3 on TensorFlow, compile(steps_per_execution=32)", ALL_MODELS),
    Implementation("keras_tf_jit", "tf", KERAS_STYLE,
                   ("--frontend", "keras", "--name", "keras_tf_jit", "--jit-compile"),
                   "tensorflow", "Keras 3 on TensorFlow, compile(jit_compile=True): XLA", ALL_MODELS),
    Implementation("torch_handtuned", "project", "impl_torch_handtuned.py", ("--channels-last",), "torch",
                   "PyTorch: resident tensor, index gather, fused Adam, channels-last images", ALL_MODELS),
    Implementation("torch_compile", "project", "impl_torch_handtuned.py",
                   ("--channels-last", "--compile", "--name", "torch_compile"), "torch",
                   "the hand-tuned PyTorch loop on torch.compile(model)", ALL_MODELS),
)


@dataclass(frozen=True)
class Sizing:
    """Samples per epoch and timed epochs of one model's runs: enough steps per epoch for a steady
    median, few enough that the slowest peer's process stays around ten seconds."""

    samples: int
    epochs: int


# Models (workloads of common.py) in the order run; full and --quick sizings.
MODELS = {
    "seed": (Sizing(8_000, 3), Sizing(1_000, 1)),  # 250 steps
    "mlp1024": (Sizing(10_240, 3), Sizing(1_024, 1)),  # 40 steps
    "convnet": (Sizing(4_000, 3), Sizing(640, 1)),  # 29 steps and the validation pass
    "custom_layer": (Sizing(9_600, 3), Sizing(1_024, 1)),  # 150 steps
}


def vector_extensions() -> list[str]:
    """The CPU's widest vector instruction sets (the kernels each library picks depend on them)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return []
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    return [flag for flag in wanted if flag in flags]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="one round of tiny epochs: checks the harness, gives no numbers to compare")
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per implementation and model")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models to run ('': none)")
    parser.add_argument("--only", default=",".join(impl.name for impl in IMPLEMENTATIONS),
                        help="comma-separated implementations to run on the models")
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--end-to-end-repeats", type=int, default=3, help="runs of each whole program")
    add_process_arguments(parser, timeout_s=600)
    # A bounded run on a shared machine: short waits, no reruns; contended runs are listed.
    parser.set_defaults(wait_idle=5, retry_contended=0, output_dir=BENCH_DIR / "results" / "keras_front")
    args = parser.parse_args(argv)
    args.models = [name for name in args.models.split(",") if name]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    args.only = [name for name in args.only.split(",") if name]
    unknown = sorted(set(args.only) - {impl.name for impl in IMPLEMENTATIONS})
    if unknown:
        parser.error(f"unknown implementation(s) {unknown}; choose from {[impl.name for impl in IMPLEMENTATIONS]}")
    if args.quick:
        args.repeats, args.end_to_end_repeats = 1, 1
    return args


def model_args(args: argparse.Namespace, model: str) -> argparse.Namespace:
    """bench_seed's arguments for one model's runs."""
    full, quick = MODELS[model]
    sizing = quick if args.quick else full
    return argparse.Namespace(**{**vars(args), "workload": model, "samples": sizing.samples,
                                 "epochs": sizing.epochs, "warmup": 1})


def add_keras_torch_ratio(results: dict[str, dict]) -> None:
    """How many times faster than Keras on torch's own fit each implementation is."""
    keras_torch = results.get("keras_torch", {}).get("median_epoch_s")
    for result in finished(results).values():
        result["speedup_vs_keras_torch"] = keras_torch / result["median_epoch_s"] if keras_torch else None


def model_table(results: dict[str, dict]) -> str:
    header = "| implementation | µs/step median | µs/step min | × hpctrain | × limit |\n|---|---:|---:|---:|---:|"
    rows = []
    for name, result in finished(results).items():
        per_step = 1e6 / result["steps_per_epoch"]
        rows.append(f"| {name} | {result['median_epoch_s'] * per_step:.0f} | {result['min_epoch_s'] * per_step:.0f} "
                    f"| {format_or_na(result['ratio_to_hpctrain'], '.2f')} "
                    f"| {format_or_na(result['ratio_to_limit'], '.2f')} |")
    return "\n".join([header, *rows])


def run_model(model: str, args, machine: dict) -> None:
    margs = model_args(args, model)
    log(f"\n=== {model}: {margs.samples} samples, 1 warm-up + {margs.epochs} timed epochs, {margs.repeats} rounds")
    results = run_all([impl for impl in IMPLEMENTATIONS if impl.name in args.only], margs)
    add_keras_torch_ratio(results)
    report = build_report(margs, machine, results)
    report["benchmark"] = "Keras front end: " + report["benchmark"]
    write_json(args.output_dir / f"{model}.json", report)
    print(f"\n### {model}: {report['workload']['description']}\n\n{model_table(results)}")
    print_notes(results)


def run_end_to_end(args, machine: dict) -> None:
    log("\n=== end to end: the seed program")
    e2e_args = argparse.Namespace(**{**vars(args), "repeats": args.end_to_end_repeats})
    report, text = startup_report(e2e_args)
    write_json(args.output_dir / "end_to_end.json", {
        "benchmark": "the seed program from spawn to exit: wall time, peak RSS (MB = MiB), start-up stages",
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "repeats": args.end_to_end_repeats, "machine": machine, **report})
    print(f"\n### end to end: the seed program\n\n{text}")
    print_notes(report["programs"])


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info(args.python, args.tf_python, REPO_DIR)
    machine.update(cpu_vector_extensions=vector_extensions(), keras_torch_version=package_version(args.python, "keras"))
    # The short end-to-end part first; each model's JSON is written as soon as its runs end.
    if not args.skip_end_to_end:
        run_end_to_end(args, machine)
    for model in args.models:
        run_model(model, args, machine)
    log(f"\nWrote {args.output_dir}/ in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
