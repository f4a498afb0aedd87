"""A Keras optimizer as the engine's optimizer, and its state kept in Keras's own variables.

Adam, AdamW and SGD map onto PyTorch's kernels (fused where the device has them), whose update
is Keras's: the same moments, and for SGD the same step for a fixed rate (Keras keeps
``m = -lr * buf`` where PyTorch keeps ``buf``). Adam's epsilon, which Keras adds to ``sqrt(v)`` and
PyTorch to ``sqrt(v_hat)``, is rescaled before each step so that the update is Keras's. Every other optimizer, and options the kernels lack (clipping, EMA, gradient
accumulation, loss scaling, weight-decay exclusions), runs Keras's own ``apply`` on the
gradients autograd leaves: exact, and slower.

Keras's slots are read by their documented layout (``_momentums``/``_velocities``/``momentums``
per trainable variable, in order); the Keras range pinned in ``backend_select`` is the one tested.
"""

from __future__ import annotations

import keras
import torch

from hpctrain.engine.optim import LazyOptimizer, build_optimizer

_UNMAPPED_OPTIONS = ("clipnorm", "clipvalue", "global_clipnorm", "loss_scale_factor",
                     "gradient_accumulation_steps")


def why_not_mapped(optimizer, variables=()) -> str | None:
    """``None`` when a PyTorch kernel runs this optimizer's exact update of ``variables``, else the reason."""
    if any(getattr(v, "constraint", None) is not None for v in variables):
        return "a weight constraint is applied by Keras's own update"
    kind = type(optimizer)
    if not isinstance(optimizer, (keras.optimizers.Adam, keras.optimizers.SGD)) or (
            isinstance(optimizer, keras.optimizers.Adam) and kind.__mro__[2:3] != (keras.optimizers.Adam,)
            and not isinstance(optimizer, keras.optimizers.AdamW)):
        return f"{type(optimizer).__name__} runs Keras's own update"
    given = [name for name in _UNMAPPED_OPTIONS if getattr(optimizer, name, None)]
    if getattr(optimizer, "use_ema", False):
        given.append("use_ema")
    if getattr(optimizer, "amsgrad", False):
        given.append("amsgrad")
    if getattr(optimizer, "_exclude_from_weight_decay", None) or getattr(
            optimizer, "_exclude_from_weight_decay_pattern", None):
        given.append("weight-decay exclusions")
    if given:
        return f"the optimizer's {', '.join(given)} runs Keras's own update"
    rate = optimizer._learning_rate
    if callable(rate) and not isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        return "a learning rate given as a function runs Keras's own update"
    return None


def _rate_and_schedule(optimizer):
    rate = optimizer._learning_rate
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        return float(rate(0)), lambda step: float(rate(step))
    return float(rate.numpy() if hasattr(rate, "numpy") else rate), None


def engine_optimizer(optimizer, params: list, device: torch.device) -> LazyOptimizer:
    """The PyTorch optimizer (built lazily) over the Keras model's trainable parameters."""
    lr, schedule = _rate_and_schedule(optimizer)
    decay = float(optimizer.weight_decay or 0.0)
    if isinstance(optimizer, keras.optimizers.Adam):
        torch_class = torch.optim.AdamW if decay else torch.optim.Adam
        hyper = dict(betas=(float(optimizer.beta_1), float(optimizer.beta_2)), eps=float(optimizer.epsilon),
                     weight_decay=decay)
    else:
        if decay:  # Keras decays before the step, decoupled from the gradient: not torch's SGD
            raise ValueError("SGD with weight_decay has no PyTorch kernel equal to Keras's update")
        torch_class = torch.optim.SGD
        hyper = dict(momentum=float(optimizer.momentum), nesterov=bool(optimizer.nesterov))
    engine = build_optimizer(torch_class, params, device, lr=lr, schedule=schedule, **hyper)
    if isinstance(optimizer, keras.optimizers.Adam):
        engine.keras_epsilon = float(optimizer.epsilon)
    return engine


# ---- state between the engine and Keras's variables ---------------------------------------------


def _slots(optimizer) -> dict[str, list]:
    if isinstance(optimizer, keras.optimizers.Adam):
        return {"exp_avg": optimizer._momentums, "exp_avg_sq": optimizer._velocities}
    if getattr(optimizer, "momentum", 0.0):
        return {"momentum_buffer": optimizer.momentums}
    return {}


def _slot_positions(optimizer) -> dict[int, int]:
    """Each trainable variable's torch Parameter (by identity) to its position in Keras's slot
    lists: an engine over part of the model (a pipeline stage) finds its own slots."""
    return {id(variable.value): index for index, variable in enumerate(optimizer._trainable_variables)}


