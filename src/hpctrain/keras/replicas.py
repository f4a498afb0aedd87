"""What spawned data-parallel replicas need to know of a Keras model (see ``distribute.spawn``)."""

from __future__ import annotations

import types

import numpy as np


class KerasReplicas:
    """Picklable; each replica unpickles the Keras model (Keras saves it whole, optimizer included)."""

    def use_plan(self, model, plan) -> None:
        from hpctrain.keras.session import session_of

        model._hpctrain_strategy = None  # this process is one replica, its plan says which
        session_of(model).use_plan(plan)
        session_of(model).replica = True  # the spawning process drew what Keras's fit draws to build

    def join_stage(self, model, strategy) -> None:
        """This process trains one stage of ``strategy``'s pipeline (its compile ran unpickling, outside the scope)."""
        from hpctrain.keras.session import session_of

        model._hpctrain_strategy = strategy
        session_of(model).replica = True  # the spawning process drew what Keras's fit draws to build

    def optimizer_state(self, model) -> list[np.ndarray]:
        """Every optimizer variable (count, rate, moments), as Keras lists them."""
        return [variable.numpy() for variable in model.optimizer.variables]

    def load_optimizer_state(self, model, state: list[np.ndarray]) -> None:
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        for variable, value in zip(model.optimizer.variables, state, strict=True):
            variable.assign(value)


def gather_shards(model, trainer) -> None:
    """After a sharded fit (``sharding="fsdp"``): the whole trained weights into the model's variables
    and the optimizer's whole moments into Keras's optimizer variables, on every replica (a
    collective: every replica calls it). Nothing to do for a model trained whole."""
    from hpctrain.distribute.fsdp import keras_bridge, whole
    from hpctrain.engine.optim import LazyOptimizer
    from hpctrain.keras import optimizer_map

    bridge = keras_bridge(trainer.module)
    if bridge is None:
        return
    bridge.write_whole_weights()
    engine = trainer.optimizer
    if not isinstance(engine, LazyOptimizer):
        return  # Keras's own optimizer applied the updates to the variables' Parameters
    shards = [bridge.registered[variable.path] for variable in bridge.variables]
    whole_state = {own: {key: whole(value) for key, value in engine.state.get(shard, {}).items()}
                   for own, shard in zip(bridge.own, shards)}
    # write_back reads the state by the Parameters Keras's variables hold.
    view = types.SimpleNamespace(params=bridge.own, state=whole_state, param_groups=engine.param_groups,
                                 scheduled_updates=engine.scheduled_updates)
    optimizer_map.write_back(model.optimizer, view)
