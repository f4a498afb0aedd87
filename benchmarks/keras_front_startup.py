"""The end-to-end part of bench_keras_front.py: the seed program from spawn to exit, and its start-up
itemized.

Whole programs (`python seed.py`, run by bench_end_to_end.py's harness): hpctrain's
examples/seed.py, the same program on Keras 3/torch (seed_keras_torch.py) and on Keras 3/TensorFlow
(seed_keras.py). Then startup_probe.py, the same program with a clock read between its parts, for
hpctrain and Keras/torch: which import, and which part of fit, the start-up time goes to.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from bench_end_to_end import PROGRAMS, Program, markdown_table as programs_table, run_all, spawn_and_wait
from bench_seed import BENCH_DIR, log, parse_child_result, tail
from reporting import finished

END_TO_END_PROGRAMS: tuple[Program, ...] = (
    PROGRAMS[0],  # hpctrain, examples/seed.py
    Program("keras_torch", "project", BENCH_DIR / "seed_keras_torch.py", "keras"),
    PROGRAMS[1],  # keras_tf, seed_keras.py
)
PROBED = ("hpctrain", "keras_torch")
# The targets for hpctrain's start.
IMPORT_BUDGET_S = 0.3  # what importing hpctrain may add to importing Keras
MEMORY_BUDGET = 1.10  # peak RSS against Keras on torch's


# ---------------------------------------------------------------- one probe


def stage_durations(marks: list, spawn_unix: float, exit_unix: float) -> dict[str, float]:
    """Seconds per stage: from the previous mark to this one; interpreter start-up before the
    first mark; the epochs after fit's set-up split into the first and the rest."""
    stages = {"interpreter_start": marks[0][1] - spawn_unix}
    epochs = []
    for (_, before), (name, at) in zip(marks, marks[1:]):
        if name.startswith("epoch_"):
            epochs.append(at - before)
        else:
            stages[name] = at - before
    stages["first_epoch"] = epochs[0]
    stages["later_epochs"] = sum(epochs[1:])
    # What the first epoch takes beyond a later one: fit's one-time work at its first step.
    stages["first_step_one_time"] = epochs[0] - statistics.median(epochs[1:])
    stages["exit"] = exit_unix - marks[-1][1]
    stages["total"] = exit_unix - spawn_unix
    return stages


def run_probe(frontend: str, args) -> dict:
    command = [args.python, str(BENCH_DIR / "startup_probe.py"), "--frontend", frontend]
    with tempfile.TemporaryFile() as output:
        spawn_unix = time.time()
        exit_code, wall, usage = spawn_and_wait(command, BENCH_DIR, args.timeout, output)
        output.seek(0)
        text = output.read().decode(errors="replace")
    child = parse_child_result(text)
    if exit_code != 0 or child is None:
        return {"status": "failed", "note": f"exit code {exit_code}", "output_tail": tail(text)}
    stages = stage_durations(child["marks"], spawn_unix, spawn_unix + wall)
    return {"status": "ok", "stages_s": stages, "peak_rss_mib": usage.ru_maxrss / 1024}


def median_stages(runs: list[dict]) -> dict[str, float]:
    names = runs[0]["stages_s"]
    return {name: statistics.median(run["stages_s"][name] for run in runs) for name in names}


def run_probes(args) -> dict[str, dict]:
    runs: dict[str, list[dict]] = {frontend: [] for frontend in PROBED}
    for round_number in range(1, args.repeats + 1):
        for frontend in PROBED:
            run = run_probe(frontend, args)
            label = f"[probe {frontend} {round_number}/{args.repeats}]"
            if run["status"] != "ok":
                log(f"{label} FAILED: {run['note']}\n{run['output_tail']}")
            else:
                log(f"{label} " + ", ".join(f"{k} {v:.2f}" for k, v in run["stages_s"].items()))
            runs[frontend].append(run)
    results = {}
    for frontend, frontend_runs in runs.items():
        ok = [run for run in frontend_runs if run["status"] == "ok"]
        results[frontend] = {"median_stages_s": median_stages(ok) if ok else None, "runs": frontend_runs}
    return results


# ---------------------------------------------------------------- targets and report


def target_checks(programs: dict[str, dict], probes: dict[str, dict]) -> list[dict]:
    """The issue's three start-up targets, each with the measured value and whether it was met."""
    done = finished(programs)
    checks = []
    stages = (probes.get("hpctrain") or {}).get("median_stages_s")
    if stages:
        added = stages["hpctrain_import"]
        checks.append({"target": f"importing hpctrain adds <= {IMPORT_BUDGET_S} s to importing Keras",
                       "measured": f"{added:.2f} s", "met": added <= IMPORT_BUDGET_S})
    ours = done.get("hpctrain")
    for peer in ("keras_torch", "keras_tf"):
        if ours and peer in done:
            wall, peer_wall = ours["median_wall_s"], done[peer]["median_wall_s"]
            checks.append({"target": f"end to end faster than {peer}",
                           "measured": f"{wall:.2f} s vs {peer_wall:.2f} s", "met": wall < peer_wall})
    if ours and "keras_torch" in done:
        ratio = ours["peak_rss_mib"] / done["keras_torch"]["peak_rss_mib"]
        checks.append({"target": f"peak RSS <= {MEMORY_BUDGET:.2f} x keras_torch's",
                       "measured": f"{ours['peak_rss_mib']:.0f} MiB = {ratio:.2f} x", "met": ratio <= MEMORY_BUDGET})
    return checks


def stages_table(probes: dict[str, dict]) -> str:
    present = {name: probe["median_stages_s"] for name, probe in probes.items() if probe["median_stages_s"]}
    if not present:
        return "(no start-up probe finished)"
    names = list(dict.fromkeys(stage for stages in present.values() for stage in stages))
    header = "| stage s | " + " | ".join(present) + " |\n|---|" + "---:|" * len(present)
    rows = [f"| {stage} | " + " | ".join(format(stages[stage], ".2f") if stage in stages else "—"
                                         for stages in present.values()) + " |" for stage in names]
    return "\n".join([header, *rows])


def startup_report(args: argparse.Namespace) -> tuple[dict, str]:
    """Runs the whole programs and the probes; returns the JSON part and the Markdown text."""
    programs = run_all(args, END_TO_END_PROGRAMS)
    probes = run_probes(args)
    checks = target_checks(programs, probes)
    lines = [programs_table(programs), "", stages_table(probes), ""]
    lines += [f"- {'met' if c['met'] else 'MISSED'}: {c['target']} ({c['measured']})" for c in checks]
    report = {"programs": programs, "startup_probes": probes, "targets": checks}
    return report, "\n".join(lines)