def load_into_engine(optimizer, engine: LazyOptimizer, variables) -> None:
    """Keras's iteration count and moments (a loaded model, an earlier Keras fit) into the engine."""
    if not optimizer.built:
        optimizer.build(variables)
        return
    iterations = int(optimizer.iterations.numpy())
    engine.scheduled_updates = iterations
    if iterations == 0:
        return
    slots, lr = _slots(optimizer), float(optimizer.learning_rate.numpy())
    slot_of = _slot_positions(optimizer)
    for param in engine.params:
        index, state = slot_of[id(param)], {}
        for key, values in slots.items():
            value = values[index].value.detach().clone()
            state[key] = value / -lr if key == "momentum_buffer" else value
        if isinstance(optimizer, keras.optimizers.Adam):
            state["step"] = torch.tensor(float(iterations), device=param.device)
        engine.state[param] = state


def _engine_count(engine: LazyOptimizer) -> int:
    for state in engine.state.values():
        if "step" in state:
            return int(state["step"])  # host read
    return engine.scheduled_updates


def reload_if_changed(optimizer, engine: LazyOptimizer) -> None:
    """Keras's count and moments into the engine where something other than the engine changed
    them since the engine last wrote them (``BackupAndRestore`` loading a backup as training
    begins): copied into the engine's own tensors, which a fused update holds."""
    iterations = int(optimizer.iterations.numpy())
    if not optimizer.built or iterations == _engine_count(engine):
        return
    engine.scheduled_updates = iterations
    slots, lr = _slots(optimizer), float(optimizer.learning_rate.numpy())
    slot_of = _slot_positions(optimizer)
    with torch.no_grad():
        for param in engine.params:
            index, state = slot_of[id(param)], engine.state.setdefault(param, {})
            for key, values in slots.items():
                value = values[index].value.detach()
                value = value / -lr if key == "momentum_buffer" else value
                if key in state:
                    state[key].copy_(value)
                else:
                    state[key] = value.clone()
            if "step" in state:
                state["step"].fill_(float(iterations))
            elif isinstance(optimizer, keras.optimizers.Adam):
                state["step"] = torch.tensor(float(iterations), device=param.device)


def write_back(optimizer, engine: LazyOptimizer) -> None:
    """The engine's update count and moments into Keras's variables: what Keras's fit leaves."""
    counted = _engine_count(engine)
    optimizer.iterations.assign(counted)
    engine.scheduled_updates = counted
    if counted == 0:
        return
    _write_slots(optimizer, engine.params, [engine.state.get(param, {}) for param in engine.params],
                 float(engine.param_groups[0]["lr"]))


def _write_slots(optimizer, params: list, states: list[dict], lr: float) -> None:
    slots, slot_of = _slots(optimizer), _slot_positions(optimizer)
    with torch.no_grad():
        for param, state in zip(params, states, strict=True):
            for key, values in slots.items():
                if key in state and id(param) in slot_of:
                    value = state[key] * -lr if key == "momentum_buffer" else state[key]
                    values[slot_of[id(param)]].value.copy_(value)


def write_back_gathered(optimizer, params: list, states: list[dict], updates: int) -> None:
    """Every stage's optimizer state, gathered in the order of ``params`` (the whole model's), into
    Keras's variables after a pipelined fit: what Keras's own fit leaves. ``updates``: this fit's."""
    counts = [int(state["step"]) for state in states if "step" in state]
    optimizer.iterations.assign(max(counts) if counts else int(optimizer.iterations.numpy()) + updates)
    _write_slots(optimizer, params, states, float(optimizer.learning_rate.numpy()))


def set_rate(optimizer, engine: LazyOptimizer) -> None:
    """A fixed rate changed by a callback (``ReduceLROnPlateau``, ``LearningRateScheduler``) into the engine."""
    if engine.schedule is None:
        rate = float(optimizer.learning_rate.numpy())
        for group in engine.param_groups:
            group["lr"] = rate


def keep_rate(optimizer, engine: LazyOptimizer) -> None:
    """The engine's fixed rate into Keras's variable: the rate the plan rescaled for its chosen batch
    size (``make_plan(lr_scaling=...)``) is then the one Keras shows, callbacks start from, and
    ``set_rate`` reads back at each epoch's start."""
    if engine.schedule is None:
        optimizer.learning_rate.assign(float(engine.param_groups[0]["lr"]))


class KerasApply:
    """Keras's own update as the optimizer of the engine's autograd step: ``step()`` hands the
    gradients autograd left in ``.grad`` to ``optimizer.apply``."""

    def __init__(self, optimizer, variables):
        self.optimizer = optimizer
        self.variables = list(variables)
        self.params = [v.value for v in self.variables]
        self.param_groups = [{"params": self.params, "lr": None}]
        if not optimizer.built:
            optimizer.build(self.variables)
        # What a step changes, in the engine's layout, so that measuring steps can be undone.
        self.state = {v.value: {"value": v.value} for v in optimizer.variables}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.optimizer.apply([p.grad for p in self.params], self.variables)
