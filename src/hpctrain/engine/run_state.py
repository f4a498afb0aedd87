"""What a training run must carry across a crash to continue the very same computation.

:class:`FitRun` is where ``fit`` stands (epoch, step within it, the epoch's permutation, the global
step); :class:`RunCheckpointer` turns the trainer plus that position into a checkpoint payload and
back. Saving reads device values (a host sync), so it happens only at the steps a checkpoint is
due; between them the loop only compares integers.

With replicas, each rank's own torch RNG state and metric sums (they differ: each rank sees its
share of every batch) are gathered to rank 0, which alone writes; on restore every rank reads the
file and takes its own part.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch

from hpctrain.engine import checkpoint as files
from hpctrain.engine.checkpoint_contents import check_run_payload
from hpctrain.engine.folder_lock import FolderLock
from hpctrain.engine.resume_checks import Changes, check_resume, compare, group_settings, made_from
from hpctrain.engine.optim import LazyOptimizer
from hpctrain.errors import CheckpointError


@dataclasses.dataclass
class FitRun:
    """Where ``fit`` stands; the loop advances it, checkpoints record it."""

    epoch: int = 0
    step: int = 0  # steps done in this epoch
    global_step: int = 0
    order: torch.Tensor | None = None  # this epoch's permutation of the rows
    # A DataLoader's pass draws its shuffle order from torch's RNG as it begins: the state then.
    loader_rng: torch.Tensor | None = None
    resumed_mid_epoch: bool = False


class RunCheckpointer:
    """Saves and restores a whole ``fit`` in ``config.directory``."""

    def __init__(self, config: files.CheckpointConfig, trainer):
        self.config = config
        self.trainer = trainer
        self.every = None if config.save_freq == "epoch" else config.save_freq
        self.is_writer = trainer.plan.rank == 0
        self.made_from = None  # what this run is made from, as its checkpoints record it
        # The writer owns the folder for the run: a second run saving there is refused.
        self.lock = FolderLock(config.directory)
        if self.is_writer:
            self.lock.acquire()

    def due_after_step(self, run: FitRun) -> bool:
        return self.every is not None and run.global_step % self.every == 0

    @property
    def due_after_epoch(self) -> bool:
        return self.every is None

    # --- save ---------------------------------------------------------------------------------

    def save(self, run: FitRun, *, metrics, hooks, shuffler, finished: bool = False) -> None:
        flush = getattr(metrics, "flush", None)
        if flush is not None:
            flush()  # deferred logits become sums here, at the same steps in every run of the command
        guard = getattr(self.trainer, "_guard", None)
        if guard is not None and guard.skip_steps:
            guard.skipped_steps()  # the steps skipped so far leave the host's update count before it is saved
        payload = self._payload(run, metrics, hooks, shuffler, finished)
        if self.is_writer:
            files.save_checkpoint(self.config.directory, payload, keep=self.config.keep)

    def _payload(self, run: FitRun, metrics, hooks, shuffler, finished: bool) -> dict:
        trainer = self.trainer
        return {
            "position": {"epoch": run.epoch, "step": run.step, "global_step": run.global_step,
                         "finished": finished, "world_size": trainer.plan.world_size},
            "order": run.order,
            "loader_rng": run.loader_rng,
            "model": dict(trainer.module.state_dict()),
            "optimizer": optimizer_state(trainer.optimizer),
            "rng": _shared_rng_state(shuffler),
            "replicas": self._replica_parts(metrics),
            "callbacks": [_callback_state(callback) for callback in hooks.callbacks],
            "made_from": self.made_from or made_from(trainer, shuffler),
        }

    def _replica_parts(self, metrics) -> list[dict]:
        """Each rank's torch RNG state and metric sums, gathered in rank order."""
        local = {"torch": torch.get_rng_state(), "metrics": metric_sums(metrics)}
        communicator = self.trainer.communicator
        if communicator is None:
            return [local]
        flat = torch.cat([local["torch"], local["metrics"].view(torch.uint8)]).to(communicator.device)
        gathered = communicator.all_gather_rows(flat).cpu().view(communicator.world_size, -1)
        split = local["torch"].numel()
        return [{"torch": row[:split].clone(), "metrics": row[split:].clone().view(local["metrics"].dtype)}
                for row in gathered]

    # --- restore ------------------------------------------------------------------------------

    def restore(self, *, metrics, hooks, shuffler) -> FitRun | None:
        """The position to continue from, with every piece of state put back; ``None`` to start fresh."""
        self.made_from = made_from(self.trainer, shuffler)
        found = files.load_latest(self.config.directory, check=check_run_payload)
        if found is None:
            return None
        path, payload = found
        trainer = self.trainer
        try:
            changes = self._changes_since(path, payload)
        except CheckpointError:
            self.lock.release()  # this run will not use the folder: another may
            raise
        position = payload["position"]
        if position["world_size"] != trainer.plan.world_size:
            raise CheckpointError(f"{path} was written by {position['world_size']} replica(s) but this run has "
                                  f"{trainer.plan.world_size}; resume with the same number of replicas.")
        trainer.module.load_state_dict(payload["model"])  # copies in place: the executors keep their views
        settings_now = optimizer_state(trainer.optimizer)["groups"]
        if not changes.optimizer:  # another optimizer starts with fresh state
            load_optimizer_state(trainer.optimizer, payload["optimizer"])
        if changes.settings:
            _load_hyperparameters(trainer.optimizer, settings_now)  # the accepted settings, not the saved ones
        _restore_shared_rng(payload["rng"], shuffler)
        part = payload["replicas"][trainer.plan.rank]
        torch.set_rng_state(part["torch"])
        self.saved_metric_sums = part["metrics"]
        self.saved_hyperparameters = settings_now if changes.settings else payload["optimizer"]["groups"]
        _load_callback_states(hooks.callbacks, payload["callbacks"])
        run = FitRun(epoch=position["epoch"], step=position["step"], global_step=position["global_step"],
                     order=payload["order"], loader_rng=payload.get("loader_rng"),
                     resumed_mid_epoch=position["step"] > 0)
        if changes.data:  # the interrupted epoch starts over on the data given now
            run.step, run.order, run.loader_rng, run.resumed_mid_epoch = 0, None, None, False
        trainer.stop_training = bool(position["finished"])
        return run

    def _changes_since(self, path: str, payload: dict) -> Changes:
        """What differs from the run that wrote ``payload``; raises unless nothing or only accepted changes."""
        saved = payload.get("made_from")
        if saved is None:  # written before checkpoints recorded it
            return Changes(blocking=[], accepted=[])
        groups = payload["optimizer"]["groups"]
        saved_settings = group_settings(groups[0]) if groups else {}
        changes = compare(saved, self.made_from, saved_settings)
        check_resume(path, changes, self.config.allow_changes)
        if not changes.accepted:
            self.made_from = saved  # the run's own record: its settings as it began
        return changes

    def resume_epoch(self, metrics) -> None:
        """At a mid-epoch resume, after ``on_epoch_begin``: the saved sums and learning rate win."""
        load_metric_sums(metrics, self.saved_metric_sums)
        _load_hyperparameters(self.trainer.optimizer, self.saved_hyperparameters)

    def finish(self) -> None:
        self.lock.release()
        if self.config.delete_at_end and self.is_writer:
            files.delete_checkpoints(self.config.directory)


