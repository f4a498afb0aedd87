"""GEMM-only limit: just the matrix multiplies of the training steps, back to back.

For the convnet workload, its convolutions and matrix products (``conv_limit.py``); the rest of
this text is about the dense models.

A lower bound for any implementation that computes the same dense layers with
PyTorch's matrix multiplies on the same threads: per step and Linear layer i, with input a
(B x in), weight W (in x out) and output gradient g (B x out),

    forward   a @ W                        (every layer)
    backward  a.T @ g    -> dW             (every layer)
              g @ W.T    -> input gradient (every layer but the first)

and nothing else: no bias, activation, loss, optimizer, shuffling or batch
gather. All operands are allocated once and every product is written with
torch.mm(..., out=...), so the timed loop allocates nothing. The buffers are
chained as in a real step (a layer's output is the next layer's input, its
input gradient the previous layer's output gradient), so the same memory is
touched as in training.

``--backend fastest`` (the default, ``gemm_limit``): each product runs on whichever of PyTorch's
two CPU matrix multiplies was faster for it when timed before the epochs, MKL's ``torch.mm`` or
oneDNN's (``torch.ops.mkldnn._linear_pointwise``, which returns a new tensor: its allocation
counts, no copy does). ``--backend mkl`` (``gemm_limit_mkl``): ``torch.mm`` only.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import EpochClock, Workload, child_arg_parser, emit_result, selected_workload  # noqa: E402
from conv_limit import convnet_schedule  # noqa: E402
from torch_common import configure_torch, fastest_call, torch_details  # noqa: E402

# (left operand, right operand, output buffer) of one torch.mm call.
Gemm = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def allocate_operands(workload: Workload) -> tuple[list, list, list, list]:
    """Returns (activations, activation gradients, weights, weight gradients) for full batches.

    activations[i] is layer i's input (activations[-1] the logits);
    activation_grads[i] is the gradient with respect to activations[i].
    Random values, so no BLAS shortcut for zeros applies.
    """
    sizes, batch = workload.layer_sizes, workload.batch_size
    activations = [torch.rand(batch, width) for width in sizes]
    activation_grads = [torch.rand(batch, width) for width in sizes]
    # Scaled like a default initialisation, so the chained products stay moderate.
    weights = [torch.rand(fan_in, fan_out) / fan_in for fan_in, fan_out in zip(sizes[:-1], sizes[1:])]
    weight_grads = [torch.empty_like(weight) for weight in weights]
    return activations, activation_grads, weights, weight_grads


def step_gemms(operands, rows: int) -> list[Gemm]:
    """The GEMMs of one step on a batch of `rows` samples, in execution order.

    Row slices of the full-batch buffers are contiguous views, so a partial last
    batch needs no buffers of its own. Transposes are views too: BLAS reads them
    in place.
    """
    activations, activation_grads, weights, weight_grads = operands
    inputs = [activation[:rows] for activation in activations]
    grads = [grad[:rows] for grad in activation_grads]
    forward = [(inputs[i], weights[i], inputs[i + 1]) for i in range(len(weights))]
    backward = []
    for i in reversed(range(len(weights))):
        backward.append((inputs[i].T, grads[i + 1], weight_grads[i]))
        if i > 0:  # the network input needs no gradient
            backward.append((grads[i + 1], weights[i].T, grads[i]))
    return forward + backward


def epoch_schedule(workload: Workload, operands) -> list[list[Gemm]]:
    """One GEMM list per step of an epoch; the last batch may be partial, as in training."""
    full_batches, remainder = divmod(workload.num_samples, workload.batch_size)
    full_step = step_gemms(operands, workload.batch_size)
    schedule = [full_step] * full_batches
    if remainder:
        schedule.append(step_gemms(operands, remainder))
    return schedule


def run_epoch(schedule: list[list[Gemm]]) -> None:
    mm = torch.mm  # looked up once: the loop should cost nothing but the calls
    for gemms in schedule:
        for left, right, out in gemms:
            mm(left, right, out=out)


def fastest_products(schedule: list[list[Gemm]]) -> list[list]:
    """Each step's products as no-argument calls, each on the faster of MKL and oneDNN for it."""
    onednn = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
    chosen = {}

    def choose(left, right, out):
        mkl = lambda: torch.mm(left, right, out=out)  # noqa: E731
        if onednn is None:
            return mkl
        weight = right.t()
        dnn = lambda: onednn(left, weight, None, "none", [], "")  # noqa: E731
        key = (left.shape, left.stride(), right.shape, right.stride())
        if key not in chosen:
            chosen[key] = fastest_call(mkl, dnn)
        return mkl if chosen[key] == 0 else dnn

    steps = {}
    return [steps.setdefault(id(gemms), [choose(*gemm) for gemm in gemms]) for gemms in schedule]


def run_epoch_of_calls(schedule: list[list]) -> None:
    for calls in schedule:
        for call in calls:
            call()


def gemm_flops(schedule: list[list[Gemm]]) -> int:
    """Floating-point operations of an epoch: 2 * m * k * n per GEMM."""
    return sum(2 * left.shape[0] * left.shape[1] * right.shape[1] for gemms in schedule for left, right, _ in gemms)


def main() -> None:
    parser = child_arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("fastest", "mkl"), default="fastest")
    parser.add_argument("--name", default="gemm_limit")
    args = parser.parse_args()
    workload = selected_workload(args)
    threads = configure_torch()
    if workload.model == "convnet":
        return run_kernel_calls(args, workload, convnet_schedule(workload), threads)
    schedule = epoch_schedule(workload, allocate_operands(workload))
    calls = fastest_products(schedule) if args.backend == "fastest" else None

    clock = EpochClock()
    for _ in range(args.epochs):
        clock.begin_epoch()
        if calls is None:
            run_epoch(schedule)
        else:
            run_epoch_of_calls(calls)
        clock.end_epoch()

    # No loss or accuracy: nothing is trained.
    emit_result(
        args.name,
        workload,
        clock,
        None,
        None,
        gemms_per_step=len(schedule[0]),
        gemm_flops_per_epoch=gemm_flops(schedule),
        **torch_details(threads),
    )


def run_kernel_calls(args, workload: Workload, schedule: list[list], threads: int) -> None:
    clock = EpochClock()
    for _ in range(args.epochs):
        clock.begin_epoch()
        run_epoch_of_calls(schedule)
        clock.end_epoch()
    emit_result(args.name, workload, clock, None, None, kernel_calls_per_step=len(schedule[0]),
                **torch_details(threads))


if __name__ == "__main__":
    main()
