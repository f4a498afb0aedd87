"""The start-up itemization and target checks of benchmarks/bench_keras_front.py, on made-up times."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from keras_front_startup import stage_durations, target_checks  # noqa: E402

MARKS = [("script_start", 100.0), ("torch_import", 101.5), ("keras_import", 104.0), ("hpctrain_import", 104.25),
         ("build_and_compile", 104.5), ("fit_setup", 104.75), ("epoch_1", 105.5), ("epoch_2", 105.75),
         ("epoch_3", 106.0), ("epoch_4", 106.5), ("fit_return", 106.625)]


def test_stages_are_the_gaps_between_marks_and_the_epochs_split_into_first_and_later():
    stages = stage_durations(MARKS, spawn_unix=99.75, exit_unix=107.0)
    assert stages == {
        "interpreter_start": 0.25, "torch_import": 1.5, "keras_import": 2.5, "hpctrain_import": 0.25,
        "build_and_compile": 0.25, "fit_setup": 0.25, "fit_return": 0.125,
        "first_epoch": 0.75, "later_epochs": 1.0,
        # first epoch minus the median later one (0.25)
        "first_step_one_time": 0.5, "exit": 0.375, "total": 7.25,
    }
    assert sum(v for k, v in stages.items() if k not in ("total", "first_step_one_time")) == pytest.approx(7.25)


def program(wall, rss):
    return {"status": "ok", "median_wall_s": wall, "peak_rss_mib": rss}


def test_target_checks_report_each_target_met_or_missed():
    programs = {"hpctrain": program(5.0, 540.0), "keras_torch": program(6.0, 500.0), "keras_tf": program(4.0, 600.0)}
    probes = {"hpctrain": {"median_stages_s": {"hpctrain_import": 0.25}}}
    checks = target_checks(programs, probes)
    assert [(c["target"], c["measured"], c["met"]) for c in checks] == [
        ("importing hpctrain adds <= 0.3 s to importing Keras", "0.25 s", True),
        ("end to end faster than keras_torch", "5.00 s vs 6.00 s", True),
        ("end to end faster than keras_tf", "5.00 s vs 4.00 s", False),
        ("peak RSS <= 1.10 x keras_torch's", "540 MiB = 1.08 x", True),
    ]


def test_target_checks_leave_out_what_did_not_run():
    programs = {"hpctrain": program(5.0, 540.0), "keras_tf": {"status": "skipped", "note": "no tensorflow"}}
    assert target_checks(programs, {"hpctrain": {"median_stages_s": None}}) == []
