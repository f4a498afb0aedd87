"""A pipeline's layout (stages × replicas, micro-batches, schedule) and what it refuses, with the fix."""

from __future__ import annotations

import dataclasses

from hpctrain.errors import ConfigError

SCHEDULES = ("1f1b", "gpipe")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """P stages × D replicas (world = P*D), M micro-batches per replica's share of a batch."""

    stages: int
    microbatches: int
    schedule: str = "1f1b"
    data_parallel: int = 1

    def __post_init__(self):
        for name in ("stages", "microbatches", "data_parallel"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"PipelineStrategy({name}={value!r}): expected a positive integer.")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"PipelineStrategy(schedule={self.schedule!r}): expected '1f1b' or 'gpipe'.")
        if self.schedule == "1f1b" and self.microbatches < self.stages:
            raise ConfigError(
                f"schedule='1f1b' with {self.stages} stages needs at least {self.stages} micro-batches (each stage "
                f"holds one in flight per later stage); got microbatches={self.microbatches}. Use "
                f"microbatches>={self.stages}, or schedule='gpipe'.")

    @property
    def world_size(self) -> int:
        return self.stages * self.data_parallel

    def stage_of(self, rank: int) -> int:
        return rank % self.stages

    def replica_of(self, rank: int) -> int:
        return rank // self.stages

    def rank_of(self, stage: int, replica: int) -> int:
        return replica * self.stages + stage

    def check_world(self, world_size: int) -> None:
        if world_size == self.world_size:
            return
        hint = (f"data_parallel={world_size // self.stages}" if world_size % self.stages == 0 else
                f"a number of stages that divides {world_size}, with data_parallel = {world_size} / stages")
        raise ConfigError(
            f"PipelineStrategy(stages={self.stages}, data_parallel={self.data_parallel}) lays out "
            f"{self.stages} stages × {self.data_parallel} replicas = {self.world_size} processes, but {world_size} "
            f"were launched. Launch {self.world_size} (hpctrain launch --nproc-per-node={self.world_size}), or "
            f"use {hint}.")

    def check_batch(self, batch_size: int) -> None:
        rows = self.data_parallel * self.microbatches
        if batch_size % rows == 0:
            return
        lower, upper = batch_size // rows * rows, (batch_size // rows + 1) * rows
        sizes = f"{lower} or {upper}" if lower else f"{upper}"
        per_replica = batch_size // self.data_parallel if batch_size % self.data_parallel == 0 else None
        divisors = [m for m in range(1, (per_replica or 0) + 1) if per_replica % m == 0 and
                    (self.schedule == "gpipe" or m >= self.stages)] if per_replica else []
        other = f", or microbatches in {divisors[-6:]}" if divisors else ""
        raise ConfigError(
            f"batch_size={batch_size} does not divide into {self.data_parallel} replica(s) × {self.microbatches} "
            f"micro-batches ({rows} equal parts). Use a batch size that is a multiple of {rows}, e.g. {sizes}"
            f"{other}.")


def microbatches_for(rows: int, most: int) -> int:
    """The most micro-batches, up to ``most``, that cut ``rows`` evenly (an uneven last batch)."""
    return max(m for m in range(1, min(most, rows) + 1) if rows % m == 0)



def refuse_penalty():
    raise ConfigError("weight regularizers are not supported with PipelineStrategy yet; remove the "
                      "kernel_regularizer/bias_regularizer arguments or train without the strategy.")


def refuse_checkpoints(checkpoint, callbacks) -> None:
    # A stage's checkpoint would hold rank 0's optimizer state only, and the stages' loop never
    # reaches the per-step saves: a resume would load wrong moments.
    if checkpoint is not None or any(getattr(c, "checkpoint_config", None) is not None for c in callbacks or []):
        raise ConfigError("checkpoints (BackupAndRestore, fit(checkpoint=...)) are not supported with "
                          "PipelineStrategy yet; ModelCheckpoint saves the whole model after each epoch.")


def refuse_skip_steps(on_nonfinite: str) -> None:
    # The stages check no losses or gradients for NaN/Inf yet, so no step could be skipped.
    if on_nonfinite != "raise":
        raise ConfigError(f"on_nonfinite={on_nonfinite!r} is not supported with PipelineStrategy yet; "
                          "leave it at 'raise' or train with MirroredStrategy.")
