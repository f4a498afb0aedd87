"""Keras-style training: the same user code on hpctrain or on Keras/TensorFlow.

The only difference between the frontends is the package the names are
imported from (`hpctrain` vs `tensorflow`/`keras`), which is the point of
hpctrain's Keras-compatible API: user code ports by changing one import word.

    python impl_keras_style.py --frontend hpctrain
    python impl_keras_style.py --frontend keras_torch    # the real Keras on torch, hpctrain's engine off
    python impl_keras_style.py --frontend keras [--steps-per-execution 32] [--jit-compile]
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import EpochClock, child_arg_parser, emit_result, make_dataset, selected_workload  # noqa: E402

# frontend -> (module imported as `tf`, package that holds `keras.models` etc.)
FRONTEND_PACKAGES = {
    "hpctrain": ("hpctrain", "hpctrain.keras"),
    "keras_torch": ("hpctrain", "hpctrain.keras"),
    "keras": ("tensorflow", "keras"),
}


def import_frontend(frontend: str):
    """Equivalent of `import X as tf; from X.keras.models import Sequential; ...`."""
    tf_module, keras_package = FRONTEND_PACKAGES[frontend]
    if frontend == "keras_torch":  # the same real Keras, trained by its own torch loop
        import os

        os.environ["HPCTRAIN_KERAS_ENGINE"] = "0"
    tf = importlib.import_module(tf_module)
    Sequential = importlib.import_module(f"{keras_package}.models").Sequential
    Adam = importlib.import_module(f"{keras_package}.optimizers").Adam
    Callback = importlib.import_module(f"{keras_package}.callbacks").Callback
    layers = importlib.import_module(f"{keras_package}.layers")
    return tf, Sequential, layers, importlib.import_module(f"{keras_package}.ops"), Adam, Callback


def make_epoch_timer_class(Callback):
    """An EpochTimer subclassing the frontend's own Callback, as a user would write it."""

    class EpochTimer(Callback):
        def __init__(self):
            super().__init__()
            self.clock = EpochClock()
            self.last_logs = {}

        def on_epoch_begin(self, epoch, logs=None):
            self.clock.begin_epoch()

        def on_epoch_end(self, epoch, logs=None):
            self.clock.end_epoch()
            self.last_logs = dict(logs or {})

    return EpochTimer


def build_convnet(workload, Sequential, layers):
    """The Keras example "Simple MNIST convnet", layer for layer."""
    return Sequential([
        layers.Input(shape=workload.input_shape),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(workload.num_classes, activation="softmax"),
    ])


def residual_layer_class(layers, ops):
    """A layer as a user writes it: its own weights, and a call in keras.ops that no built-in
    layer matches (hpctrain reads it from a traced call as a residual linear layer)."""

    class ResidualDense(layers.Layer):
        def build(self, input_shape):
            width = input_shape[-1]
            self.kernel = self.add_weight(shape=(width, width), initializer="glorot_uniform", name="kernel")
            self.bias = self.add_weight(shape=(width,), initializer="zeros", name="bias")

        def call(self, inputs):
            return inputs + ops.relu(ops.matmul(inputs, self.kernel) + self.bias)

    return ResidualDense


def build_residual(workload, Sequential, layers, ops):
    width, *blocks = workload.hidden_units
    ResidualDense = residual_layer_class(layers, ops)
    return Sequential([
        layers.Input(shape=(workload.input_dim,)),
        layers.Dense(width, activation="relu"),
        *(ResidualDense() for _ in blocks),
        layers.Dense(workload.num_classes, activation="softmax"),
    ])


def build_model(workload, Sequential, layers, ops):
    if workload.model == "convnet":
        return build_convnet(workload, Sequential, layers)
    if workload.model == "residual":
        return build_residual(workload, Sequential, layers, ops)
    Dense = layers.Dense
    hidden = workload.hidden_units
    layers = [Dense(hidden[0], activation="relu", input_dim=workload.input_dim)]
    layers += [Dense(units, activation="relu") for units in hidden[1:]]
    layers.append(Dense(workload.num_classes, activation="softmax"))
    return Sequential(layers)


def as_float(value):
    return None if value is None else float(value)


def main() -> None:
    parser = child_arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--frontend", choices=sorted(FRONTEND_PACKAGES), required=True)
    parser.add_argument(
        "--steps-per-execution",
        type=int,
        default=None,
        help="passed to compile() only when given, so the default run uses the frontend default",
    )
    parser.add_argument("--jit-compile", action="store_true", help="compile(jit_compile=True): XLA on TensorFlow")
    parser.add_argument("--name", default=None, help="implementation name in the result")
    args = parser.parse_args()
    workload = selected_workload(args)

    tf, Sequential, layers, ops, Adam, Callback = import_frontend(args.frontend)
    EpochTimer = make_epoch_timer_class(Callback)
    x, _labels, y_onehot = make_dataset(workload)

    model = build_model(workload, Sequential, layers, ops)
    compile_options = {}
    if args.steps_per_execution is not None:
        compile_options["steps_per_execution"] = args.steps_per_execution
    if args.jit_compile:
        compile_options["jit_compile"] = True
    model.compile(
        optimizer=Adam(learning_rate=workload.learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        **compile_options,
    )
    timer = EpochTimer()
    model.fit(
        x,
        y_onehot,
        epochs=args.epochs,
        batch_size=workload.batch_size,
        shuffle=True,
        validation_split=workload.validation_split,
        verbose=0,
        callbacks=[timer],
    )

    emit_result(
        args.name or args.frontend,
        workload,
        timer.clock,
        as_float(timer.last_logs.get("loss")),
        as_float(timer.last_logs.get("accuracy")),
        frontend=args.frontend,
        frontend_version=getattr(tf, "__version__", None),
        compile_options=compile_options,
    )


if __name__ == "__main__":
    main()
