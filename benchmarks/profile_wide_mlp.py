"""The wide MLP's step, part by part: each of the C++ step loop's calls timed alone on tensors shaped
as in training, beside the GEMM limit's products.

The mlp1024 step as hpctrain's Keras front end runs it on an Intel CPU (every product on MKL, the
bias folded into each product by a column of ones: ``StaticStep.source(256)``), one call at a time
in turn for ``--rounds`` rounds, each part's best per round, the median over rounds reported.
Parts timed alone miss what they do to each other's caches; ``bench_wide_mlp.py`` times whole
epochs. ``--clock cpu`` (the process's CPU time) on one thread counts this process's work only,
however many others share the cores.

    .venv/bin/python benchmarks/profile_wide_mlp.py [--threads 1 --clock cpu] [--rounds 8] [--backends] [--output FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from reporting import print_and_save  # noqa: E402

B, IN, HIDDEN, OUT, SAMPLES = 256, 784, 1024, 10, 10_240
SCALE = 1.0 / B


def step_tensors() -> dict:
    """The step's buffers (names as in the generated program), random where they are read."""
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    t = {"data": rand(SAMPLES, IN + 1), "labels": rand(SAMPLES, OUT), "index": torch.randperm(SAMPLES, generator=g)}
    t["data"][:, IN] = 1.0
    t["x"], t["y"] = t["data"][:B].clone(), t["labels"][:B].clone()
    t["KB0"], t["KB2"], t["KB4"] = rand(IN + 1, HIDDEN) / IN, rand(HIDDEN + 1, HIDDEN) / HIDDEN, rand(HIDDEN + 1, OUT)
    t["OB0"], t["OB2"] = torch.ones(B, HIDDEN + 1), torch.ones(B, HIDDEN + 1)
    t["OB0"][:, :HIDDEN], t["OB2"][:, :HIDDEN] = rand(B, HIDDEN) - 0.5, rand(B, HIDDEN) - 0.5
    t["O0"], t["O2"] = t["OB0"][:, :HIDDEN], t["OB2"][:, :HIDDEN]
    # Finite, normal values everywhere: NaN or subnormal operands slow MKL's kernels severalfold.
    t["z"], t["G_out"], t["G2"], t["G0"] = rand(B, OUT), rand(B, OUT) - 0.1, rand(B, HIDDEN), rand(B, HIDDEN)
    t["GWB0"], t["GWB2"], t["GWB4"] = (torch.empty_like(t[k]) for k in ("KB0", "KB2", "KB4"))
    return t


def program_parts(t: dict) -> dict[str, list]:
    """Part -> its calls, as the program makes them (engine/static_program.py's _ProgramWriter)."""
    relu_backward = torch.ops.aten.threshold_backward.grad_input
    return {
        "products": [
            lambda: torch.mm(t["x"], t["KB0"], out=t["O0"]),
            lambda: torch.mm(t["OB0"], t["KB2"], out=t["O2"]),
            lambda: torch.mm(t["OB2"], t["KB4"], out=t["z"]),
            lambda: torch.addmm(t["GWB4"], t["OB2"].t(), t["G_out"], beta=0, alpha=SCALE, out=t["GWB4"]),
            lambda: torch.mm(t["G_out"], t["KB4"][:HIDDEN].t(), out=t["G2"]),
            lambda: torch.addmm(t["GWB2"], t["OB0"].t(), t["G2"], beta=0, alpha=SCALE, out=t["GWB2"]),
            lambda: torch.mm(t["G2"], t["KB2"][:HIDDEN].t(), out=t["G0"]),
            lambda: torch.addmm(t["GWB0"].t(), t["G0"].t(), t["x"], beta=0, alpha=SCALE, out=t["GWB0"].t()),
        ],
        "activations (relu_ x2)": [lambda: t["O0"].relu_(), lambda: t["O2"].relu_()],
        "activation backward (threshold_backward x2)": [
            lambda: relu_backward(t["G2"], t["O2"], 0.0, grad_input=t["G2"]),
            lambda: relu_backward(t["G0"], t["O0"], 0.0, grad_input=t["G0"])],
        "loss gradient (softmax, minus one-hot)": [lambda: torch.softmax(t["z"], 1, out=t["G_out"]).sub_(t["y"])],
        "batch gather (index_select of 256 rows, x and y)": [
            lambda: torch.index_select(t["data"], 0, t["index"][:B], out=t["x"]),
            lambda: torch.index_select(t["labels"], 0, t["index"][:B], out=t["y"])],
    }


