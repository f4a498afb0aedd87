"""The measured part of the plan, settled at the start of ``fit`` on the user's own model and data:
batch size, precision and compile (threads: ``Trainer._tune_threads``).

Every trial runs real steps on the first batches and restores weights, optimizer state and RNG
afterwards (:class:`~hpctrain.engine.tuning.TrainingState`), so trials leave no trace on training.
With replicas, each trial runs on the replica alone (no collectives, whose step counts would have
to match across ranks) and rank 0's choice is broadcast, so every replica trains the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import torch

from hpctrain.engine import tuning
from hpctrain.engine.data import LoaderData
from hpctrain.errors import ConfigError
from hpctrain.hardware import plan_cache
from hpctrain.hardware.batch_size import (
    cpu_batch_candidates,
    fits_in_memory,
    largest_fitting_batch,
    rescaled_learning_rate,
    with_headroom,
)

# A choice must win by this much to replace the default: timings of a few steps vary by a few %.
SPEED_MARGIN = 0.05
# bfloat16 keeps 8 bits of mantissa: a loss within 5% of float32's on the same batches is the
# rounding of the format, a bigger difference is a model that does not train the same in it.
LOSS_JUMP = 0.05
# torch.compile of even a small MLP's training step took ~15 s on the reference 2-core CPU
# (benchmarks/results/seed.json, "torch.compile of the step"). A trial is tried only where the
# whole planned training is several times that, or it could never be repaid.
COMPILE_TRIAL_MIN_SECONDS = 60.0


# --- batch size ---------------------------------------------------------------------------------


def auto_batch_size(trainer, data, hooks) -> int:
    """``batch_size="auto"``: the largest that fits a GPU's memory, or the fastest on a CPU."""
    if isinstance(data.train, LoaderData):
        raise ConfigError("batch_size='auto' needs arrays or tensors; a DataLoader fixes its own batch size.")
    world = trainer.plan.world_size
    rows = len(data.train) // world  # each replica's share of the data bounds its share of a batch
    with _local_trials(trainer):
        if trainer.plan.device.type == "cuda":
            search = largest_fitting_batch(lambda size: _fits_on_gpu(trainer, data, size, hooks), start=32,
                                           limit=rows)
            per_replica = with_headroom(search.batch_size)
            reason = f"largest that fits the GPU ({search.describe()}), less 10% headroom"
        else:
            rates = {size: size / _seconds_per_step(trainer, data, size, hooks) for size in cpu_batch_candidates(rows)}
            per_replica = smallest_near_best(rates)
            measured = ", ".join(f"{size} → {rate:,.0f} samples/s" for size, rate in rates.items())
            reason = (f"the smallest batch within {SPEED_MARGIN:.0%} of the most samples per second on this "
                      f"model: {measured}")
    per_replica = _agree(trainer, per_replica, smallest=trainer.plan.device.type == "cuda")
    if world > 1:
        reason += f"; {per_replica} per replica (agreed across the {world} replicas) × {world}"
    chosen = per_replica * world
    trainer.plan = trainer.plan.with_choice("batch_size", chosen, reason)
    _rescale_learning_rate(trainer, chosen)
    return chosen


def smallest_near_best(rates: dict[int, float]) -> int:
    """The smallest batch whose throughput is within the timing noise of the best one.

    Between batches that train equally fast, the smaller one takes more update steps per epoch
    and less memory; a few-percent lead in a short trial is not a measured difference.
    """
    best = max(rates.values())
    return min(size for size, rate in rates.items() if rate >= best * (1 - SPEED_MARGIN))


def _rescale_learning_rate(trainer, batch_size: int) -> None:
    rule = trainer.plan.lr_scaling
    if rule is None:
        return
    groups = trainer.optimizer.param_groups
    before = groups[0]["lr"]
    after, explanation = rescaled_learning_rate(before, batch_size, rule)
    for group in groups:
        group["lr"] = after
    trainer.plan = trainer.plan.with_reason("learning_rate", f"{after:.6g} ({explanation})")


def _seconds_per_step(trainer, data, size: int, hooks) -> float:
    step, metrics = trainer._make_step(data, size, hooks)
    return _timed(trainer, step, metrics, tuning.trial_batches(data.train, size, cycle=True))


def _fits_on_gpu(trainer, data, size: int, hooks) -> bool:
    def one_step():
        step, metrics = trainer._make_step(data, size, hooks)
        x, y = next(iter(tuning.trial_batches(data.train, size, cycle=True)))
        trainer.module.train()
        step(x, y, metrics)
        torch.cuda.synchronize(trainer.plan.device)

    state = tuning.TrainingState(trainer.module, trainer.optimizer)
    try:
        return fits_in_memory(one_step)
    finally:
        state.restore()
        torch.cuda.empty_cache()


# --- precision ----------------------------------------------------------------------------------


