"""Run every tutorial program and compare its held-out metric with the plain-Keras reference.

    python examples/tutorials/check.py              # on hpctrain; compare with reference.json
    python examples/tutorials/check.py --record     # on plain Keras; write reference.json
    python examples/tutorials/check.py --plain      # on plain Keras; compare (a stability check)
    python examples/tutorials/check.py -k convnet   # only the programs whose name contains "convnet"

Each program (``NN_name.py`` in this folder) runs in a subprocess of its own, one after another,
and ends by printing one line ``RESULT {"metric": ..., "value": ..., "kind": ...}``. Plain Keras
means ``HPCTRAIN_KERAS_ENGINE=0`` (Keras's own fit/evaluate/predict on torch); hpctrain means the
variable unset. Tolerances: accuracy-like metrics within 0.02 absolute, MAE/MSE within 15%
relative. The subprocesses run with one intra-op thread (``--threads``) so that a busy machine
does not slow them down severalfold; the reference is recorded the same way.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import time
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
REFERENCE = os.path.join(HERE, "reference.json")
ENGINE_VARIABLE = "HPCTRAIN_KERAS_ENGINE"
TOLERANCES = {"accuracy": ("absolute", 0.02), "mae": ("relative", 0.15), "mse": ("relative", 0.15)}
DEFAULT_THREADS = 1
DEFAULT_TIMEOUT = 300


def programs() -> list[str]:
    """The tutorial programs' file names, in order."""
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(HERE, "[0-9][0-9]_*.py")))