def limit_products(t: dict) -> list:
    """impl_gemm_limit.py's products of one step (MKL), no bias column."""
    a = [torch.rand(B, w) for w in (IN, HIDDEN, HIDDEN, OUT)]
    g = [torch.rand(B, w) for w in (IN, HIDDEN, HIDDEN, OUT)]
    w = [t["KB0"][:IN], t["KB2"][:HIDDEN], t["KB4"][:HIDDEN]]
    gw = [torch.empty_like(k) for k in w]
    calls = [lambda i=i: torch.mm(a[i], w[i], out=a[i + 1]) for i in range(3)]
    for i in (2, 1, 0):
        calls.append(lambda i=i: torch.mm(a[i].t(), g[i + 1], out=gw[i]))
        if i:
            calls.append(lambda i=i: torch.mm(g[i + 1], w[i].t(), out=g[i]))
    return calls


def backend_parts(t: dict) -> dict[str, list]:
    """The step's four large products each on MKL, as the step calls them now on an Intel CPU, and
    on oneDNN, as it called them before (``hardware/gemm.py``): a new tensor, copied into place,
    or for a weight gradient handed to the update as it is."""
    onednn = torch.ops.mkldnn._linear_pointwise
    linear = lambda a, weight: onednn(a, weight, None, "none", [], "")  # noqa: E731  a @ weight.T
    products = {
        "forward 256 x 785 x 1024": (lambda: torch.mm(t["x"], t["KB0"], out=t["O0"]),
                                     lambda: t["O0"].copy_(linear(t["x"], t["KB0"].t()))),
        "forward 256 x 1025 x 1024": (lambda: torch.mm(t["OB0"], t["KB2"], out=t["O2"]),
                                      lambda: t["O2"].copy_(linear(t["OB0"], t["KB2"].t()))),
        "weight gradient 1025 x 256 x 1024": (
            lambda: torch.addmm(t["GWB2"], t["OB0"].t(), t["G2"], beta=0, alpha=SCALE, out=t["GWB2"]),
            lambda: linear(t["OB0"].t(), t["G2"].t())),
        "input gradient 256 x 1024 x 1024": (lambda: torch.mm(t["G2"], t["KB2"][:HIDDEN].t(), out=t["G0"]),
                                             lambda: t["G0"].copy_(linear(t["G2"], t["KB2"][:HIDDEN]))),
    }
    parts = {}
    for name, (mkl, dnn) in products.items():
        parts[f"{name}, MKL"], parts[f"{name}, oneDNN"] = [mkl], [dnn]
    return parts


def update_parts(t: dict) -> dict[str, list]:
    """The non-finite check and the Adam update on the step's 1.87 M parameters (the loop's kernels)."""
    params = [t["KB0"], t["KB2"], t["KB4"]]
    grads = [t["GWB0"], t["GWB2"], t["GWB4"]]
    for grad in grads:
        grad.copy_(torch.randn_like(grad) * 1e-3)
    moments = [torch.randn_like(p).abs() * 1e-3 for p in params], [torch.randn_like(p).abs() * 1e-6 for p in params]
    steps, found = [torch.tensor(100.0) for _ in params], torch.zeros(())
    native = torch.ops.hpctrain_native
    return {"non-finite check of the gradients": [lambda: native.any_non_finite(grads)],
            "Adam update (the loop's kernel)": [
                lambda: native.adam_update(params, grads, *moments, steps, 1e-3, 0.9, 0.999, 0.0, 1e-7, False, found,
                                           True)]}


def time_parts(parts: dict[str, list], rounds: int, clock, repeats: int = 5) -> dict[str, tuple[float, float]]:
    """Per part, the median and the least over rounds of its best time for all its calls, microseconds."""
    best = {name: [] for name in parts}
    for _ in range(rounds):
        for name, calls in parts.items():
            for call in calls:
                call()
            times = []
            for _ in range(repeats):
                start = clock()
                for call in calls:
                    call()
                times.append(clock() - start)
            best[name].append(min(times) * 1e6)
    return {name: (statistics.median(values), min(values)) for name, values in best.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--backends", action="store_true",
                        help="also the four large products each on MKL and on oneDNN")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    from hpctrain.engine import native

    if not native.build():
        sys.exit(f"the C++ step loop is not available: {native.status()}")
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    t = step_tensors()
    parts = {**program_parts(t), **update_parts(t), "the GEMM limit's products (MKL)": limit_products(t)}
    if args.backends:
        parts.update(backend_parts(t))
    measured = time_parts(parts, args.rounds, clock)
    command = " ".join([".venv/bin/python benchmarks/profile_wide_mlp.py", *(argv or sys.argv[1:])])
    lines = [f"mlp1024 step, parts timed alone, {args.threads} threads, {clock.__name__}, median over {args.rounds} "
             f"rounds of each part's best, and the least (command: {command})",
             f"{'part':52s} {'us/step':>9s} {'least':>9s}"]
    lines += [f"{name:52s} {median:9.0f} {least:9.0f}" for name, (median, least) in measured.items()]
    in_step = [value for name, value in measured.items() if name in program_parts(t) or name in update_parts(t)]
    lines.append(f"{'sum of the step parts':52s} {sum(m for m, _ in in_step):9.0f} {sum(l for _, l in in_step):9.0f}")
    print_and_save("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
