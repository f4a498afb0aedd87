"""Keras models on PipelineStrategy: a chain of layers is cut into stages and trains as one process's fit."""

import numpy as np
import pytest

import hpctrain as tf
from hpctrain.errors import ConfigError
from pipeline_case import CLASSES, FEATURES, KERAS_FIT, compile_keras, data, keras_model
from test_pipeline import assert_same_history, assert_same_weights, load_rank, plain_start, run_launched  # noqa: F401


@pytest.fixture(scope="module")
def reference():
    """One process, the same seed and batches: the Keras model's fit, evaluate and predict (either kind:
    the Sequential and the functional chain start from the same weights)."""
    x, y = data()
    model = keras_model("sequential")
    compile_keras(model)
    history = model.fit(x, y, verbose=0, **KERAS_FIT)
    return dict(history=history.history, weights=model.get_weights(),
                optimizer=[v.numpy() for v in model.optimizer.variables],
                evaluate=model.evaluate(x, y, verbose=0, return_dict=True), predictions=model.predict(x, verbose=0))


@pytest.mark.parametrize("kind, stages, replicas, microbatches, schedules", [
    ("sequential", 2, 1, 4, ("gpipe", "1f1b")), ("functional", 3, 1, 4, ("1f1b",)),
    ("sequential", 2, 2, 2, ("1f1b",))])
def test_launched_keras_stages_train_as_one_process(tmp_path, reference, kind, stages, replicas, microbatches,
                                                    schedules):
    out = run_launched(tmp_path, stages, replicas, microbatches, schedules, keras_kind=kind)
    for schedule in schedules:
        for rank in range(stages * replicas):  # every rank's model holds the whole trained weights
            arrays, meta = load_rank(out, schedule, rank)
            assert meta["world_size"] == stages * replicas and len(meta["cut"]) == stages - 1
            assert_same_history(meta["history"], reference["history"])
            assert_same_weights([arrays[f"weight{i}"] for i in range(meta["weights"])], reference["weights"])
            assert meta["evaluate"].keys() == reference["evaluate"].keys()
            for key, value in reference["evaluate"].items():
                np.testing.assert_allclose(meta["evaluate"][key], value, atol=1e-5)
            np.testing.assert_allclose(arrays["predictions"], reference["predictions"], atol=1e-5)
            # Keras's optimizer variables (iterations, Adam's moments) hold what the stages trained.
            assert_same_weights([arrays[f"optimizer{i}"] for i in range(len(reference["optimizer"]))],
                                reference["optimizer"])


def test_a_plain_start_spawns_a_process_per_stage_and_brings_the_trained_model_back(plain_start, reference):
    """``python script.py``: fit spawns the stages; the weights, History, Keras's optimizer variables
    and what evaluate and predict give afterwards equal one process's fit."""
    x, y = data()
    strategy = tf.distribute.PipelineStrategy(stages=2, microbatches=4)
    with strategy.scope():
        model = keras_model("sequential")
        compile_keras(model)
    history = model.fit(x, y, verbose=0, **KERAS_FIT)
    assert_same_history(history.history, reference["history"])
    assert_same_weights(model.get_weights(), reference["weights"])
    assert_same_weights([v.numpy() for v in model.optimizer.variables], reference["optimizer"])
    np.testing.assert_allclose(model.predict(x, verbose=0), reference["predictions"], atol=1e-5)
    for key, value in model.evaluate(x, y, verbose=0, return_dict=True).items():
        np.testing.assert_allclose(value, reference["evaluate"][key], atol=1e-5)


def _cut(model, stages=2):
    strategy = tf.distribute.PipelineStrategy(stages=stages, microbatches=2)
    from hpctrain.keras.pipeline_layers import pipeline_layers, sample_shape

    strategy.on_compile(model, layers=pipeline_layers(model), sample_shape=sample_shape(model))
    return strategy.split(model)


def test_a_sequential_and_its_functional_chain_are_cut_into_the_same_layers():
    sequential, functional = _cut(keras_model("sequential")), _cut(keras_model("functional"))
    assert [c.params for c in sequential.costs] == [c.params for c in functional.costs] == [
        FEATURES * 16 + 16, 16 * 8 + 8, 8 * CLASSES + CLASSES]
    assert sequential.basis.startswith("balanced by measured forward+backward time")  # the Input gave the shape


