"""Where the C++ step loop's time goes, by leaving parts of its program out of real training.

The workload (seed: MLP 784-32-10, batch 32; mlp1024: 784-1024-1024-10, batch 256; Adam) trains
through hpctrain's Keras front end on the C++ step loop (``hpctrain.engine.native``) while the
loop is given its program with some instructions removed, or no non-finite check, one variant
at a time; each variant one fit of 2 epochs (the faster one kept) per round, variants taking
turns for ``--rounds`` rounds. A part's cost is the median over rounds of (full - variant) in the
same round, so a change of the machine's phase between rounds cancels out. Leaving a part out
changes what later parts compute on, not how long they take. The Adam update cannot be left out
of the loop; it is timed alone, on the same tensors, as one call of the loop's kernel per step
from Python (its Python call overhead, ~4 us, is included there and not in the loop).

    .venv/bin/python benchmarks/ablate_step_loop.py --workload seed [--rounds 8] [--output FILE]
    .venv/bin/python benchmarks/ablate_step_loop.py --workload mlp1024 --threads 1 --clock cpu --samples 10240

On a machine others are using, ``--threads 1 --clock cpu`` times each fit by the process's CPU time,
which on one thread counts its own work only.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from ablation import parts_table, train_variants  # noqa: E402
from common import WORKLOADS  # noqa: E402
from reporting import print_and_save  # noqa: E402


def variants(linear_layers: list[int]) -> dict[str, tuple[str | None, bool]]:
    """name -> (instructions to drop: a regular expression over their operands' names, or an
    opcode name; whether the non-finite check runs)."""
    table = {"full step": (None, True)}
    for layer in linear_layers:
        table[f"without layer {layer}'s matrix products"] = (rf"^(KB|K|KT|GWB|GW|GB){layer}(_t)?$", True)
    table["without every matrix product"] = (r"^(KB|K|KT|GWB|GW|GB)\d+(_t)?$", True)
    table["without activations and their backward"] = ("ACTIVATION", True)
    table["without the output gradient (softmax, scatter)"] = ("LOSS_GRADIENT", True)
    table["without the non-finite check"] = (None, False)
    table["without the program (gather, Adam, check, loop only)"] = (".", True)
    return table


def instructions(code, operand_counts):
    position = 0
    while position < len(code):
        opcode = code[position]
        count = operand_counts[opcode]
        yield opcode, code[position + 1:position + 1 + count]
        position += 1 + count


def without(code, native_code, slots: dict, drop: str | None) -> list[int]:
    """``code`` less the instructions ``drop`` names (an opcode, or a pattern over tensor names)."""
    if drop is None:
        return list(code)
    names = {2 * index: name for name, index in slots.items()}
    opcodes = {getattr(native_code, name) for name in ("ACTIVATION", "ACTIVATION_BACKWARD")} if drop == "ACTIVATION" \
        else {getattr(native_code, drop)} if drop.isupper() else None
    kept = []
    for opcode, operands in instructions(code, native_code.OPERANDS):
        tensors = [names.get(operand & ~1, "") for operand in operands]
        dropped = opcode in opcodes if opcodes is not None else any(re.search(drop, name) for name in tensors)
        if not dropped:
            kept += [opcode, *operands]
    return kept


def install_variants(static_step, native_code):
    """Wraps ``StaticStep.run_many`` so that the loop runs the current variant's program."""
    current = {"drop": None, "check": True}
    run_many = static_step.StaticStep.run_many
    cache = {}

    class VariantLoop:
        """The step loop (``engine.native.StepLoop``) given the variant's program and check."""

        def __init__(self, loop):
            self.loop = loop

        def state(self, *args, **kwargs):
            return self.loop.state(*args, **kwargs)

        def __call__(self, program, x, y, logits, sizes, state):
            key = (id(program.code), current["drop"])
            if key not in cache:
                cache[key] = without(program.code, native_code, program.slots, current["drop"])
            tensors, lengths, numbers = state.tensors, list(state.lengths), list(state.numbers)
            if not current["check"]:  # no gradients checked: neither the handed ones nor the group
                checked_from = sum(lengths[:6])
                tensors = tensors[:checked_from] + tensors[checked_from + lengths[6]:]
                lengths[6], numbers[6] = 0, 0.0
            if current["drop"] is not None:  # logits no product writes stay zeros, not what the buffer held
                for z in (logits, program.table[2]):
                    if z is not None:
                        z.zero_()
            return self.loop._op(program.table, cache[key], x, y, logits, sizes, tensors, lengths, numbers)

    def run_variant(self, loop, x, y, sizes, metrics):
        return run_many(self, VariantLoop(loop), x, y, sizes, metrics)

    static_step.StaticStep.run_many = run_variant
    return current


