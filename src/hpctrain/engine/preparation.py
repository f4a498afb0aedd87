"""How the trainer turns what ``fit``, ``evaluate`` and ``predict`` are given into tensors on the
plan's device: inputs and targets checked, the targets prepared for the loss, validation held out,
DataLoaders wrapped. A base of :class:`~hpctrain.engine.trainer.Trainer`; a model split across
processes (:mod:`hpctrain.engine.model_parallel`) checks its inputs and knows its output shape.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from hpctrain.engine import fit_options, native_checks, validation
from hpctrain.engine.data import LoaderData, ResidentData, to_tensor
from hpctrain.errors import ConfigError, InputError


@dataclasses.dataclass
class PreparedData:
    train: ResidentData | LoaderData
    validation: ResidentData | LoaderData | None
    output_shape: tuple[int, ...]


class DataPreparation:
    """Needs ``self.module``, ``self.loss``, ``self.plan``, ``self.communicator``, ``self.model_parallel``
    and ``self.data_share()``."""

    def _evaluation_loader(self, loader, y, sample_weight) -> LoaderData:
        if y is not None or sample_weight is not None:
            raise ConfigError("evaluate on a DataLoader takes the labels (and sample weights) from its batches; "
                              "give no y or sample_weight beside it.")
        data = LoaderData(loader, self.plan.device)
        return self._with_loader_targets(PreparedData(data, None, self._loader_output_shape(data))).train

    def _prepare_fit_data(self, x, y, validation_split, validation_data, sample_weight=None,
                          class_weight=None) -> PreparedData:
        if is_loader(x):
            if self.communicator is not None:
                raise ConfigError("with several replicas, pass arrays or tensors (each replica takes its share of "
                                  "every global batch); a DataLoader would give every replica every batch.")
            if validation_split:
                raise ConfigError("validation_split needs arrays; with a DataLoader pass validation_data instead.")
            if sample_weight is not None or class_weight is not None:
                raise ConfigError("with a DataLoader, give sample weights as a third item of each batch "
                                  "(x, y, sample_weight); sample_weight and class_weight need arrays.")
            loader = LoaderData(x, self.plan.device)
            output_shape = self._loader_output_shape(loader)
            return self._with_loader_targets(PreparedData(loader, self._prepare_validation(validation_data),
                                                           output_shape))
        train, output_shape = self._prepare_labelled(x, y, name="x", sample_weight=sample_weight)
        held_out = self._prepare_validation(validation_data)
        if validation_split and validation_data is None:  # as in Keras, validation_data wins
            train, held_out = train.split_tail(validation_split)
            if len(train) == 0 or len(held_out) == 0:
                raise InputError(
                    f"validation_split={validation_split} leaves {len(train)} training and {len(held_out)} "
                    "validation samples; both need at least one. Use more data or another split."
                )
        if class_weight is not None:  # as in Keras, for the training rows only
            train = ResidentData(train.x, fit_options.with_class_weight(train.y, class_weight))
        return self._with_loader_targets(PreparedData(train, held_out, output_shape))

    def _with_loader_targets(self, data: PreparedData) -> PreparedData:
        """Loaders' labels checked and converted by the loss batch by batch, as arrays' are once."""
        for part in (data.train, data.validation):
            if isinstance(part, LoaderData):
                part.prepare_targets = functools.partial(self.loss.prepare_targets, output_shape=data.output_shape)
        return data

    def _prepare_validation(self, validation_data):
        if validation_data is None:
            return None
        if is_loader(validation_data):
            return LoaderData(validation_data, self.plan.device)
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise InputError(
                f"validation_data must be a tuple (x_val, y_val) or (x_val, y_val, sample_weight_val); got "
                f"{type(validation_data).__name__}."
            )
        weights = validation_data[2] if len(validation_data) == 3 else None
        data, _ = self._prepare_labelled(validation_data[0], validation_data[1], name="x_val", y_name="y_val",
                                         sample_weight=weights, weight_name="sample_weight_val")
        return data

    def _prepare_labelled(self, x, y, *, name: str, y_name: str = "y", sample_weight=None,
                          weight_name: str = "sample_weight") -> tuple[ResidentData, tuple[int, ...]]:
        if self.model_parallel is not None:
            self.model_parallel.check_labelled(sample_weight=sample_weight, weight_name=weight_name)
        if y is None:
            raise InputError(f"{y_name} is missing: training and evaluation need a label for each sample of {name}.")
        validation.check_not_several_inputs(x, y, name=name)
        inputs = self._inputs_tensor(x, name=name)
        targets = to_tensor(y, name=y_name, device=self.plan.device)
        validation.check_same_length(inputs, targets, x_name=name, y_name=y_name)
        validation.check_finite(targets, name=y_name)
        output_shape = self._output_shape_for(inputs, name=name)
        targets = self.loss.prepare_targets(targets, output_shape)
        targets = fit_options.with_sample_weight(targets, sample_weight, rows=inputs.shape[0], name=weight_name)
        return ResidentData(inputs, targets), output_shape

    def _inputs_tensor(self, x, *, name: str) -> torch.Tensor:
        inputs = to_tensor(x, name=name, device=self.plan.device)
        if inputs.shape[0] == 0:
            raise InputError(f"{name} has no samples (shape {tuple(inputs.shape)}); give at least one row.")
        validation.check_finite(inputs, name=name)
        return inputs

    def _loader_output_shape(self, loader: LoaderData) -> tuple[int, ...]:
        xb, _ = native_checks.first_batch(loader)
        return validation.probe_output_shape(self.module, xb)

    def _output_shape_of(self, data) -> tuple[int, ...]:
        if isinstance(data, LoaderData):
            return self._loader_output_shape(data)
        return self._output_shape_for(data.x, name="x")

    def _output_shape_for(self, inputs: torch.Tensor, *, name: str) -> tuple[int, ...]:
        """The module's output shape for ``inputs``, from one probe row; a model split across processes
        knows it without running the parts that live elsewhere."""
        if self.model_parallel is not None:
            return self.model_parallel.output_shape(inputs, name=name)
        return validation.probe_output_shape(self.module, inputs, name=name)

    def _validation_batches(self, data, validation_steps: int | None, batch_size: int, *, per_batch: bool = False):
        """A function giving each validation pass's batches: all of them, or with ``validation_steps``
        the first that many batches of ``batch_size`` (as Keras 3, each pass starts again at the
        first batch). ``None`` lets validation take the inference batch size, except where a callback
        watches each validation batch (``per_batch``): it then sees Keras's batches of ``batch_size``."""
        if data is None or validation_steps is None and not per_batch:
            return lambda: None
        data = self._share_of(data)
        new_pass = data.batches if isinstance(data, LoaderData) else lambda: data.batches(batch_size)
        if validation_steps is None:
            return new_pass
        batches_per_pass = steps_per_epoch(data, batch_size)
        return lambda: fit_options.BatchStream(new_pass, validation_steps, batches_per_pass, what="validation").epoch()

    def _share_of(self, data):
        share = self.data_share()
        if share is not None and isinstance(data, ResidentData):
            return data.shard(*share)  # sums are reduced in results()
        return data



def is_loader(data) -> bool:
    return isinstance(data, torch.utils.data.DataLoader)


def steps_per_epoch(data, batch_size: int) -> int | None:
    if isinstance(data, LoaderData):
        return data.steps
    return -(-len(data) // batch_size)