# --- pieces -----------------------------------------------------------------------------------


def optimizer_params(optimizer) -> list:
    if isinstance(optimizer, LazyOptimizer):
        return optimizer.params
    return [param for group in optimizer.param_groups for param in group["params"]]


def optimizer_state(optimizer) -> dict:
    params = optimizer_params(optimizer)
    return {
        "scheduled_updates": getattr(optimizer, "scheduled_updates", None),  # a learning-rate schedule's clock
        "groups": [{key: value for key, value in group.items() if key != "params" and _storable(value)}
                   for group in optimizer.param_groups],
        "state": {str(index): dict(optimizer.state[param]) for index, param in enumerate(params)
                  if param in optimizer.state},
    }


def load_optimizer_state(optimizer, saved: dict) -> None:
    _load_hyperparameters(optimizer, saved["groups"])
    if saved.get("scheduled_updates") is not None:
        optimizer.scheduled_updates = saved["scheduled_updates"]
    params = optimizer_params(optimizer)
    group = optimizer.param_groups[0]
    step_on_device = bool(group.get("fused") or group.get("capturable"))
    for index, entries in saved["state"].items():
        param = params[int(index)]
        live = optimizer.state.setdefault(param, {})
        for key, value in entries.items():
            if isinstance(value, torch.Tensor) and isinstance(live.get(key), torch.Tensor):
                live[key].copy_(value)  # in place: a fused update holds references to these tensors
            elif isinstance(value, torch.Tensor):
                on_device = key != "step" or step_on_device
                live[key] = value.to(param.device if on_device else "cpu")
            else:
                live[key] = value


def _load_hyperparameters(optimizer, groups: list[dict]) -> None:
    for group, saved in zip(optimizer.param_groups, groups):
        for key, value in saved.items():
            if isinstance(group.get(key), torch.Tensor):
                group[key].copy_(value)
            else:
                group[key] = value


def _storable(value) -> bool:
    if isinstance(value, tuple):
        return all(_storable(item) for item in value)
    return value is None or isinstance(value, (bool, int, float, str, torch.Tensor))


def metric_sums(metrics) -> torch.Tensor:
    trackers = [metrics.loss, *metrics.metrics]
    return torch.stack([value for tracker in trackers for value in (tracker.total, tracker.count)]).cpu()


def load_metric_sums(metrics, sums: torch.Tensor) -> None:
    trackers = [metrics.loss, *metrics.metrics]
    if sums.numel() != 2 * len(trackers):
        raise CheckpointError(f"the checkpoint holds {sums.numel() // 2} metric accumulators but this run has "
                              f"{len(trackers)}; resume with the same compile(metrics=...).")
    for index, tracker in enumerate(trackers):
        tracker.total.copy_(sums[2 * index])
        tracker.count.copy_(sums[2 * index + 1])


def _shared_rng_state(shuffler) -> dict:
    keys = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (keys[0], keys[1].astype(np.int64), *keys[2:]),
             "shuffle": None if shuffler is None else shuffler.generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_shared_rng(state: dict, shuffler) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.astype(np.uint32), *rest))
    if shuffler is not None and state["shuffle"] is not None:
        shuffler.generator.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _load_callback_states(callbacks, saved: list) -> None:
    """The k-th saved callback of a class restores the k-th of that class in this run."""
    saved_by_class: dict[str, list] = {}
    for entry in saved:
        if entry is not None:
            saved_by_class.setdefault(entry["class"], []).append(entry["state"])
    for callback in callbacks:
        queue = saved_by_class.get(type(callback).__name__)
        if queue and hasattr(callback, "load_checkpoint_state"):
            callback.load_checkpoint_state(queue.pop(0))


def _callback_state(callback) -> dict | None:
    getter = getattr(callback, "checkpoint_state", None)
    return None if getter is None else {"class": type(callback).__name__, "state": getter()}
