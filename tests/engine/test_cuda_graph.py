"""CUDA-graph replay of static steps equals eager static steps (GPU only)."""

import numpy as np
import pytest
import torch

import hpctrain
import hpctrain as tf
from hpctrain.keras import optimizers, regularizers
from hpctrain.keras.callbacks import Callback
from hpctrain.keras.layers import Dense, Dropout
from hpctrain.keras.models import Sequential

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")

ROWS = 32 * 70 + 5  # two groups of 32 steps, six eager full steps and a partial batch per epoch


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(ROWS, 20)).astype("float32"), rng.integers(0, 5, size=ROWS)


def _train(cuda_graph, layers=None, callbacks=(), epochs=3):
    x, y = _data()
    tf.keras.utils.set_random_seed(3)
    model = Sequential(layers or [Dense(16, activation="tanh", input_dim=20), Dense(5, activation="softmax")])
    model.compile(optimizer=optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  plan=hpctrain.make_plan(cuda_graph=cuda_graph))
    history = model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=list(callbacks))
    return model, history


def _assert_same(a, b):
    (model_a, history_a), (model_b, history_b) = a, b
    for wa, wb in zip(model_a.get_weights(), model_b.get_weights()):
        np.testing.assert_allclose(wa, wb, atol=1e-6, rtol=0)
    for key in history_b.history:
        np.testing.assert_allclose(history_a.history[key], history_b.history[key], atol=1e-6)


def test_graph_replay_equals_eager_static_steps():
    graphed, eager = _train(True), _train(False)
    assert "cuda_graph: True (32 static steps per launch)" in graphed[0].plan.explain()
    assert "cuda_graph: False (not asked for)" in eager[0].plan.explain()
    _assert_same(graphed, eager)


class HalveLearningRate(Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch:
            self.model.optimizer.learning_rate = self.model.optimizer.learning_rate / 2


def test_a_learning_rate_change_is_replayed_too():
    _assert_same(_train(True, callbacks=[HalveLearningRate()]), _train(False, callbacks=[HalveLearningRate()]))


def test_regularized_model_with_dropout_trains_under_graphs():
    layers = [Dense(32, activation="relu", input_dim=20, kernel_regularizer=regularizers.L2(1e-3)), Dropout(0.2),
              Dense(5, activation="softmax")]
    model, history = _train(True, layers=layers, epochs=4)
    assert model.plan.cuda_graph
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_callbacks_on_every_batch_turn_graphs_off():
    class EveryBatch(Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    model, _ = _train(True, callbacks=[EveryBatch()], epochs=1)
    assert "cuda_graph: False (a callback listens to every batch)" in model.plan.explain()
