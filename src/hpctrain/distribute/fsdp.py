"""Sharded data parallelism on PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``).

Each replica keeps only its share (``1 / world_size``, along the first dimension) of every trainable
parameter, of its gradient and of the optimizer's state; a layer's whole weights are gathered for
its forward and backward and freed again after. For a model whose weights, gradients and Adam
moments together do not fit one device.

The update is the one data parallelism makes: each replica's loss is already weighted by its share
of the global batch, so gradients are summed over the replicas (reduce-scattered), never averaged.
Parameters that take no gradient (batch norm's moving statistics kept as Parameters, as Keras
keeps them) stay whole on every replica: the forward updates them in place, which a sharded copy
would not keep; they are averaged at each epoch's end as with ``DistributedDataParallel``.

A Keras layer reads each weight from its variable (``variable.value``), not from the module's
attributes that FSDP swaps; :class:`KerasBridge` points the variables at FSDP's gathered
parameters for each forward and back after it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from hpctrain.errors import ConfigError


def shard(module: torch.nn.Module, group=None, optimizer=None) -> torch.nn.Module:
    """``module`` sharded over ``group`` (default: every process), in place; ``optimizer``'s
    parameters and state then refer to the shards. A module sharded before is returned as it is."""
    if isinstance(module, FSDPModule):
        return module
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(
            f"sharding='fsdp' needs a PyTorch optimizer to update the shards, but this model's updates are applied "
            f"by {type(optimizer).__name__} to whole weights. Use Adam, AdamW or SGD (which hpctrain runs as "
            "PyTorch's), or train without sharding.")
    frozen = {param for param in module.parameters() if not param.requires_grad}
    before = dict(module.named_parameters())
    device = next(iter(before.values())).device
    mesh = DeviceMesh.from_group(group or dist.group.WORLD, device.type)
    keras_model = getattr(module, "keras_model", None)
    # A Keras model's weights are also registered on the model itself (one ParameterDict of all of
    # them), so its layers cannot be units of their own: the model is sharded as one unit.
    units = [] if keras_model is not None else _units(module)
    for unit in [*units, module]:
        fully_shard(unit, mesh=mesh, ignored_params=frozen)
        # Summed, not averaged; and by plain sums, as gloo has no pre-multiplied sum.
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    after = dict(module.named_parameters())
    sharded = {id(param): after[name] for name, param in before.items()}
    if optimizer is not None:
        _point_optimizer_at(optimizer, sharded)
    if keras_model is not None:
        KerasBridge(module, keras_model).attach()
    return module


def plan_for_sharding(plan):
    """``plan`` with the autograd executor and no ``torch.compile``: the module FSDP shards is the
    one the autograd step runs (the static executor and a compiled forward keep whole weights)."""
    reason = "sharding='fsdp' shards the module that the autograd executor runs"
    return plan.with_choice("executor", "autograd", reason).with_choice("compile", False, reason)


def _units(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules that hold trainable parameters themselves, each innermost one before the
    modules around it: each is gathered alone, so only one layer's whole weights exist at a time."""
    found = [part for part in module.modules() if part is not module
             and any(p.requires_grad for p in part.parameters(recurse=False))]
    return list(reversed(found))


def _point_optimizer_at(optimizer, sharded: dict) -> None:
    """The optimizer's parameters become their shards; state it already holds (moments loaded
    from an earlier fit) is cut the same way."""
    for group in optimizer.param_groups:
        group["params"] = [sharded.get(id(param), param) for param in group["params"]]
        if group.get("fused") and not _fused_kernel_takes_shards(optimizer):
            group["fused"], group["foreach"] = False, True  # the same update by the foreach kernels
    state = optimizer.state
    for old in [param for param in state if id(param) in sharded]:
        new = sharded[id(old)]
        state[new] = {key: _sharded_like(value, new) for key, value in state.pop(old).items()}


def _fused_kernel_takes_shards(optimizer) -> bool:
    """Whether sharded tensors can go through the optimizer's fused kernel: DTensor has sharding
    rules for Adam's and AdamW's (``_fused_adam_``, ``_fused_adamw_``), not for SGD's."""
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))


def _sharded_like(value, param: DTensor):
    if not isinstance(value, torch.Tensor) or value.shape != param.shape:
        return value  # a step count
    # Every replica holds the same state: each keeps its own part, nothing is sent.
    return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)


def full_weights(module: torch.nn.Module) -> list[np.ndarray]:
    """Every tensor of the module's state, whole, in ``state_dict`` order (as ``Trainer.get_weights``
    lists them). A collective: every replica calls it."""
    tensors = module.state_dict(keep_vars=True).values()
    return [whole(tensor).detach().cpu().numpy().copy() for tensor in tensors]


def whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


class KerasBridge:
    """Keras's variables pointed at FSDP's gathered weights while the model runs.

    FSDP swaps the module's registered parameters (whole for the forward, shards between steps);
    Keras's layers read ``variable.value`` instead, which holds the Parameter made at build. Before
    each forward (after FSDP's own hook has gathered the weights) each trainable variable is pointed
    at the gathered Parameter, so autograd records the forward on it and FSDP reduce-scatters its
    gradient; after the forward, back at its own Parameter. Keras has no public way to point a
    variable at another tensor without copying it, hence ``_value``.
    """

    def __init__(self, module: torch.nn.Module, keras_model):
        self.module = module
        self.registered = keras_model.torch_params  # FSDP swaps the Parameters in this dict
        self.variables = list(keras_model.trainable_variables)
        self.own = [variable._value for variable in self.variables]

    def attach(self) -> None:
        self.module.register_forward_pre_hook(self._point_at_gathered)
        self.module.register_forward_hook(self._point_back, always_call=True)
        self.module._hpctrain_keras_bridge = self

    def _point_at_gathered(self, module, args) -> None:
        for variable in self.variables:
            variable._value = self.registered[variable.path]

    def _point_back(self, module, args, output) -> None:
        for variable, own in zip(self.variables, self.own):
            variable._value = own

    def write_whole_weights(self) -> None:
        """Each variable's own Parameter gets its whole current value (a collective: every
        replica calls it), so that ``get_weights``, ``save`` and ``predict`` read the trained model."""
        with torch.no_grad():
            for variable, own in zip(self.variables, self.own):
                own.copy_(whole(self.registered[variable.path]))


def keras_bridge(module: torch.nn.Module) -> KerasBridge | None:
    return getattr(module, "_hpctrain_keras_bridge", None)
