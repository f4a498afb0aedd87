"""Keras on its JAX backend, in a process of its own (no hpctrain): what the tests in
``test_keras_files.py`` compare hpctrain's Keras files with.

    KERAS_BACKEND=jax python jax_keras.py FOLDER continue write

``continue``: load FOLDER/hpctrain.keras, fit one more epoch; ``write``: train and save
FOLDER/jax.keras, then the same. The commands run in order in one process, which imports JAX once.

Reads ``FOLDER/data.npz`` (x, y); writes ``FOLDER/<command>.npz`` (predictions, weights and the
optimizer's variables of the loaded model, and the weights after one more epoch) and
``FOLDER/<command>.json`` (backend, compile config, optimizer class, iteration counts).
"""

import json
import os
import sys

import numpy as np

BATCH = 16


def build(keras):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def main(command: str, folder: str) -> None:
    import keras

    if keras.config.backend() != "jax":
        raise SystemExit(f"expected Keras on JAX, got {keras.config.backend()}")
    data = np.load(os.path.join(folder, "data.npz"))
    x, y = data["x"], data["y"]
    if command == "write":
        keras.utils.set_random_seed(7)
        model = build(keras)
        model.fit(x, y, batch_size=BATCH, epochs=5, shuffle=False, verbose=0)
        model.save(os.path.join(folder, "jax.keras"))
        path = os.path.join(folder, "jax.keras")
    else:
        path = os.path.join(folder, "hpctrain.keras")
    model = keras.models.load_model(path)
    arrays = {"predictions": model.predict(x, batch_size=BATCH, verbose=0)}
    arrays.update({f"weight{i}": w for i, w in enumerate(model.get_weights())})
    arrays.update({f"optimizer{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)})
    facts = {"backend": keras.config.backend(), "compiled": bool(model.compiled),
             "compile_config": model.get_compile_config(),
             "optimizer_class": f"{type(model.optimizer).__module__}.{type(model.optimizer).__name__}",
             "optimizer_variables": [v.path for v in model.optimizer.variables],
             "loaded_iterations": int(model.optimizer.iterations)}
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    facts["continued_iterations"] = int(model.optimizer.iterations)
    arrays.update({f"continued{i}": w for i, w in enumerate(model.get_weights())})
    np.savez(os.path.join(folder, f"{command}.npz"), **arrays)
    with open(os.path.join(folder, f"{command}.json"), "w") as out:
        json.dump(facts, out)


if __name__ == "__main__":
    for name in sys.argv[2:]:
        main(name, sys.argv[1])
