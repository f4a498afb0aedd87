"""The seed's first program runs unchanged but for the import word."""

import math
import os
import re
import subprocess
import sys

from conftest import REPO

EPOCH_LINE = re.compile(r"^Epoch (\d+)/10$")
METRICS_LINE = re.compile(r"^32/32 .* - accuracy: ([0-9.]+) - loss: ([0-9.]+)$")
# Keras's progress bar redraws in place (carriage returns, backspaces, colours): a line of the
# output is what a terminal shows last.
REDRAW = re.compile(r"\x1b\[[0-9;]*m")


def _shown(line: str) -> str:
    return re.split(r"[\r\x08]+", REDRAW.sub("", line))[-1].strip()


def test_seed_program_prints_ten_epochs_with_loss_and_accuracy():
    script = os.path.join(REPO, "examples", "seed.py")
    result = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [_shown(line) for line in result.stdout.splitlines()]
    epochs = [int(m.group(1)) for line in lines if (m := EPOCH_LINE.match(line))]
    assert epochs == list(range(1, 11))
    metrics = [METRICS_LINE.match(line) for line in lines if METRICS_LINE.match(line)]
    assert len(metrics) == 10
    losses = [float(m.group(2)) for m in metrics]
    accuracies = [float(m.group(1)) for m in metrics]
    assert all(math.isfinite(v) and 1.5 < v < 3.0 for v in losses)  # random labels: near ln(10) = 2.30
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    assert losses[-1] < losses[0]  # it memorises some of the 1,000 random labels
    # The integer labels with categorical_crossentropy are read as class indices, with a warning.
    assert "treating them as class indices" in result.stderr