def program_env(engine: bool, threads: int = DEFAULT_THREADS) -> dict[str, str]:
    env = dict(os.environ)
    if engine:
        env.pop(ENGINE_VARIABLE, None)
    else:
        env[ENGINE_VARIABLE] = "0"
    src = os.path.join(REPO, "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


class ProgramError(RuntimeError):
    pass


def run_program(name: str, engine: bool, threads: int = DEFAULT_THREADS,
                timeout: float = DEFAULT_TIMEOUT) -> dict:
    """Runs one program; its RESULT as a dict plus ``seconds`` (wall time of the subprocess) and
    ``cpu_seconds`` (its user and system CPU time: the wall time it would take on an idle machine,
    give or take the import of Keras on other cores)."""
    start = time.perf_counter()
    cpu_start = _children_cpu()
    try:
        proc = subprocess.run([sys.executable, os.path.join(HERE, name)], cwd=REPO, env=program_env(engine, threads),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise ProgramError(f"{name} ran past {timeout:.0f} s") from error
    seconds = time.perf_counter() - start
    cpu_seconds = _children_cpu() - cpu_start
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or len(results) != 1:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise ProgramError(f"{name} exited with {proc.returncode} and printed {len(results)} RESULT lines; "
                           f"last output:\n{tail}")
    result = json.loads(results[0][len("RESULT "):])
    if result.get("kind") not in TOLERANCES or not isinstance(result.get("value"), (int, float)):
        raise ProgramError(f"{name} printed a malformed RESULT line: {results[0]}")
    return {**result, "value": float(result["value"]), "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2)}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def compare(result: dict, reference: dict) -> tuple[bool, str]:
    """Whether ``result`` is within the tolerance of ``reference``, and a one-line account."""
    if result["metric"] != reference["metric"] or result["kind"] != reference["kind"]:
        return False, (f"metric {result['metric']!r} ({result['kind']}) but the reference has "
                       f"{reference['metric']!r} ({reference['kind']})")
    mode, tolerance = TOLERANCES[result["kind"]]
    got, want = result["value"], reference["value"]
    if mode == "absolute":
        difference = abs(got - want)
        ok = difference <= tolerance
        detail = f"|{got:.4f} - {want:.4f}| = {difference:.4f} (allowed {tolerance})"
    else:
        difference = abs(got - want) / abs(want) if want else float("inf")
        ok = difference <= tolerance
        detail = f"{got:.4f} vs {want:.4f}: {difference:.1%} apart (allowed {tolerance:.0%})"
    return ok, f"{result['metric']} {detail}"


def load_reference() -> dict:
    with open(REFERENCE) as f:
        return json.load(f)


def _record(names, threads, timeout, argv) -> int:
    entries, failed = {}, []
    for name in names:
        try:
            result = run_program(name, engine=False, threads=threads, timeout=timeout)
        except ProgramError as error:
            print(f"{name:<40} FAILED: {error}", flush=True)
            failed.append(name)
            continue
        entries[name] = result
        print(f"{name:<40} {result['metric']:<34} {result['value']:.6f}  {result['seconds']:6.1f} s "
              f"({result['cpu_seconds']:.1f} s CPU)", flush=True)
    previous = load_reference()["programs"] if os.path.exists(REFERENCE) else {}
    if set(names) != set(programs()):  # a partial record keeps the other programs' entries
        entries = {**{k: v for k, v in previous.items() if k in programs()}, **entries}
    document = {
        "keras_version": metadata.version("keras"),
        "torch_version": metadata.version("torch"),
        "engine": f"plain Keras on torch ({ENGINE_VARIABLE}=0)",
        "threads": threads,
        "command": "python examples/tutorials/check.py " + " ".join(argv),
        "tolerances": {kind: {"mode": mode, "value": value} for kind, (mode, value) in TOLERANCES.items()},
        "programs": dict(sorted(entries.items())),
    }
    with open(REFERENCE, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    print(f"wrote {os.path.relpath(REFERENCE, REPO)} ({len(entries)} programs, "
          f"{sum(e['seconds'] for e in entries.values()):.0f} s of runs, "
          f"{sum(e.get('cpu_seconds', 0) for e in entries.values()):.0f} s CPU)")
    if failed:
        print(f"not recorded (failed): {', '.join(failed)}")
    return 1 if failed else 0


def _check(names, engine, threads, timeout) -> int:
    reference = load_reference()["programs"]
    misses = 0
    print(f"{'program':<40} {'metric':<34} {'got':>9} {'reference':>9}  {'time':>7}  {'CPU':>7}  verdict")
    total = cpu = 0.0
    for name in names:
        if name not in reference:
            print(f"{name:<40} no reference: run check.py --record", flush=True)
            misses += 1
            continue
        try:
            result = run_program(name, engine=engine, threads=threads, timeout=timeout)
        except ProgramError as error:
            print(f"{name:<40} FAILED: {error}", flush=True)
            misses += 1
            continue
        total += result["seconds"]
        cpu += result["cpu_seconds"]
        ok, detail = compare(result, reference[name])
        misses += not ok
        print(f"{name:<40} {result['metric']:<34} {result['value']:9.4f} {reference[name]['value']:9.4f}  "
              f"{result['seconds']:5.1f} s  {result['cpu_seconds']:5.1f} s  {'ok' if ok else 'MISS: ' + detail}",
              flush=True)
    print(f"{len(names) - misses}/{len(names)} within tolerance on {'hpctrain' if engine else 'plain Keras'}; "
          f"{total:.0f} s of runs, {cpu:.0f} s CPU")
    return 1 if misses else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="run on plain Keras and write reference.json")
    parser.add_argument("--plain", action="store_true", help="compare plain Keras (not hpctrain) with the reference")
    parser.add_argument("-k", dest="only", default="", help="only the programs whose file name contains this")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="intra-op threads per program")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds allowed per program")
    args = parser.parse_args(argv)
    names = [name for name in programs() if args.only in name]
    if not names:
        parser.error(f"no program matches {args.only!r}")
    try:
        if args.record:
            return _record(names, args.threads, args.timeout, argv)
        return _check(names, engine=not args.plain, threads=args.threads, timeout=args.timeout)
    except ProgramError as error:
        print(error, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
