import contextlib

import numpy as np
import hpctrain.keras as hk
from hpctrain import keras


@contextlib.contextmanager
def keras_own_loop():
    """Keras's own fit/evaluate/predict for the reference run."""
    hk.use_engine(False)
    try:
        yield
    finally:
        hk.use_engine(True)


def max_difference(first, second) -> float:
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(first, second, strict=True))


def optimizer_values(model):
    return [v.numpy() for v in model.optimizer.variables]


def classification_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 12)).astype("float32")
    y = (x @ rng.normal(size=(12, 3))).argmax(1)
    return x, y


def twin_fits(build, x, y, **fit_arguments):
    """The same model (same seed) fitted by hpctrain's engine and by Keras's own loop."""
    keras.utils.set_random_seed(7)
    ours = build()
    ours_history = ours.fit(x, y, verbose=0, shuffle=False, **fit_arguments)
    keras.utils.set_random_seed(7)
    reference = build()
    with keras_own_loop():
        reference_history = reference.fit(x, y, verbose=0, shuffle=False, **fit_arguments)
    return (ours, ours_history), (reference, reference_history)
