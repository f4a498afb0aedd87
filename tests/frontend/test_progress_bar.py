"""The progress a Keras model prints when hpctrain trains it is Keras's own ``ProgbarLogger``:
the same text as Keras's own fit/evaluate/predict (timings aside), fed without per-batch Python."""

import re

import numpy as np
import pytest

from hpctrain import keras
from hpctrain.engine import native, progress
from hpctrain.errors import ConfigError
from twins import keras_own_loop

PATH_LINE = "hpctrain: fit runs on the engine:"


def _data(rows=320):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 12)).astype("float32")
    y = (x @ rng.normal(size=(12, 3))).argmax(1)
    return x, y


def _model():
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def shown(text: str) -> list[str]:
    """What a terminal shows of ``text``: of each line, what follows its last carriage return
    (Keras's bar redraws in place), with the timings (elapsed seconds, time per step) blanked."""
    lines = []
    for line in text.split("\n"):
        line = line.split("\r")[-1].replace("\b", "").rstrip()
        line = re.sub(r"\d+(?:ms|us|s)/step", "T/step", line)
        line = re.sub(r"(?<![\d.])\d+s(?![a-z/])", "Ts", line)
        lines.append(line)
    return lines[:-1] if lines and lines[-1] == "" else lines


def _run_all(model, x, y, verbose, fit_options):
    model.fit(x, y, epochs=2, batch_size=32, verbose=verbose, shuffle=False, **fit_options)
    model.evaluate(x, y, verbose=verbose)
    model.predict(x, verbose=verbose)


def _printed_by_both(capsys, verbose, **fit_options):
    x, y = _data()
    capsys.readouterr()
    _run_all(_model(), x, y, verbose, fit_options)
    ours = capsys.readouterr().out
    with keras_own_loop():
        _run_all(_model(), x, y, verbose, fit_options)
    return ours, capsys.readouterr().out


def _without_path_line(lines: list[str]) -> list[str]:
    assert sum(line.startswith(PATH_LINE) for line in lines) == 1  # the one line saying how the engine runs
    return [line for line in lines if not line.startswith(PATH_LINE)]


@pytest.mark.parametrize("verbose", [1, 2, "auto"])
@pytest.mark.parametrize("validation", [False, True], ids=["train", "validation"])
def test_fit_evaluate_and_predict_print_what_keras_prints(capsys, verbose, validation):
    x, y = _data()
    options = {"validation_data": (x[:64], y[:64])} if validation else {}
    ours, reference = _printed_by_both(capsys, verbose, **options)
    expected = shown(reference)
    assert _without_path_line(shown(ours)) == expected
    # 2 epochs (each "Epoch i/2" and its bar), evaluate's bar and predict's bar
    assert len(expected) == 6
    assert ("val_loss: " in expected[1]) == validation


def test_a_callback_adding_a_log_shows_it_last_as_in_keras(capsys):
    x, y = _data()
    options = {"validation_data": (x[:64], y[:64]),
               "callbacks": [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=1)]}
    ours, reference = _printed_by_both(capsys, 1, **options)
    assert _without_path_line(shown(ours)) == shown(reference)
    assert shown(reference)[1].endswith("learning_rate: 0.0010")


def test_verbose_0_prints_nothing_as_in_keras(capsys):
    ours, reference = _printed_by_both(capsys, 0)
    assert ours == reference == ""


def test_history_keys_come_in_keras_order():
    x, y = _data()
    history = _model().fit(x, y, epochs=1, verbose=0, validation_data=(x[:64], y[:64]))
    with keras_own_loop():
        reference = _model().fit(x, y, epochs=1, verbose=0, validation_data=(x[:64], y[:64]))
    assert list(history.history) == list(reference.history) == ["accuracy", "loss", "val_accuracy", "val_loss"]


