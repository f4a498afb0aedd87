"""PyTorch helpers shared by the plain-PyTorch implementations."""

from __future__ import annotations

import time

import torch
from torch import nn

from common import Workload, physical_core_count


def configure_torch() -> int:
    """Pins intra-op threads to the physical cores and seeds torch; returns the thread count."""
    threads = physical_core_count()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return threads


def build_mlp(workload: Workload) -> nn.Sequential:
    """Linear/ReLU stack ending in logits; softmax lives inside the cross-entropy loss."""
    sizes = workload.layer_sizes
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def build_convnet(workload: Workload) -> nn.Sequential:
    """The Keras MNIST convnet in PyTorch's NCHW layers, ending in logits."""
    channels, height = workload.input_shape[-1], workload.input_shape[0]
    flat = 64 * (((height - 2) // 2 - 2) // 2) ** 2
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(flat, workload.num_classes),
    )


class ResidualLinear(nn.Module):
    """x + relu(x @ W + b): the residual layer of the "residual" workloads."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return x + torch.relu(self.linear(x))


def build_residual(workload: Workload) -> nn.Sequential:
    width, *blocks = workload.hidden_units
    return nn.Sequential(
        nn.Linear(workload.input_dim, width), nn.ReLU(),
        *(ResidualLinear(width) for _ in blocks),
        nn.Linear(width, workload.num_classes),
    )


def build_model(workload: Workload) -> nn.Sequential:
    builders = {"convnet": build_convnet, "residual": build_residual, "mlp": build_mlp}
    return builders[workload.model](workload)


def torch_details(threads: int) -> dict:
    return {"torch_version": torch.__version__, "torch_threads": threads}


def hpctrain_mlp(workload: Workload, plan=None):
    """The workload's MLP through hpctrain's Keras front end, compiled as the benchmarks train it
    (Adam, categorical cross-entropy on one-hot labels, accuracy); ``plan``: hpctrain's own, e.g.
    ``make_plan(threads=2)`` to fix the thread count."""
    import hpctrain as tf
    from hpctrain.keras import Sequential
    from hpctrain.keras.layers import Dense

    hidden = [Dense(units, activation="relu") for units in workload.hidden_units]
    model = Sequential([tf.keras.Input(shape=(workload.input_dim,)), *hidden,
                        Dense(workload.num_classes, activation="softmax")])
    model.compile(optimizer=tf.keras.optimizers.Adam(workload.learning_rate), loss="categorical_crossentropy",
                  metrics=["accuracy"], plan=plan)
    return model


def fastest_call(*calls, rounds: int = 3, min_seconds: float = 0.01) -> int:
    """Index of the call with the lowest time per call: each timed over at least ``min_seconds``
    per round, the calls taking turns for ``rounds`` rounds, each keeping its best round."""
    best = [float("inf")] * len(calls)
    for _ in range(rounds):
        for index, call in enumerate(calls):
            call()
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < min_seconds:
                call()
                done += 1
            best[index] = min(best[index], (time.perf_counter() - start) / done)
    return best.index(min(best))
