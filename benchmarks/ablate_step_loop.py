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
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from ablation import parts_table, train_variants  # noqa: E402
from common import WORKLOADS, mlp_rounds_arguments  # noqa: E402
from reporting import print_and_save  # noqa: E402


def variants(linear_layers: list[int]) -> dict[str, tuple[str | None, bool]]:
    """name -> (instructions to drop: a regular expression over their operands' names, or an
    opcode name; whether the non-finite check runs)."""
    table = {"full step": (None, True)}
    for layer in linear_layers:
        table[f"without layer {layer}'s matrix products"] = (rf"^(KB|K|KT|GWB|GW|GB){layer}(_t)?$", True)
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

    def run_variant(self, loop, x, y, sizes, metrics):
        def variant_loop(table, code, *rest):
            key = (id(code), current["drop"])
            if key not in cache:
                native = next(n for n in self._native.values() if n.code is code)
                cache[key] = without(code, native_code, native.slots, current["drop"])
            rest = list(rest)
            if not current["check"]:
                rest[13], rest[14] = False, []  # check_handed, checked: nothing to check
            return loop(table, cache[key], *rest)

        return run_many(self, variant_loop, x, y, sizes, metrics)

    static_step.StaticStep.run_many = run_variant
    return current


def adam_alone_us(model, steps: int) -> float:
    """The loop's Adam kernel on the model's own state, one call per step from Python."""
    import torch

    optimizer = model.optimizer.torch_optimizer
    group = optimizer.param_groups[0]
    params = [p for p in group["params"] if p.grad is not None]
    states = [optimizer.state[p] for p in params]
    lists = ([p.detach() for p in params], [p.grad for p in params], [s["exp_avg"] for s in states],
             [s["exp_avg_sq"] for s in states], [s["step"] for s in states])
    found = torch.zeros(())
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            torch.ops.hpctrain_native.adam_update(*lists, 0.0, 0.9, 0.999, 0.0, 1e-7, False, found)
        best = min(best, (time.perf_counter() - start) / steps * 1e6)
    return best


def main(argv=None) -> None:
    args = mlp_rounds_arguments(__doc__.splitlines()[0], argv)
    from hpctrain.engine import native, static_step
    from hpctrain.engine.native import code as native_code

    if not native.build():
        sys.exit(f"the C++ step loop is not available: {native.status()}")
    workload = WORKLOADS[args.workload]
    current = install_variants(static_step, native_code)
    table = variants([2 * index for index in range(len(workload.hidden_units) + 1)])
    measured, model = train_variants(workload, table, lambda drop, check: current.update(drop=drop, check=check),
                                     args.rounds)
    assert "step_loop: C++" in model.plan.explain(), model.plan.explain()
    steps = -(-workload.num_samples // workload.batch_size)
    command = " ".join([".venv/bin/python benchmarks/ablate_step_loop.py", *(argv or sys.argv[1:])])
    lines = parts_table(f"{args.workload} workload, hpctrain's C++ step loop on 2 threads, {args.rounds} rounds "
                        f"(command: {command})", measured)
    label = "the loop's Adam update alone, one Python call per step"
    lines.append(f"{label:56s} {adam_alone_us(model, steps):14.1f}")
    print_and_save("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
