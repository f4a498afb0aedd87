"""Keras optimizers (argument names and defaults as Keras 3) that build PyTorch optimizers.

The update runs in PyTorch's kernels (fused where the device has them). The formulas match
Keras's except where ``epsilon`` goes, which follows PyTorch: Adam adds it to ``sqrt(v_hat)``
(Keras: to ``sqrt(v)`` before the bias correction) and RMSprop adds it to ``sqrt(v)`` (Keras:
inside the square root). With the default epsilon of 1e-7 the difference is far below float32
training noise.
"""

from __future__ import annotations

import torch

from hpctrain.arguments import is_number
from hpctrain.engine.optim import build_optimizer, update_count
from hpctrain.errors import ConfigError, valid_names_hint
from hpctrain.keras.optimizers import schedules
from hpctrain.keras.optimizers.schedules import LearningRateSchedule

_UNSUPPORTED = ("clipnorm", "clipvalue", "global_clipnorm", "use_ema", "ema_momentum", "ema_overwrite_frequency",
                "loss_scale_factor", "gradient_accumulation_steps")


class Optimizer:
    """Holds hyperparameters until ``build`` makes the PyTorch optimizer on the model's device."""

    torch_class: type = None

    def __init__(self, learning_rate=0.001, name=None, **kwargs):
        if "lr" in kwargs:  # Keras 2 spelling
            learning_rate = kwargs.pop("lr")
        unsupported = sorted(set(kwargs) & set(_UNSUPPORTED))
        if unsupported:
            raise ConfigError(f"{type(self).__name__}: {', '.join(unsupported)} is not supported yet; remove it.")
        if kwargs:
            raise ConfigError(f"{type(self).__name__} got unexpected argument(s): {', '.join(sorted(kwargs))}.")
        self._schedule = learning_rate if isinstance(learning_rate, LearningRateSchedule) else None
        if self._schedule is not None:
            learning_rate = self._schedule(0)
        if not is_number(learning_rate) or learning_rate < 0:
            raise ConfigError(f"learning_rate must be a number >= 0 or a keras.optimizers.schedules."
                              f"LearningRateSchedule; got {learning_rate!r}.")
        self.name = name or type(self).__name__.lower()
        self._learning_rate = float(learning_rate)
        self._engine_optimizer = None

    def torch_hyperparameters(self) -> dict:
        raise NotImplementedError

    def build(self, params, device: torch.device):
        """The engine's optimizer over ``params``; the PyTorch object itself is built on demand.

        Built again for the same parameters (a new trainer after ``compile``, a spawned replica),
        it keeps its state, as a Keras optimizer keeps its variables.
        """
        params = list(params)
        existing = self._engine_optimizer
        if existing is not None and len(existing.params) == len(params) and all(
                a is b for a, b in zip(existing.params, params)) and existing.device == device:
            return existing
        self._engine_optimizer = build_optimizer(
            self.torch_class, params, device, lr=self._learning_rate, schedule=self._schedule,
            **self.torch_hyperparameters()
        )
        return self._engine_optimizer

    @property
    def torch_optimizer(self) -> torch.optim.Optimizer | None:
        """The ``torch.optim`` optimizer training the model (``None`` before the first ``fit``)."""
        return None if self._engine_optimizer is None else self._engine_optimizer.torch()

    @property
    def learning_rate(self) -> float:
        """The rate the next update will use; with a schedule, ``schedule(updates so far)`` as in Keras."""
        if self._schedule is not None:
            updates = 0 if self._engine_optimizer is None else self._engine_optimizer.scheduled_updates
            return float(self._schedule(updates))
        if self._engine_optimizer is not None:
            return self._engine_optimizer.param_groups[0]["lr"]
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        if self._schedule is not None:
            raise ConfigError(f"this optimizer's learning rate follows {type(self._schedule).__name__}, so it cannot "
                              "be set; build the optimizer with a number as learning_rate to set it by hand.")
        self._learning_rate = float(value)
        if self._engine_optimizer is not None:
            for group in self._engine_optimizer.param_groups:
                group["lr"] = float(value)

    lr = learning_rate

    @property
    def iterations(self) -> int:
        """Updates applied so far (a host read of the first parameter's step count)."""
        if self._engine_optimizer is None:
            return 0
        counted = update_count(self._engine_optimizer)
        return self._engine_optimizer.scheduled_updates if counted is None else counted

    def state_by_position(self) -> list[dict]:
        """The optimizer state of each weight, in ``model.parameters()`` order, as CPU tensors."""
        if self._engine_optimizer is None:
            return []
        state = self._engine_optimizer.state
        return [{key: value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value
                 for key, value in state.get(param, {}).items()} for param in self._engine_optimizer.params]

    def clock(self) -> dict:
        """What a later fit continues from besides each weight's state: the rate set by hand (by
        ReduceLROnPlateau, say) and the update count that a schedule and ``iterations`` read."""
        engine = self._engine_optimizer
        return {"lr": None if self._schedule is not None else self.learning_rate,
                "scheduled_updates": 0 if engine is None else engine.scheduled_updates}

    def load_clock(self, clock: dict) -> None:
        if clock["lr"] is not None:
            self.learning_rate = clock["lr"]
        if self._engine_optimizer is not None:
            self._engine_optimizer.scheduled_updates = clock["scheduled_updates"]

    def load_state_by_position(self, states: list[dict]) -> None:
        """The inverse of :meth:`state_by_position`, onto the parameters this optimizer was built for."""
        optimizer = self._engine_optimizer
        for param, state in zip(optimizer.params, states):
            if state:
                optimizer.state[param] = {key: value.to(param.device) if isinstance(value, torch.Tensor) else value
                                          for key, value in state.items()}

    def get_config(self) -> dict:
        rate = self.learning_rate if self._schedule is None else schedules.serialize(self._schedule)
        return {"name": self.name, "learning_rate": rate, **self.torch_hyperparameters()}


