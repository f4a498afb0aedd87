"""The program the C++ step loop runs: instructions over a table of tensors bound once.

Mirrors the opcodes of ``step_loop.cpp``. :class:`~hpctrain.engine.static_step._ProgramWriter`
emits one instruction next to each line of the step's generated Python, so both run the same
kernels in the same order.
"""

from __future__ import annotations

import dataclasses
import struct

import torch

(MM, ADDMM_BIAS, ADDMM_SCALED, ONEDNN_COPY, ONEDNN_SCALED, ONEDNN_HAND, HAND, ACTIVATION, ACTIVATION_BACKWARD,
 LOSS_GRADIENT, SCALE_GRADIENT, ADDMV_SCALED, DROPOUT, DROPOUT_BACKWARD) = range(14)
OPERANDS = (3, 4, 3, 4, 3, 3, 2, 2, 3, 5, 1, 3, 5, 5)
ACTIVATION_KINDS = {"relu": 0, "tanh": 1, "sigmoid": 2}
CROSS_ENTROPY, BINARY_CROSS_ENTROPY, SQUARED_ERROR, ABSOLUTE_ERROR = range(4)
# The first table slots are rebound for every batch: the batch, its targets, where the logits go.
PER_BATCH = ("x", "y", "z")


@dataclasses.dataclass(frozen=True)
class Number:
    """An operand that is a number (a kind, a slot), not a tensor's name."""

    value: int


@dataclasses.dataclass(frozen=True)
class Real:
    """An operand that is a float (a dropout rate), passed as the bits of a double."""

    value: float

    @property
    def bits(self) -> int:
        return struct.unpack("<q", struct.pack("<d", self.value))[0]


class NativeCode:
    """Collects instructions; ``code`` and ``table`` are what ``run_steps`` takes, ``None`` code
    where some part of the step has no instruction (``reason`` says which)."""

    def __init__(self, default_logits: torch.Tensor):
        self.table = [torch.empty(0), torch.empty(0), default_logits]
        self.slots = {name: index for index, name in enumerate(PER_BATCH)}
        self.code: list[int] | None = []
        self.reason = None

    def bind(self, name: str, tensor: torch.Tensor) -> None:
        if name not in self.slots:
            self.slots[name] = len(self.table)
            self.table.append(tensor)

    def per_step(self, *names: str) -> None:
        """Slots for tensors an instruction makes anew each step (a dropout's output and mask)."""
        for name in names:
            self.bind(name, torch.empty(0))

    def unsupported(self, reason: str) -> None:
        self.code, self.reason = None, reason

    def emit(self, opcode: int, *operands) -> None:
        if self.code is None:
            return
        assert len(operands) == OPERANDS[opcode], (opcode, operands)
        encoded = [self._operand(operand) for operand in operands]
        if None in encoded:
            self.unsupported(f"an operand of {operands} is made per step in Python")
            return
        self.code += [opcode, *encoded]

    def _operand(self, operand) -> int | None:
        """A tensor is ``2 * slot``, plus one where it is taken transposed (``name.t()``)."""
        if operand is None:
            return -1
        if isinstance(operand, Number):
            return operand.value
        if isinstance(operand, Real):
            return operand.bits
        if isinstance(operand, int):
            return operand
        transposed = operand.endswith(".t()")
        slot = self.slots.get(operand[:-4] if transposed else operand)
        return None if slot is None else 2 * slot + transposed
