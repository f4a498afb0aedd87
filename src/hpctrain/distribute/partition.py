"""Cutting a layer stack into contiguous pipeline stages, and saying what each stage holds.

The cut is balanced on measured per-layer time (forward and backward on a probe batch), or on
parameter counts where the input shape is unknown, or taken as given (``cut_points``).
"""

from __future__ import annotations

import dataclasses
import time

import torch

from hpctrain.errors import ConfigError

PROBE_ROWS = 64
_WARMUP, _REPEATS = 2, 7
# Optimizer state kept per weight (Adam: two moments), for the memory column of describe().
_OPTIMIZER_SLOTS = {"Adam": 2, "AdamW": 2, "Adamax": 2, "NAdam": 2, "RMSprop": 1, "Adagrad": 1}


@dataclasses.dataclass(frozen=True)
class LayerCost:
    name: str
    params: int
    weight_bytes: int
    seconds: float | None  # forward + backward on the probe batch; None when not measured


@dataclasses.dataclass(frozen=True)
class Split:
    """Stage ``s`` holds layers ``[bounds[s], bounds[s+1])``; ``cut_points`` are the inner bounds."""

    cut_points: tuple[int, ...]
    costs: tuple[LayerCost, ...]
    basis: str  # how the cut was chosen, for describe()

    @property
    def stages(self) -> int:
        return len(self.cut_points) + 1

    def stage_ranges(self) -> list[range]:
        bounds = (0, *self.cut_points, len(self.costs))
        return [range(bounds[s], bounds[s + 1]) for s in range(self.stages)]

    def describe(self, *, optimizer_slots: int | None = None, header: str = "") -> str:
        total_seconds = sum(c.seconds or 0.0 for c in self.costs)
        total_params = sum(c.params for c in self.costs) or 1
        state = f"weights+grads+{optimizer_slots} slots" if optimizer_slots else "weights+grads"
        rows = [("stage", "layers", "params", "weights", state, "time share")]
        for stage, layers in enumerate(self.stage_ranges()):
            costs = [self.costs[i] for i in layers]
            params, weight_bytes = sum(c.params for c in costs), sum(c.weight_bytes for c in costs)
            share = (sum(c.seconds for c in costs) / total_seconds if total_seconds and costs[0].seconds is not None
                     else params / total_params)
            names = ", ".join(c.name for c in costs)
            rows.append((str(stage), f"{layers.start}-{layers.stop - 1} ({names})", f"{params:,}",
                         _mib(weight_bytes), _mib(weight_bytes * (2 + (optimizer_slots or 0))), f"{share:.1%}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [header] if header else []
        lines.append(f"cut points: {list(self.cut_points)} (a stage starts at each layer index), {self.basis}")
        lines += ["  ".join(cell.ljust(width) if i < 2 else cell.rjust(width)
                            for i, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
        if not self.costs or self.costs[0].seconds is None:
            lines.append("time share: by parameter count (the input shape is unknown, so no time was measured)")
        return "\n".join(lines)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 // 10 else f"{size / 2**10:.0f} KiB"


def stack_layers(layers) -> list[torch.nn.Module]:
    """``layers`` as a list: the caller's layer stack, in order, as plain torch modules.

    The caller knows its model: a front end passes its model's layers; a ``torch.nn.Sequential``
    is its own stack. Nothing here knows a front end's model classes.
    """
    if isinstance(layers, torch.nn.Module) and not isinstance(layers, torch.nn.Sequential):
        raise ConfigError(f"a pipeline cuts a Sequential stack of layers into stages; got a {type(layers).__name__}. "
                          "Express the model as a Sequential (a torch.nn.Sequential, or a front end's Sequential, "
                          "whose layers it passes on).")
    stack = list(layers)
    odd = [type(layer).__name__ for layer in stack if not isinstance(layer, torch.nn.Module)]
    if odd:
        raise ConfigError(f"a pipeline stage holds torch modules; the layer stack has {', '.join(odd)}.")
    return stack


def input_shape_of(layers) -> tuple[int, ...] | None:
    """One sample's shape where the stack itself shows it (a ``Linear`` first layer), else ``None``."""
    first = next(iter(layers), None)
    return (first.in_features,) if isinstance(first, torch.nn.Linear) else None


def layer_costs(layers, *, measure: bool = True, sample_shape=None) -> tuple[LayerCost, ...]:
    """Each layer's size and, with ``measure`` and a known sample shape, its measured time."""
    layers = stack_layers(layers)
    shape = (tuple(sample_shape) if sample_shape is not None else input_shape_of(layers)) if measure else None
    seconds = _measured_seconds(layers, shape) if shape is not None else [None] * len(layers)
    return tuple(LayerCost(name=getattr(layer, "name", type(layer).__name__), params=_params(layer),
                           weight_bytes=sum(p.numel() * p.element_size() for p in layer.parameters()),
                           seconds=s) for layer, s in zip(layers, seconds, strict=True))


def _params(layer: torch.nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


def _measured_seconds(layers, sample_shape) -> list[float]:
    """Forward + backward time of each layer on a probe batch: the fastest of several rounds.

    Rounds pass through every layer in turn, so a burst of other work on the machine slows one
    round of all layers rather than every repeat of one layer. The RNG is forked (the probe draws
    inputs and may run dropout) and gradients are taken with ``autograd.grad``, so measuring
    leaves no trace on training.
    """
    with torch.random.fork_rng():
        device = next((p.device for layer in layers for p in layer.parameters()), torch.device("cpu"))
        probe = torch.randn(PROBE_ROWS, *sample_shape, device=device)
        best = [float("inf")] * len(layers)
        for round_ in range(_WARMUP + _REPEATS):
            x = probe
            for index, layer in enumerate(layers):
                start = time.perf_counter()
                x_in = x.detach().requires_grad_(True)
                x = layer(x_in)
                inputs = [x_in, *(p for p in layer.parameters() if p.requires_grad)]
                torch.autograd.grad(x, inputs, grad_outputs=torch.ones_like(x), allow_unused=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # a host sync, so the clock measures the kernels
                if round_ >= _WARMUP:
                    best[index] = min(best[index], time.perf_counter() - start)
    return best


def balanced_cut_points(weights: list[float], stages: int) -> tuple[int, ...]:
    """Contiguous cut of ``weights`` into ``stages`` non-empty parts with the smallest largest part."""
    n = len(weights)
    prefix = [0.0]
    for weight in weights:
        prefix.append(prefix[-1] + weight)
    # best[k][i]: (largest part, cuts) for the first i layers in k parts.
    best = [[(float("inf"), ())] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = (0.0, ())
    for k in range(1, stages + 1):
        for i in range(k, n - (stages - k) + 1):
            for j in range(k - 1, i):
                previous, cuts = best[k - 1][j]
                candidate = max(previous, prefix[i] - prefix[j])
                if candidate < best[k][i][0]:
                    best[k][i] = (candidate, cuts + ((j,) if k > 1 else ()))
    return best[stages][n][1]


def split_model(layers, stages: int, cut_points=None, *, sample_shape=None) -> Split:
    """Cuts ``layers`` (the model's layer stack, in order) into ``stages`` contiguous stages.

    ``sample_shape``: one input row's shape, from the caller that knows it; without it (and
    without a ``Linear`` first layer) the cut is balanced on parameter counts.
    """
    costs = layer_costs(layers, measure=cut_points is None, sample_shape=sample_shape)
    if stages > len(costs):
        raise ConfigError(f"stages={stages} but the model has {len(costs)} layers; each stage needs at least one "
                          f"layer. Use stages <= {len(costs)}.")
    if cut_points is not None:
        return Split(check_cut_points(cut_points, stages, len(costs)), costs, "as given")
    if costs[0].seconds is not None:
        cuts = balanced_cut_points([c.seconds for c in costs], stages)
        return Split(cuts, costs, f"balanced by measured forward+backward time ({PROBE_ROWS} rows)")
    return Split(balanced_cut_points([c.params for c in costs], stages), costs, "balanced by parameter count")


def check_cut_points(cut_points, stages: int, layers: int) -> tuple[int, ...]:
    cuts = tuple(cut_points)
    valid = (len(cuts) == stages - 1 and all(isinstance(c, int) for c in cuts)
             and all(a < b for a, b in zip((0, *cuts), (*cuts, layers))))
    if not valid:
        example = list(balanced_cut_points([1.0] * layers, stages)) if stages <= layers else []
        raise ConfigError(
            f"cut_points={list(cuts)} does not cut {layers} layers into {stages} stages: give {stages - 1} "
            f"increasing layer indices between 1 and {layers - 1} (stage s+1 starts at cut_points[s]), "
            f"e.g. {example}.")
    return cuts


def optimizer_slots(optimizer) -> int | None:
    """Tensors of optimizer state per weight, for describe(); ``None`` when not known."""
    torch_class = getattr(optimizer, "torch_class", None)
    if torch_class is None:
        return None
    if torch_class is torch.optim.SGD:
        return 1 if getattr(optimizer, "momentum", 0.0) else 0
    return _OPTIMIZER_SLOTS.get(torch_class.__name__)