class SGD(Optimizer):
    """Keras's ``m = momentum*m - lr*g; w += m`` equals PyTorch's SGD for a constant rate."""

    torch_class = torch.optim.SGD

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, name=None, **kwargs):
        super().__init__(learning_rate, name, **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"SGD momentum must be in [0, 1]; got {momentum!r}.")
        if nesterov and not momentum:
            raise ConfigError("SGD nesterov=True needs momentum > 0.")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def torch_hyperparameters(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    torch_class = torch.optim.Adam

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
                 weight_decay=None, name=None, **kwargs):
        super().__init__(learning_rate, name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon, self.amsgrad = beta_1, beta_2, epsilon, amsgrad
        self.weight_decay = weight_decay
        if weight_decay:
            # Keras applies weight decay decoupled from the gradient, which is AdamW.
            self.torch_class = torch.optim.AdamW

    def torch_hyperparameters(self):
        extra = {"weight_decay": float(self.weight_decay)} if self.weight_decay else {}
        return {"betas": (self.beta_1, self.beta_2), "eps": self.epsilon, "amsgrad": self.amsgrad, **extra}


class AdamW(Adam):
    torch_class = torch.optim.AdamW

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, name=None, **kwargs):
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, None, name, **kwargs)
        self.weight_decay = weight_decay

    def torch_hyperparameters(self):
        return {**super().torch_hyperparameters(), "weight_decay": float(self.weight_decay)}


class RMSprop(Optimizer):
    torch_class = torch.optim.RMSprop

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, name=None,
                 **kwargs):
        super().__init__(learning_rate, name, **kwargs)
        self.rho, self.momentum, self.epsilon, self.centered = rho, momentum, epsilon, centered

    def torch_hyperparameters(self):
        return {"alpha": self.rho, "momentum": self.momentum, "eps": self.epsilon, "centered": self.centered}


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get(identifier) -> Optimizer:
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in OPTIMIZERS:
        return OPTIMIZERS[identifier.lower()]()
    if isinstance(identifier, type) and issubclass(identifier, Optimizer):
        return identifier()
    raise ConfigError(f"unknown optimizer {identifier!r}; {valid_names_hint(OPTIMIZERS)}, or an optimizer object.")
