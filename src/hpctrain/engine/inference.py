"""``evaluate`` and ``predict``, and validation's pass during ``fit``: the module in eval mode under
``torch.inference_mode``, in large batches. A base of :class:`~hpctrain.engine.trainer.Trainer`.
"""

from __future__ import annotations

import numpy as np
import torch

from hpctrain.engine import native_checks, validation
from hpctrain.engine.callbacks import CallbackList
from hpctrain.engine.data import LoaderData, ResidentData, concat_rows, split_weights
from hpctrain.engine.fit_session import resolve_verbose
from hpctrain.engine.metrics import ModelOutput
from hpctrain.engine.preparation import DataPreparation, is_loader, steps_per_epoch
from hpctrain.engine.progress import Progress
from hpctrain.engine.step import autocast
from hpctrain.errors import ConfigError

# Evaluation and prediction keep no activations for backward, so they run in large batches.
INFERENCE_BATCH = 8192


class Inference(DataPreparation):
    """Needs, besides what :class:`DataPreparation` needs, ``self.output_activation``, ``self.penalty``,
    ``self.inference_batch_size``, ``self._apply_plan()`` and ``self._metric_set()``. A model split
    across processes (``self.model_parallel``) runs evaluation's and prediction's forward itself."""

    def evaluate(self, x, y=None, *, batch_size=None, verbose="auto", return_dict=False, sample_weight=None,
                 callbacks=None, callback_model=None):
        """``callbacks`` get Keras's ``on_test_*`` hooks (``on_test_batch_*`` cost a host sync per batch,
        and only when a callback defines them)."""
        batch_size = validation.check_inference_batch_size(batch_size, default=self.inference_batch_size)
        self._apply_plan()
        if is_loader(x):
            data = self._evaluation_loader(x, y, sample_weight)
            steps = data.steps
        else:
            data, _ = self._prepare_labelled(x, y, name="x", sample_weight=sample_weight)
            steps = steps_per_epoch(data, batch_size or 32)
        progress = Progress(verbose=resolve_verbose(verbose) if self.plan.rank == 0 else 0, total_steps=steps)
        hooks = CallbackList(callbacks or [], model=callback_model or self,
                             params={"verbose": verbose, "epochs": 1, "steps": steps})
        logs = self._evaluate_logs(data, batch_size or self.inference_batch_size, hooks=hooks)
        progress.finish(steps, logs)
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def predict(self, x, *, batch_size=None, verbose=0, callbacks=None, callback_model=None) -> np.ndarray:
        """``callbacks`` get ``on_predict_begin``/``on_predict_end`` (per-batch predict hooks are not
        called: the rows are predicted in large batches)."""
        if is_loader(x):
            raise ConfigError("predict takes the inputs as one array or tensor, not a DataLoader; concatenate the "
                              "loader's inputs (torch.cat([xb for xb, *_ in loader])) or predict batch by batch.")
        batch_size = validation.check_inference_batch_size(batch_size, default=self.inference_batch_size)
        self._apply_plan()
        inputs = self._inputs_tensor(x, name="x")
        steps = steps_per_epoch(ResidentData(inputs, None), batch_size or 32)
        progress = Progress(verbose=resolve_verbose(verbose) if self.plan.rank == 0 else 0, total_steps=steps)
        hooks = CallbackList(callbacks or [], model=callback_model or self,
                             params={"verbose": verbose, "epochs": 1, "steps": steps})
        hooks.call("on_predict_begin", {})
        if self.model_parallel is not None:  # through every part; every process gets every row
            outputs = self._activate(self.model_parallel.predict_rows(inputs, batch_size or self.inference_batch_size))
        elif self.communicator is None:
            outputs = self.predict_tensor(inputs, batch_size=batch_size or self.inference_batch_size)
        else:  # each replica predicts its contiguous share; the gather restores input order
            share = ResidentData(inputs, None).shard(*self.data_share()).x
            outputs = self.communicator.all_gather_rows(
                self.predict_tensor(share, batch_size=batch_size or self.inference_batch_size))
        progress.finish(steps, {})
        hooks.call("on_predict_end", {})
        return outputs.cpu().numpy()

    def predict_tensor(self, inputs: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        batch_size = batch_size or self.inference_batch_size
        self.module.eval()
        try:
            with torch.inference_mode(), autocast(self.plan.device, self.plan.precision):
                parts = [self._activate(self.module(xb)).float()
                         for xb, _ in ResidentData(inputs, None).batches(batch_size)]
                return concat_rows(parts) if parts else self._activate(self.module(inputs)).float()
        except RuntimeError:
            native_checks.explain_forward_error(self.module, inputs)  # inputs that do not fit the model
            raise

    def _evaluate_logs(self, data, batch_size: int, prefix: str = "", output_shape=None,
                       batches=None, hooks: CallbackList | None = None) -> dict[str, float]:
        if self.model_parallel is not None:
            return self.model_parallel.evaluate_logs(data, batch_size, prefix=prefix, output_shape=output_shape,
                                                     batches=batches, hooks=hooks)
        metrics = self._metric_set(output_shape or self._output_shape_of(data), prefix=prefix)
        data = self._share_of(data)
        hooks = hooks or CallbackList([], model=self, params={})
        per_batch = hooks.wants("on_test_batch_begin", "on_test_batch_end")
        hooks.call("on_test_begin", {})
        self.module.eval()
        with torch.inference_mode(), autocast(self.plan.device, self.plan.precision):
            if batches is None:
                batches = data.batches() if isinstance(data, LoaderData) else data.batches(batch_size)
            for batch, (xb, yb) in enumerate(batches):
                if per_batch:
                    hooks.call("on_test_batch_begin", batch, {})
                yb, weights = split_weights(yb)
                logits = self.module(xb)
                loss = self.loss(logits, yb) if weights is None else self.loss.weighted(logits, yb, weights)
                if self.penalty is not None:
                    loss = loss + self.penalty()
                metrics.update(loss, ModelOutput(logits, self.output_activation), yb, weights)
                if per_batch:  # a host sync, asked for
                    hooks.call("on_test_batch_end", batch, unprefixed(metrics.results(), prefix))
        logs = metrics.results()
        hooks.call("on_test_end", unprefixed(logs, prefix))
        return logs

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.output_activation is None else self.output_activation(logits)


def unprefixed(logs: dict, prefix: str) -> dict:
    """Validation's logs as the test hooks see them: "loss", not "val_loss", as in Keras."""
    return {name.removeprefix(prefix): value for name, value in logs.items()} if prefix else logs


