"""The seed program (examples/seed.py) with a clock read between its parts, for bench_keras_front.py.

    python startup_probe.py --frontend hpctrain      # import hpctrain as tf; from hpctrain.keras...
    python startup_probe.py --frontend keras_torch   # plain Keras 3 on torch (sparse loss)

Imports torch, then Keras, then (hpctrain only) hpctrain's Keras front end, each on its own, so
each stage's time is what that import adds to the ones before it; then builds and compiles the
model and fits 10 epochs on 1,000 random samples, as the seed program does. Prints one result
line of Unix times (the parent subtracts its spawn time and adds the exit).
"""

from __future__ import annotations

import time

STARTED_UNIX = time.time()  # before any import but the interpreter's own

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULT_PREFIX  # noqa: E402


def stage_clock():
    """Records (stage name, Unix time at its end) pairs, the first one the script's start."""
    marks = [("script_start", STARTED_UNIX)]
    return marks, lambda name: marks.append((name, time.time()))


def import_stages(frontend: str, mark):
    import numpy  # noqa: F401  (the program's first import; tiny beside the others)

    mark("numpy_import")
    import torch  # noqa: F401

    mark("torch_import")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    mark("keras_import")
    if frontend == "hpctrain":
        import hpctrain  # noqa: F401
        from hpctrain import keras  # noqa: F811  (the seam installed on the same Keras)

        mark("hpctrain_import")
    return keras


def epoch_times_callback(keras, marks):
    class EpochTimes(keras.callbacks.Callback):
        """Epoch hooks only, so the engine keeps its loop free of Python between steps."""

        def on_train_begin(self, logs=None):
            marks.append(("fit_setup", time.time()))

        def on_epoch_end(self, epoch, logs=None):
            marks.append((f"epoch_{epoch + 1}", time.time()))

    return EpochTimes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frontend", choices=("hpctrain", "keras_torch"), required=True)
    args = parser.parse_args()
    marks, mark = stage_clock()
    keras = import_stages(args.frontend, mark)
    import numpy as np

    model = keras.models.Sequential()
    model.add(keras.layers.Dense(32, input_dim=784, activation="relu"))
    model.add(keras.layers.Dense(10, activation="softmax"))
    # Keras rejects these integer labels with the categorical loss; hpctrain takes them (with a warning).
    loss = "categorical_crossentropy" if args.frontend == "hpctrain" else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.001), loss=loss, metrics=["accuracy"])
    mark("build_and_compile")
    x_train = np.random.rand(1000, 784)
    y_train = np.random.randint(10, size=(1000, 1))
    model.fit(x_train, y_train, epochs=10, batch_size=32, callbacks=[epoch_times_callback(keras, marks)])
    mark("fit_return")
    print(RESULT_PREFIX + json.dumps({"frontend": args.frontend, "marks": marks}), flush=True)


if __name__ == "__main__":
    main()
