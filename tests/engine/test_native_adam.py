"""The C++ step loop's Adam kernel: torch's fused Adam, bit for bit, with subnormal moments flushed."""

import itertools

import pytest
import torch

pytestmark = pytest.mark.native_loop  # skipped, with the reason, where it cannot be built
own_kernel = pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512",
                                reason="the C++ kernel runs where ATen runs its AVX-512 build; elsewhere ATen's runs")


@pytest.fixture
def adam_update(native_loop):
    return torch.ops.hpctrain_native.adam_update


def _state(sizes, seed):
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=generator) for n in sizes]
    return [params, [torch.zeros(n) for n in sizes], [torch.zeros(n) for n in sizes]]


def _train_both(adam_update, sizes, *, beta1=0.9, weight_decay=0.0, decoupled=False, steps=30, threads=2):
    """(ATen's state, the C++ kernel's state) after ``steps`` updates with the same gradients, whose
    scale sweeps 1e-3..1e3 so that the moments cover a wide range."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours, reference = _state(sizes, 0), _state(sizes, 0)
        # A counter per tensor, starting apart, as after a parameter was added mid-training.
        our_steps = [torch.tensor(float(i)) for i in range(len(sizes))]
        reference_steps = [t.clone() for t in our_steps]
        generator = torch.Generator().manual_seed(1)
        kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
        found = torch.zeros(())
        for step in range(steps):
            grads = [torch.randn(n, generator=generator) * 10.0 ** (step % 7 - 3) for n in sizes]
            for counter in our_steps + reference_steps:
                counter.add_(1)
            kernel(*reference[:1], grads, *reference[1:], [], reference_steps, lr=1e-3, beta1=beta1, beta2=0.999,
                   weight_decay=weight_decay, eps=1e-7, amsgrad=False, maximize=False, found_inf=found)
            adam_update(ours[0], grads, ours[1], ours[2], our_steps, 1e-3, beta1, 0.999, weight_decay, 1e-7,
                        decoupled, found)
        return reference, ours
    finally:
        torch.set_num_threads(previous)


def _assert_bitwise_equal(reference, ours):
    for name, expected, got in zip(("params", "exp_avgs", "exp_avg_sqs"), reference, ours):
        for a, b in zip(expected, got):
            assert torch.equal(a, b), f"{name}: {(a != b).sum().item()} of {a.numel()} values differ"


# Lengths: whole 16-float blocks only, remainders under 8, of exactly 8 and over 8 (ATen's last
# floats go 8 at a time, then one at a time), and tensors long enough to be split over threads.
SIZES = [(16, 7, 8, 15, 23, 1), (25450,), (70001, 9)]
HYPERPARAMETERS = {
    "adam": dict(),
    "weight_decay": dict(weight_decay=0.01),
    "adamw": dict(weight_decay=0.05, decoupled=True),
    "large_lerp_weight": dict(beta1=0.3),  # ATen lerps from the gradient when 1 - beta1 >= 0.5
    "half_lerp_weight": dict(beta1=0.5),
}


@pytest.mark.parametrize("sizes,threads", [(s, t) for s, t in itertools.product(SIZES, (1, 2))])
@pytest.mark.parametrize("case", sorted(HYPERPARAMETERS))
def test_the_loop_kernel_updates_exactly_as_torch_fused_adam(adam_update, sizes, threads, case):
    _assert_bitwise_equal(*_train_both(adam_update, sizes, threads=threads, **HYPERPARAMETERS[case]))


def test_a_found_non_finite_gradient_skips_the_update(adam_update):
    params, exp_avgs, exp_avg_sqs = _state([40], 0)
    before = [t.clone() for t in (params[0], exp_avgs[0], exp_avg_sqs[0])]
    adam_update(params, [torch.full((40,), float("nan"))], exp_avgs, exp_avg_sqs, [torch.tensor(1.0)], 1e-3, 0.9,
                0.999, 0.0, 1e-7, False, torch.ones(()))
    assert all(torch.equal(a, b) for a, b in zip(before, (params[0], exp_avgs[0], exp_avg_sqs[0])))


def test_tensors_the_kernel_does_not_take_go_to_torch(adam_update):
    """float64 and non-contiguous tensors: ATen's kernel runs, so the result is still torch's exactly."""
    for param in (torch.randn(37, dtype=torch.float64), torch.randn(8, 6).t()):
        grad = torch.randn_like(param)
        reference, ours = [[param.clone(), torch.zeros_like(param), torch.zeros_like(param)] for _ in range(2)]
        assert not ours[0].is_contiguous() or ours[0].dtype == torch.float64
        torch._fused_adam_([reference[0]], [grad], [reference[1]], [reference[2]], [], [torch.tensor(1.0)], lr=1e-3,
                           beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-7, amsgrad=False, maximize=False)
        adam_update([ours[0]], [grad], [ours[1]], [ours[2]], [torch.tensor(1.0)], 1e-3, 0.9, 0.999, 0.0, 1e-7, False,
                    torch.zeros(()))
        assert not torch.equal(ours[0], param)
        assert all(torch.equal(a, b) for a, b in zip(reference, ours))


@own_kernel
def test_subnormal_moments_are_flushed_and_move_no_weight(adam_update):
    """A gradient that stays zero leaves ATen's first moment stuck at the smallest subnormals
    (0.9 x 4 units rounds back to 4 units); the kernel flushes it to zero, the weights unchanged."""
    tiny = torch.finfo(torch.float32).tiny
    subnormal = torch.full((48,), tiny / 2**21)  # 4 units of the smallest subnormal
    reference = [[torch.randn(48)], [subnormal.clone()], [torch.full((48,), 1e-9)]]
    ours = [[t[0].clone()] for t in reference]
    zero = [torch.zeros(48)]
    for step in range(1, 4):
        torch._fused_adam_(reference[0], zero, reference[1], reference[2], [], [torch.tensor(float(step))], lr=1e-3,
                           beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-7, amsgrad=False, maximize=False)
        adam_update(ours[0], zero, ours[1], ours[2], [torch.tensor(float(step))], 1e-3, 0.9, 0.999, 0.0, 1e-7, False,
                    torch.zeros(()))
    assert torch.equal(reference[1][0], subnormal)  # ATen's: stuck
    assert torch.equal(ours[1][0], torch.zeros(48))  # flushed
    assert torch.equal(reference[0][0], ours[0][0]) and torch.equal(reference[2][0], ours[2][0])


@own_kernel
@pytest.mark.parametrize("length", [1, 15, 16, 17, 100_000, (1 << 17) + 5, 1_000_003])  # serial, parallel scans
def test_the_loop_non_finite_check_finds_one_inf_or_nan_anywhere(adam_update, length):
    """The loop's check reads the gradients; ATen's (which the Python loop calls) also multiplies
    them by one. Both must raise the flag for a single inf or NaN, wherever it is, and only then."""
    scan = torch.ops.hpctrain_native.any_non_finite
    finite = torch.randn(length)
    finite[0], finite[-1] = 3.4e38, -0.0  # the largest finite float and a negative zero are finite
    finite[length // 2] = torch.finfo(torch.float32).tiny / 8  # so is a subnormal
    assert not scan([torch.ones(3), finite])
    for position in sorted({0, length // 3, length // 2, length - 1}):
        for bad in (float("inf"), float("-inf"), float("nan")):
            values = finite.clone()
            values[position] = bad
            assert scan([torch.ones(3), values]), (position, bad)


def test_adamw_decay_factor_rounds_as_torch(adam_update):
    """ATen computes 1 - lr * weight_decay as one fused multiply-add; for this pair the unfused
    value rounds to another float (found by search), which changed most weights."""
    reference, ours = _train_both(adam_update, [32, 9], weight_decay=0.05963444709783383, decoupled=True, steps=3)
    _assert_bitwise_equal(reference, ours)


@pytest.mark.parametrize("flag", [2.0, 0.5, -1.0])
def test_only_a_flag_of_one_skips_the_update_as_in_torch(adam_update, flag):
    reference, ours = _state([20], 0), _state([20], 0)
    grad = [torch.randn(20)]
    torch._fused_adam_(reference[0], grad, reference[1], reference[2], [], [torch.tensor(1.0)], lr=1e-3, beta1=0.9,
                       beta2=0.999, weight_decay=0.0, eps=1e-7, amsgrad=False, maximize=False,
                       found_inf=torch.tensor(flag))
    adam_update(ours[0], grad, ours[1], ours[2], [torch.tensor(1.0)], 1e-3, 0.9, 0.999, 0.0, 1e-7, False,
                torch.tensor(flag))
    assert not torch.equal(reference[0][0], _state([20], 0)[0][0])  # torch updated
    _assert_bitwise_equal(reference, ours)


@pytest.mark.parametrize("eps", [0.0, 1e-30, 1e-12])
def test_an_eps_too_small_to_hide_a_flushed_second_moment_runs_torch_kernel(adam_update, eps):
    """With eps near zero, sqrt(subnormal second moment) is the denominator: flushing it would
    divide by zero (NaN, inf). Those updates go to ATen's kernel, so they equal torch's."""
    subnormal = torch.finfo(torch.float32).tiny / 8
    for grad_value in (0.0, 1e-20):
        reference = [[torch.ones(40)], [torch.full((40,), subnormal)], [torch.full((40,), subnormal)]]
        ours = [[t[0].clone()] for t in reference]
        grad = [torch.full((40,), grad_value)]
        torch._fused_adam_(reference[0], grad, reference[1], reference[2], [], [torch.tensor(1.0)], lr=1e-3,
                           beta1=0.9, beta2=0.999, weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)
        adam_update(ours[0], grad, ours[1], ours[2], [torch.tensor(1.0)], 1e-3, 0.9, 0.999, 0.0, eps, False,
                    torch.zeros(()))
        assert torch.isfinite(ours[0][0]).all()
        _assert_bitwise_equal(reference, ours)
