"""Output of bench_seed.py: Markdown table, notes, JSON file and PNG chart.

bench_end_to_end.py uses the notes and the JSON writer too.
"""

from __future__ import annotations

import json
from pathlib import Path

REFERENCE_IMPLEMENTATION = "hpctrain"
# The implementation that times only the matrix multiplies: a practical floor for the others.
LIMIT_IMPLEMENTATION = "gemm_limit"
# A one-time pause (compiling, tracing) should stay under this share of a 3-epoch run.
FIRST_EPOCH_OVERHEAD_BUDGET = 0.05


def finished(results: dict[str, dict]) -> dict[str, dict]:
    return {name: result for name, result in results.items() if result["status"] == "ok"}


def format_or_na(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown_table(results: dict[str, dict]) -> str:
    header = (
        "| implementation | median epoch s | min epoch s | µs/step | start→first epoch s "
        "| first epoch − median epoch s | × hpctrain | × limit | × limit, same round |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = []
    for name, result in finished(results).items():
        rows.append(
            f"| {name} | {result['median_epoch_s']:.3f} | {result['min_epoch_s']:.3f} "
            f"| {result['us_per_step']:.1f} | {result['start_to_first_epoch_s']:.2f} "
            f"| {format_or_na(result['first_epoch_overhead_s'], '+.3f')} "
            f"| {format_or_na(result['ratio_to_hpctrain'], '.2f')} "
            f"| {format_or_na(result['ratio_to_limit'], '.2f')} "
            f"| {format_or_na(result.get('same_round_ratio_to_limit'), '.2f')} |"
        )
    return "\n".join([header, *rows])


def first_epoch_overhead_note(results: dict[str, dict]) -> str | None:
    """hpctrain's one-time cost in fit, against the budget for a 3-epoch run."""
    result = finished(results).get(REFERENCE_IMPLEMENTATION)
    if result is None or result["overhead_share_of_3_epochs"] is None:
        return None
    share = result["overhead_share_of_3_epochs"]
    verdict = "within" if share <= FIRST_EPOCH_OVERHEAD_BUDGET else "OVER"
    return (
        f"{REFERENCE_IMPLEMENTATION} first-epoch overhead: {result['first_epoch_overhead_s']:+.3f} s, "
        f"{share:.1%} of a 3-epoch run (first epoch + 2 × median epoch); "
        f"{verdict} the {FIRST_EPOCH_OVERHEAD_BUDGET:.0%} budget"
    )


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
    overhead = first_epoch_overhead_note(results)
    if overhead:
        print("\n" + overhead)
    print_notes(results)


def print_notes(results: dict[str, dict]) -> None:
    """What did not run, and which runs shared the machine; also used by bench_end_to_end.py."""
    skipped = not_run_notes(results)
    if skipped:
        print("\nNot in the table:\n" + "\n".join(skipped))
    contended = contention_notes(results)
    if contended:
        print("\nThe machine was busy with other work during these runs; their times are inflated:")
        print("\n".join(contended))


def print_and_save(text: str, path: Path | None) -> None:
    """Prints a text report, and writes it to ``path`` too where one is given."""
    print(text)
    if path:
        path.write_text(text + "\n")


def write_json(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def bar_colors(names: list[str]) -> list[str]:
    return ["tab:orange" if name == REFERENCE_IMPLEMENTATION else "tab:blue" for name in names]


def plot_epoch_times(axes, done: dict[str, dict]) -> None:
    """Median epoch per implementation as bars, the minimum as a black tick."""
    names = list(done)
    medians = [done[name]["median_epoch_s"] for name in names]
    minimums = [done[name]["min_epoch_s"] for name in names]
    positions = range(len(names))
    axes.barh(positions, medians, color=bar_colors(names))
    axes.scatter(minimums, positions, color="black", marker="|", s=300, zorder=3)
    for position, median in zip(positions, medians):
        axes.text(median, position, f"  {median:.2f} s", va="center")
    axes.set_yticks(list(positions), names)
    axes.invert_yaxis()  # keep the table's order from top to bottom
    axes.set_xlim(0, max(medians) * 1.25)
    axes.set_xlabel("seconds per epoch (lower is better)")


def plot_limit_ratios(axes, done: dict[str, dict]) -> None:
    """Median epoch as a multiple of the GEMM-only limit's; shares the y axis with the epoch times."""
    names = list(done)
    ratios = [done[name]["ratio_to_limit"] for name in names]
    positions = range(len(names))
    axes.barh(positions, ratios, color=bar_colors(names))
    axes.axvline(1.0, color="black", linestyle="--", linewidth=1)
    for position, ratio in zip(positions, ratios):
        axes.text(ratio, position, f"  ×{ratio:.2f}", va="center")
    axes.set_xlim(0, max(ratios) * 1.25)
    axes.set_xlabel("× the GEMM-only limit (1 = only the matmuls)")


def write_chart(path: Path, title: str, results: dict[str, dict]) -> bool:
    """Epoch-time bars, plus a panel of × the GEMM-only limit when it ran; False if nothing ran."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    done = finished(results)
    if not done:
        return False
    with_limit = LIMIT_IMPLEMENTATION in done
    columns = 2 if with_limit else 1
    figure, panels = plt.subplots(
        1, columns, sharey=True, squeeze=False, figsize=(6.5 * columns + 1.5, 0.6 * len(done) + 1.8)
    )
    plot_epoch_times(panels[0][0], done)
    if with_limit:
        plot_limit_ratios(panels[0][1], done)
    figure.suptitle(title, fontsize=10)
    legend_handles = [
        Patch(color="tab:orange", label=f"median epoch ({REFERENCE_IMPLEMENTATION})"),
        Patch(color="tab:blue", label="median epoch"),
        Line2D([], [], color="black", marker="|", linestyle="none", markersize=14, label="min epoch"),
    ]
    # Below the axes, so the legend never hides a bar or its label.
    panels[0][0].legend(
        handles=legend_handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