def settle_precision(trainer, data, batch_size: int, hooks, step, metrics):
    """``precision="auto"``: bfloat16 autocast where it measured faster without a loss jump."""
    if trainer.plan.precision != "auto":
        return step, metrics
    if trainer.requested_executor == "static":
        trainer.plan = trainer.plan.with_choice("precision", "float32", "the static executor, asked for, runs float32")
        return step, metrics
    batches = [] if isinstance(data.train, LoaderData) else tuning.trial_batches(data.train, batch_size)
    if len(batches) <= tuning.WARMUP_STEPS:
        trainer.plan = trainer.plan.with_choice("precision", "float32", "too few batches to measure bfloat16")
        return step, metrics
    with _local_trials(trainer):
        float32_step, float32_metrics = trainer._make_step(data, batch_size, hooks)
        float32_seconds = _timed(trainer, float32_step, float32_metrics, batches)
        float32_loss = _mean_loss(trainer, batches, "float32")
        trainer.plan = dataclasses.replace(trainer.plan, precision="bfloat16")
        bf16_step, bf16_metrics = trainer._make_step(data, batch_size, hooks)
        bf16_seconds = _timed(trainer, bf16_step, bf16_metrics, batches)
        bf16_loss = _mean_loss(trainer, batches, "bfloat16")
    jump = abs(bf16_loss - float32_loss) / max(abs(float32_loss), 1e-12)
    faster = bf16_seconds < float32_seconds * (1 - SPEED_MARGIN)
    choice = "bfloat16" if faster and jump <= LOSS_JUMP and math.isfinite(bf16_loss) else "float32"
    choice = _agree_on_name(trainer, choice, ("float32", "bfloat16"))
    trainer.plan = trainer.plan.with_choice("precision", choice, (
        f"measured {float32_seconds * 1e6:,.0f} us/step in float32 ({float32_step.name} executor) against "
        f"{bf16_seconds * 1e6:,.0f} us/step with bfloat16 autocast; loss {float32_loss:.4g} against "
        f"{bf16_loss:.4g} ({jump:.1%} apart, {LOSS_JUMP:.0%} allowed)"))
    return trainer._make_step(data, batch_size, hooks)


def _mean_loss(trainer, batches, precision: str) -> float:
    """The loss of the current weights on the trial batches, without an update (a host sync)."""
    from hpctrain.engine.step import autocast

    trainer.module.eval()
    with torch.no_grad(), autocast(trainer.plan.device, precision):
        losses = [trainer.loss(trainer.module(x), y).float() for x, y in batches]
    trainer.module.train()
    return float(torch.stack(losses).mean())


# --- compile ------------------------------------------------------------------------------------


def settle_compile(trainer, data, batch_size: int, epochs: int, hooks, step, metrics):
    """``compile="auto"``: torch.compile only where its measured speed-up repays its measured cost."""
    if trainer.plan.compile != "auto":
        return step, metrics
    decision = _compile_decision(trainer, data, batch_size, epochs, hooks, step)
    _decide_compile(trainer, *decision)
    return trainer._make_step(data, batch_size, hooks) if trainer.plan.compile else (step, metrics)


def _compile_decision(trainer, data, batch_size: int, epochs: int, hooks, step) -> tuple[bool, str]:
    if trainer.communicator is not None:
        # Measured trial steps beside the replicas' own step disturbed their training (weights
        # 5e-3 off one process after 8 SGD steps); replicas keep eager PyTorch.
        return False, "replicas train eagerly: a compile is not measured across replicas"
    if step.name == "static":
        return False, ("the static executor runs a fixed sequence of kernels; there is no per-step graph "
                       "building for torch.compile to remove")
    batches = [] if isinstance(data.train, LoaderData) else tuning.trial_batches(data.train, batch_size)
    if len(batches) <= tuning.WARMUP_STEPS:
        return False, "too few batches to measure a compiled step"
    with _local_trials(trainer):
        eager_step, eager_metrics = trainer._make_step(data, batch_size, hooks)
        eager_seconds = _timed(trainer, eager_step, eager_metrics, batches)
        total_steps = epochs * -(-len(data.train) // batch_size)
        planned = eager_seconds * total_steps
        if planned < COMPILE_TRIAL_MIN_SECONDS:
            return False, (f"the planned {total_steps:,} steps take about {planned:.0f} s at "
                           f"{eager_seconds * 1e6:,.0f} us/step; a compile (about 15 s on a small CPU) is tried "
                           f"only for runs over {COMPILE_TRIAL_MIN_SECONDS:.0f} s")
        return _compile_trial(trainer, data, batch_size, hooks, batches, eager_seconds, total_steps)


def _compile_trial(trainer, data, batch_size, hooks, batches, eager_seconds, total_steps) -> tuple[bool, str]:
    trainer.plan = dataclasses.replace(trainer.plan, compile=True)
    compiled_step, compiled_metrics = trainer._make_step(data, batch_size, hooks)
    state = tuning.TrainingState(trainer.module, trainer.optimizer)
    started = time.perf_counter()
    try:
        trainer.module.train()
        x, y = next(iter(batches))
        compiled_step(x, y, compiled_metrics)  # the first call compiles
        tuning.synchronize(trainer.plan.device)
        compile_seconds = time.perf_counter() - started
        compiled_seconds = tuning.seconds_per_step(compiled_step, batches, compiled_metrics)
    finally:
        state.restore()
        compiled_metrics.reset()
    saved = (eager_seconds - compiled_seconds) * total_steps
    pays = compiled_seconds < eager_seconds * (1 - SPEED_MARGIN)
    return pays, (f"measured: compiling took {compile_seconds:.1f} s; {eager_seconds * 1e6:,.0f} us/step eager against "
                  f"{compiled_seconds * 1e6:,.0f} us/step compiled, {saved:+.0f} s over the planned "
                  f"{total_steps:,} steps" + ("" if pays else "; not worth it"))


def _decide_compile(trainer, compile: bool, reason: str) -> None:
    compile = bool(_agree_on_name(trainer, bool(compile), (False, True)))
    trainer.plan = trainer.plan.with_choice("compile", compile, reason)


# --- shared helpers -----------------------------------------------------------------------------


def _timed(trainer, step, metrics, batches) -> float:
    state = tuning.TrainingState(trainer.module, trainer.optimizer)
    try:
        trainer.module.train()
        return tuning.seconds_per_step(step, batches, metrics)
    finally:
        state.restore()
        metrics.reset()


@contextlib.contextmanager
def _local_trials(trainer):
    """Trial steps on this replica alone: no collectives, so ranks need not time the same steps."""
    communicator, trainer.communicator = trainer.communicator, None
    try:
        yield
    finally:
        trainer.communicator = communicator


def _agree(trainer, value: int, *, smallest: bool) -> int:
    """One value for every replica: the smallest (memory: it must fit everywhere) or rank 0's."""
    communicator = trainer.communicator
    if communicator is None:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=communicator.device)
    if smallest:
        return int(communicator.all_reduce_min_(tensor).item())
    return int(communicator.broadcast_(tensor).item())


