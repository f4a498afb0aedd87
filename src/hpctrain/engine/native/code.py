"""The program the C++ step loop runs: instructions over a table of tensors bound once.

The instruction set is defined here (:data:`INSTRUCTIONS`); ``step_loop.cpp`` is compiled with it
written out as a header (:func:`cpp_header`), so the two cannot disagree.
:class:`~hpctrain.engine.static_step._ProgramWriter` emits one instruction next to each line of
the step's generated Python, so both run the same kernels in the same order.
"""

from __future__ import annotations

import dataclasses
import struct

import torch

from hpctrain.engine.dropout import LEVELS as DROPOUT_LEVELS

# The instruction set, defined here once: name -> (operands, what the instruction does). Opcodes
# number the instructions in this order; each instruction is [opcode, operands...]. A tensor
# operand is 2 * (its slot in the table) + (1 where taken transposed). step_loop.cpp is compiled
# with this table written out as a C++ header (:func:`cpp_header`).
INSTRUCTIONS = {
    "MM": ("out a b", "mm(a, b, out=out)"),
    "ADDMM_BIAS": ("out bias a b", "addmm(bias, a, b, out=out)"),
    "ADDMM_SCALED": ("out a b", "addmm(out, a, b, beta=0, alpha=scale, out=out)"),
    "ONEDNN_COPY": ("out a w bias", "out.copy_(onednn(a, w, bias)); bias -1 for none"),
    "ONEDNN_SCALED": ("out a w", "mul(onednn(a, w), scale, out=out)"),
    "ONEDNN_HAND": ("slot a w", "handed[slot] = onednn(a, w)"),
    "HAND": ("slot t", "handed[slot] = t"),
    "ACTIVATION": ("kind a", "the activation, in place"),
    "ACTIVATION_BACKWARD": ("kind grad out", "grad = the activation's backward, in place"),
    "LOSS_GRADIENT": ("kind z y out minus_ones", "out = c * dloss/dz; scale = 1/c"),
    "SCALE_GRADIENT": ("g", "g *= scale; scale = 1"),
    "ADDMV_SCALED": ("out a v", "addmv(out, a, v, beta=0, alpha=scale, out=out)"),
    "DROPOUT": ("out mask a torch_mask rate", "out, mask = dropout(a), new tensors"),
    "DROPOUT_BACKWARD": ("out grad mask torch_mask scale", "out = dropout backward of grad"),
    "ADD": ("out a b", "add(a, b, out=out)"),
    "ADD_TO": ("a b", "a += b"),
    "COPY": ("out a", "out.copy_(a)"),
}
OPCODES = {name: opcode for opcode, name in enumerate(INSTRUCTIONS)}
OPERANDS = tuple(len(operands.split()) for operands, _ in INSTRUCTIONS.values())
ACTIVATION_KINDS = {"relu": 0, "tanh": 1, "sigmoid": 2}
LOSS_KINDS = {"CROSS_ENTROPY": 0, "BINARY_CROSS_ENTROPY": 1, "SQUARED_ERROR": 2, "ABSOLUTE_ERROR": 3}
# The first table slots are rebound for every batch: the batch, its targets, where the logits go.
PER_BATCH = ("x", "y", "z")

# The names static_step emits: MM, ADDMM_BIAS, ..., CROSS_ENTROPY, ...
globals().update(OPCODES)
globals().update(LOSS_KINDS)


def cpp_header() -> str:
    """The tables above as C++ (``step_loop_opcodes.h``, written next to the build)."""

    def constant(name: str) -> str:  # ADDMM_BIAS -> kAddmmBias, as step_loop.cpp names them
        return "k" + "".join(word.capitalize() for word in name.split("_"))

    def enum(name: str, values: dict[str, int]) -> str:
        members = ", ".join(f"{constant(key)} = {value}" for key, value in values.items())
        return f"enum {name} : int64_t {{ {members} }};"

    lines = ["// Written by hpctrain/engine/native/code.py from its tables; edit those, not this file.",
             "#pragma once", "#include <cstdint>", ""]
    lines += [f"// {opcode:2d} {name}: {operands} -- {effect}"
              for opcode, (name, (operands, effect)) in enumerate(INSTRUCTIONS.items())]
    slots = ", ".join(f"k{name.upper()} = {slot}" for slot, name in enumerate(PER_BATCH))
    lines += [enum("Op", OPCODES), f"constexpr int64_t kOperands[] = {{{', '.join(map(str, OPERANDS))}}};",
              enum("Activation", {name.upper(): kind for name, kind in ACTIVATION_KINDS.items()}),
              enum("Loss", LOSS_KINDS), f"constexpr int64_t {slots};",
              f"constexpr int64_t kDropoutLevels = {DROPOUT_LEVELS};  // engine/dropout.py's LEVELS", ""]
    return "\n".join(lines)


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