def test_a_stage_calls_each_keras_layer_on_the_shared_weights():
    from hpctrain.keras.pipeline_layers import pipeline_layers

    model = keras_model("sequential")
    layers = pipeline_layers(model)
    assert [id(p) for layer in layers for p in layer.parameters()] == [
        id(p) for layer in model.layers for p in layer.parameters()]
    x = np.asarray(data()[0][:5])
    import torch

    out = torch.as_tensor(x)
    for layer in layers:
        out = layer(out)
    np.testing.assert_allclose(out.detach().numpy(), model.predict(x, verbose=0), atol=1e-6)


def _branching():
    from hpctrain import keras

    inputs = keras.Input((FEATURES,))
    left, right = keras.layers.Dense(8)(inputs), keras.layers.Dense(8)(inputs)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(keras.layers.Add()([left, right])))


def _subclassed():
    from hpctrain import keras

    class TwoDense(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden, self.out = keras.layers.Dense(8), keras.layers.Dense(CLASSES)

        def call(self, x):
            return self.out(self.hidden(x))

    return TwoDense()


@pytest.mark.parametrize("make, why", [
    (_branching, r"its graph branches: layer 'dense(_\d+)?' \(Dense\) does not take the previous layer's output alone"),
    (_subclassed, r"TwoDense is a subclassed model: its call\(\) is code, not a graph of layers to cut")])
def test_a_model_that_is_not_a_chain_is_refused_with_what_to_do(plain_start, make, why):
    x, y = data()
    strategy = tf.distribute.PipelineStrategy(stages=2, microbatches=2)
    with strategy.scope():
        model = make()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(ConfigError, match=r"PipelineStrategy cuts a chain of layers into stages, but " + why +
                       r"\. Express the model as a keras.Sequential or a functional chain .*or train it with "
                       r"MirroredStrategy \(data parallel\), which takes any model\."):
        model.fit(x, y, batch_size=16, verbose=0)


def test_a_regularized_keras_model_is_refused_rather_than_trained_without_its_penalty(plain_start):
    from hpctrain import keras

    x, y = data()
    strategy = tf.distribute.PipelineStrategy(stages=2, microbatches=2)
    with strategy.scope():
        model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(8, kernel_regularizer="l2"),
                                  keras.layers.Dense(CLASSES)])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(ConfigError, match="weight regularizers are not supported with PipelineStrategy yet"):
        model.fit(x, y, batch_size=16, verbose=0)


def test_an_optimizer_without_a_kernel_equal_to_keras_is_refused(plain_start):
    x, y = data()
    strategy = tf.distribute.PipelineStrategy(stages=2, microbatches=2)
    with strategy.scope():
        model = keras_model("sequential")
        model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy")
    with pytest.raises(ConfigError, match=r"PipelineStrategy builds each stage's optimizer as a PyTorch kernel equal "
                                          r"to Keras's, but .*\. Compile with keras.optimizers.Adam or SGD, or use "
                                          r"MirroredStrategy\."):
        model.fit(x, y, batch_size=16, verbose=0)


def test_a_stage_optimizer_continues_from_the_keras_moments_of_its_own_weights():
    """A stage's engine optimizer, over part of the model, takes the Keras slots of its own weights."""
    import torch

    import hpctrain.keras as hk
    from hpctrain.keras import optimizer_map

    x, y = data()
    model = keras_model("sequential")
    compile_keras(model)
    hk.use_engine(False)  # Keras's own fit leaves the moments
    try:
        model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    finally:
        hk.use_engine(True)
    last = model.layers[-1]
    engine = optimizer_map.engine_optimizer(model.optimizer, [v.value for v in last.trainable_variables],
                                            torch.device("cpu"))
    optimizer_map.load_into_engine(model.optimizer, engine, model.trainable_variables)
    for variable in last.trainable_variables:
        index = [id(v) for v in model.trainable_variables].index(id(variable))
        state = engine.state[variable.value]
        np.testing.assert_array_equal(state["exp_avg"].numpy(), model.optimizer._momentums[index].numpy())
        np.testing.assert_array_equal(state["exp_avg_sq"].numpy(), model.optimizer._velocities[index].numpy())
        assert int(state["step"]) == int(model.optimizer.iterations.numpy()) == -(-len(x) // 16)
