"""What spawned data-parallel replicas need to know of a Keras model (see ``distribute.spawn``)."""

from __future__ import annotations

import numpy as np


class KerasReplicas:
    """Picklable; each replica unpickles the Keras model (Keras saves it whole, optimizer included)."""

    def use_plan(self, model, plan) -> None:
        from hpctrain.keras.session import session_of

        model._hpctrain_strategy = None  # this process is one replica, its plan says which
        session_of(model).use_plan(plan)
        session_of(model).replica = True  # the spawning process drew what Keras's fit draws to build

    def optimizer_state(self, model) -> list[np.ndarray]:
        """Every optimizer variable (count, rate, moments), as Keras lists them."""
        return [variable.numpy() for variable in model.optimizer.variables]

    def load_optimizer_state(self, model, state: list[np.ndarray]) -> None:
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        for variable, value in zip(model.optimizer.variables, state, strict=True):
            variable.assign(value)