def test_it_is_keras_progbar_that_prints(capsys, monkeypatch):
    """With Keras's ``Progbar`` silenced, no bar is left: nothing of the engine's own prints one."""
    x, y = _data()
    updates = []
    monkeypatch.setattr(keras.utils.Progbar, "update", lambda bar, current, values=None, finalize=None:
                        updates.append((current, finalize)))
    capsys.readouterr()
    _run_all(_model(), x, y, 1, {})
    assert _without_path_line(shown(capsys.readouterr().out)) == ["Epoch 1/2", "Epoch 2/2"]
    steps = 10
    finals = [current for current, finalize in updates if finalize]
    assert finals == [steps, steps, steps, steps]  # two epochs, evaluate, predict


def test_a_progbar_logger_given_is_the_bar_and_none_is_added(capsys):
    x, y = _data()
    logger = keras.callbacks.ProgbarLogger()
    capsys.readouterr()
    _model().fit(x, y, epochs=2, batch_size=32, verbose=2, shuffle=False, callbacks=[logger])
    ours = capsys.readouterr().out
    reference_logger = keras.callbacks.ProgbarLogger()
    with keras_own_loop():
        _model().fit(x, y, epochs=2, batch_size=32, verbose=2, shuffle=False, callbacks=[reference_logger])
    assert _without_path_line(shown(ours)) == shown(capsys.readouterr().out)
    assert isinstance(logger.progbar, keras.utils.Progbar)
    assert (logger.progbar.target, logger.epochs, logger.verbose) == (10, 2, 2)


def test_the_bar_adds_no_per_batch_python_to_the_steps(capsys):
    """verbose=1 trains on the step loop that verbose=0 trains on (the plan says which)."""
    x, y = _data(rows=960)
    loops = {}
    for verbose in (0, 1, 2):
        model = _model()
        model.fit(x, y, epochs=1, batch_size=32, verbose=verbose)
        loops[verbose] = dict(model.plan.reasons)["step_loop"]
    assert loops[1] == loops[2] == loops[0]
    assert "a callback listens to every batch" not in loops[1]
    if native.step_loop() is not None:
        assert loops[1].startswith("C++")


class _Display:
    def __init__(self, refresh_seconds, refreshes=True):
        self.refresh_seconds, self.refreshes, self.shown = refresh_seconds, refreshes, []

    def refresh(self, done, logs):
        self.shown.append((done, logs))


def test_a_front_display_reads_the_logs_only_at_its_refresh_interval():
    reads = []

    def read_logs():
        reads.append(1)  # stands for the host sync of reading the metrics
        return {"loss": 0.5}

    display = _Display(refresh_seconds=3600.0)
    with progress.shown_by(display):
        bar = progress.Progress(verbose=1, total_steps=1000)
    for done in range(1, 1001):
        bar.step(done, read_logs)
    bar.finish(1000, {"loss": 0.5})
    assert display.shown == [(1, {"loss": 0.5})]  # the first step at once, as Keras's bar, then none within the hour
    assert len(reads) == 1

    quiet = _Display(refresh_seconds=0.0, refreshes=False)  # verbose=2: nothing before the pass ends
    with progress.shown_by(quiet):
        bar = progress.Progress(verbose=2, total_steps=10)
    for done in range(1, 11):
        bar.step(done, read_logs)
    assert quiet.shown == [] and len(reads) == 1


def test_without_a_front_display_the_engine_prints_its_own_line(capsys):
    bar = progress.Progress(verbose=2, total_steps=4)
    bar.finish(4, {"loss": 0.25})
    assert re.fullmatch(r"4/4 - \d+s - \d+(us|ms|s)/step - loss: 0\.2500\n", capsys.readouterr().out)


def test_a_verbose_keras_does_not_know_is_refused():
    x, y = _data()
    with pytest.raises(ConfigError, match=re.escape("verbose must be 'auto', 0, 1 or 2; got 'loud'.")):
        _model().fit(x, y, verbose="loud")
