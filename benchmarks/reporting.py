"""Output of bench_seed.py: Markdown table, notes, JSON file and PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

REFERENCE_IMPLEMENTATION = "hpctrain"


def finished(results: dict[str, dict]) -> dict[str, dict]:
    return {name: result for name, result in results.items() if result["status"] == "ok"}


def markdown_table(results: dict[str, dict]) -> str:
    header = (
        "| implementation | median epoch s | min epoch s | µs/step | start→first epoch s | × hpctrain |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    rows = []
    for name, result in finished(results).items():
        ratio = result["ratio_to_hpctrain"]
        rows.append(
            f"| {name} | {result['median_epoch_s']:.3f} | {result['min_epoch_s']:.3f} "
            f"| {result['us_per_step']:.1f} | {result['start_to_first_epoch_s']:.2f} "
            f"| {'n/a' if ratio is None else f'{ratio:.2f}'} |"
        )
    return "\n".join([header, *rows])


def not_run_notes(results: dict[str, dict]) -> list[str]:
    return [f"- {name}: {r['note']}" for name, r in results.items() if r["status"] != "ok"]


def contention_notes(results: dict[str, dict]) -> list[str]:
    """One line per run that shared the CPUs with other work, since its times are inflated."""
    notes = []
    for name, result in finished(results).items():
        runs = result["runs"]
        for number, run in enumerate(runs, start=1):
            if not run["contended"]:
                continue
            load = run["machine_load"]
            which = f"{name} (run {number}/{len(runs)})" if len(runs) > 1 else name
            notes.append(
                f"- {which}: other processes used {load['other_cpu_s']:.1f} CPU s "
                f"(+{load['steal_s']:.1f} s stolen) during its {load['run_wall_s']:.1f} s run "
                f"({load['other_share']:.0%} of capacity)"
            )
    return notes


def print_report(results: dict[str, dict]) -> None:
    print(markdown_table(results))
    skipped = not_run_notes(results)
    if skipped:
        print("\nNot in the table:\n" + "\n".join(skipped))
    contended = contention_notes(results)
    if contended:
        print("\nThe machine was busy with other work during these runs; their times are inflated:")
        print("\n".join(contended))


def write_json(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def write_chart(path: Path, title: str, results: dict[str, dict]) -> bool:
    """Bar chart of median epoch time with the minimum marked; False if nothing ran."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    done = finished(results)
    if not done:
        return False
    names = list(done)
    medians = [done[name]["median_epoch_s"] for name in names]
    minimums = [done[name]["min_epoch_s"] for name in names]
    colors = ["tab:orange" if name == REFERENCE_IMPLEMENTATION else "tab:blue" for name in names]
    positions = range(len(names))

    figure, axes = plt.subplots(figsize=(8, 0.6 * len(names) + 1.8))
    axes.barh(positions, medians, color=colors)
    axes.scatter(minimums, positions, color="black", marker="|", s=300, zorder=3)
    for position, median in zip(positions, medians):
        axes.text(median, position, f"  {median:.2f} s", va="center")
    axes.set_yticks(list(positions), names)
    axes.invert_yaxis()  # keep the table's order from top to bottom
    axes.set_xlim(0, max(medians) * 1.25)
    axes.set_xlabel("seconds per epoch (lower is better)")
    axes.set_title(title, fontsize=10)
    legend_handles = [
        Patch(color="tab:orange", label=f"median epoch ({REFERENCE_IMPLEMENTATION})"),
        Patch(color="tab:blue", label="median epoch"),
        Line2D([], [], color="black", marker="|", linestyle="none", markersize=14, label="min epoch"),
    ]
    # Below the axes, so the legend never hides a bar or its label.
    axes.legend(handles=legend_handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
