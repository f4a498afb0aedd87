"""Cutting a layer stack into pipeline stages from what the caller passes: distribute knows no front end."""

import pytest
import torch

from hpctrain.distribute import PipelineStrategy
from hpctrain.distribute.partition import split_model, stack_layers
from hpctrain.errors import ConfigError


def _mlp():
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                               torch.nn.Linear(256, 4))


def test_a_list_of_layers_and_its_torch_sequential_cut_alike():
    net = _mlp()
    as_list = split_model(list(net), 2)
    as_sequential = split_model(net, 2)
    assert as_list.basis.startswith("balanced by measured forward+backward time")  # Linear first: shape known
    assert [c.params for c in as_list.costs] == [c.params for c in as_sequential.costs]
    assert len(as_list.costs) == 4


def test_a_sample_shape_from_the_caller_lets_the_cut_be_measured():
    layers = [torch.nn.Flatten(), torch.nn.Linear(12, 32), torch.nn.Linear(32, 2)]
    assert split_model(layers, 2).basis == "balanced by parameter count"  # Flatten first: shape unknown
    measured = split_model(layers, 2, sample_shape=(3, 4))
    assert measured.basis.startswith("balanced by measured forward+backward time")
    assert all(cost.seconds > 0 for cost in measured.costs)


def test_a_module_that_is_not_a_stack_is_refused():
    with pytest.raises(ConfigError, match="a pipeline cuts a Sequential stack of layers into stages; got a Linear"):
        stack_layers(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="a pipeline stage holds torch modules; the layer stack has builtin_function_or_method"):
        stack_layers([torch.nn.Linear(2, 2), torch.relu])


def test_keras_layers_passed_by_their_front_end_are_cut_without_distribute_knowing_keras():
    keras = pytest.importorskip("hpctrain.keras")
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256), keras.layers.Dense(256),
                              keras.layers.Dense(4)])
    strategy = PipelineStrategy(stages=2, microbatches=4)
    with pytest.raises(ConfigError, match="got a Sequential"):
        strategy.split(model)  # the Keras model itself is no stack distribute can read
    strategy.on_compile(model, layers=model.layers, sample_shape=(64,))
    split = strategy.split()
    assert split.basis.startswith("balanced by measured forward+backward time")
    assert [cost.params for cost in split.costs] == [64 * 256 + 256, 256 * 256 + 256, 256 * 4 + 4]
    assert "cut points: [" in strategy.describe()
