"""``model(x).numpy()`` works as on TensorFlow.

On Keras's torch backend, calling a model outside ``fit`` returns a tensor that requires grad,
and its ``.numpy()`` raises ("Can't call numpy() on Tensor that requires grad"): the first
prediction of the TensorFlow beginner tutorial fails. The output is handed back as a tensor
whose ``numpy()`` detaches first. It is the same tensor (an alias in the autograd graph), so a
custom training loop that calls the model without ``training=`` and then ``loss.backward()``
(Keras's own torch guides do) trains as before; operations on it give plain tensors.
"""

from __future__ import annotations

import functools

import keras
import torch


class ModelOutput(torch.Tensor):
    # Operations on this tensor return plain torch.Tensors: only the model's own output is special.
    __torch_function__ = torch._C._disabled_torch_function_impl

    def numpy(self, *, force: bool = False):
        return self.detach().cpu().numpy()

    def __repr__(self, **kwargs):
        # Printed as the plain tensor Keras on torch returns, not under this class's name.
        return torch.Tensor.__repr__(self.as_subclass(torch.Tensor), **kwargs)


def _numpy_friendly(value):
    if isinstance(value, torch.Tensor) and value.requires_grad and type(value) is torch.Tensor:
        return value.as_subclass(ModelOutput)
    if isinstance(value, (list, tuple)):
        return type(value)(_numpy_friendly(v) for v in value)
    if isinstance(value, dict):
        return {key: _numpy_friendly(v) for key, v in value.items()}
    return value


def eager_result(function):
    """``function``'s result as TensorFlow's eager ops give it: ``.numpy()`` works even where the
    result is part of an autograd graph (a model's output run through ``tf.nn.softmax``). The
    graph is kept, so the ``tf.*`` names still work inside a ``GradientTape``."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        return _numpy_friendly(function(*args, **kwargs))

    return run


_installed: list = []


def install() -> None:
    if _installed:
        return
    keras_call = keras.Model.__call__

    @functools.wraps(keras_call)
    def __call__(self, *args, **kwargs):
        outputs = keras_call(self, *args, **kwargs)
        return outputs if kwargs.get("training") else _numpy_friendly(outputs)

    keras.Model.__call__ = __call__
    _installed.append(keras_call)