def adam_alone_us(model, steps: int, clock=time.perf_counter) -> float:
    """The loop's Adam kernel on the model's own state, one call per step from Python."""
    import torch

    optimizer = model._hpctrain_session.trainer.optimizer  # the engine's (a LazyOptimizer: its state, params)
    params = [p for p in optimizer.params if p.grad is not None]
    states = [optimizer.state[p] for p in params]
    lists = ([p.detach() for p in params], [p.grad for p in params], [s["exp_avg"] for s in states],
             [s["exp_avg_sq"] for s in states], [s["step"] for s in states])
    found = torch.zeros(())
    best = float("inf")
    for _ in range(3):
        start = clock()
        for _ in range(steps):
            torch.ops.hpctrain_native.adam_update(*lists, 0.0, 0.9, 0.999, 0.0, 1e-7, False, found)
        best = min(best, (clock() - start) / steps * 1e6)
    return best


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("seed", "mlp1024"), default="seed")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--samples", type=int, default=None, help="samples per epoch (the workload's own by default)")
    parser.add_argument("--output", type=Path, help="also write the table here")
    return parser.parse_args(argv)


def gemm_limit_us(workload, backend: str, clock, epochs: int = 3) -> float:
    """impl_gemm_limit.py's epoch (the step's products alone, as the limit runs them), its best
    of ``epochs``, per step."""
    from impl_gemm_limit import (
        allocate_operands,
        epoch_schedule,
        fastest_products,
        run_epoch,
        run_epoch_of_calls,
    )

    schedule = epoch_schedule(workload, allocate_operands(workload))
    calls = fastest_products(schedule) if backend == "fastest" else None
    best = float("inf")
    for _ in range(epochs + 1):
        start = clock()
        run_epoch(schedule) if calls is None else run_epoch_of_calls(calls)
        best = min(best, (clock() - start) / len(schedule) * 1e6)
    return best


def main(argv=None) -> None:
    args = parse_args(argv)
    from hpctrain.engine import native, static_step
    from hpctrain.engine.native import code as native_code

    if not native.build():
        sys.exit(f"the C++ step loop is not available: {native.status()}")
    workload = WORKLOADS[args.workload]
    if args.samples:
        workload = dataclasses.replace(workload, num_samples=args.samples)
    current = install_variants(static_step, native_code)
    table = variants([2 * index for index in range(len(workload.hidden_units) + 1)])
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    measured, model = train_variants(workload, table, lambda drop, check: current.update(drop=drop, check=check),
                                     args.rounds, threads=args.threads, clock=clock)
    assert "step_loop: C++" in model.plan.explain(), model.plan.explain()
    steps = -(-workload.num_samples // workload.batch_size)
    command = " ".join([".venv/bin/python benchmarks/ablate_step_loop.py", *(argv or sys.argv[1:])])
    lines = parts_table(f"{args.workload} workload, hpctrain's C++ step loop on {args.threads} threads, {args.rounds} rounds, "
                        f"{clock.__name__} "
                        f"(command: {command})", measured)
    print("\n".join(lines), flush=True)  # the variants' table, before the parts timed alone
    label = "the loop's Adam update alone, one Python call per step"
    lines.append(f"{label:56s} {adam_alone_us(model, steps, clock):14.1f}")
    for backend in ("mkl", "fastest"):
        label = f"the GEMM limit's products alone ({backend})"
        lines.append(f"{label:56s} {gemm_limit_us(workload, backend, clock):14.1f}")
    print_and_save("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