def _agree_on_name(trainer, value, options: tuple):
    return options[_agree(trainer, options.index(value), smallest=False)]


# --- the plan cache -----------------------------------------------------------------------------

_CACHED_CHOICES = ("batch_size", "threads", "precision", "compile")


def cache_key(trainer, data, batch_size, epochs: int) -> str | None:
    """The key under which this fit's measured choices are kept; None where nothing is measured.

    Replicas do not use the cache: every rank would have to read the very same entry at once.
    """
    plan = trainer.plan
    measures = batch_size == "auto" or plan.tune_threads or plan.precision == "auto" or plan.compile == "auto"
    if not measures or plan.world_size > 1 or isinstance(data.train, LoaderData):
        return None
    from hpctrain.hardware.machine import inspect_machine

    machine = inspect_machine()
    return plan_cache.key_of({
        "model": [(type(m).__qualname__, [tuple(p.shape) for p in m.parameters(recurse=False)])
                  for m in trainer.module.modules()],
        "inputs": [list(data.train.x.shape), str(data.train.x.dtype)],
        "loss": type(trainer.loss).__qualname__,
        "optimizer": type(trainer.optimizer).__qualname__ + str(getattr(trainer.optimizer, "optimizer_class", "")),
        "asked": [batch_size, epochs, plan.threads if not plan.tune_threads else "auto", plan.precision,
                  plan.compile, trainer.requested_executor, str(plan.device), plan.cuda_graph, plan.lr_scaling],
        "machine": [machine.cpu.model, machine.cpu.physical_cores, machine.cpu.logical_cpus_usable,
                    [gpu.name for gpu in machine.gpus], machine.pytorch.version, _hpctrain_version()],
    })


def apply_cached_choices(trainer, key: str | None) -> bool:
    """Puts the cached choices, if this fit was measured before, into the plan; says whether it was."""
    cached = plan_cache.load(key) if key else None
    if not cached:
        return False
    plan = dataclasses.replace(trainer.plan, tune_threads=False)
    note = f"; measured {cached.get('measured_at', 'earlier')}, cached (hpctrain doctor --clear-cache measures again)"
    for name, (value, reason) in cached["choices"].items():
        plan = plan.with_choice(name, value, reason + note)
    trainer.plan = plan
    if cached["choices"].get("batch_size"):
        _rescale_learning_rate(trainer, trainer.plan.batch_size)
    return True


def store_choices(trainer, key: str | None) -> None:
    if key is None:
        return
    reasons = dict(trainer.plan.reasons)
    choices = {name: (getattr(trainer.plan, name), reasons[name].split(" (", 1)[-1].removesuffix(")"))
               for name in _CACHED_CHOICES if name in reasons and getattr(trainer.plan, name) is not None}
    plan_cache.store(key, {"choices": choices})


def _hpctrain_version() -> str:
    """The installed distribution's version, read from its metadata: the top-level package, which
    resolves the front ends by name, stays above the engine."""
    from importlib import metadata

    try:
        return metadata.version("hpctrain")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
