"""The message for a TensorFlow name hpctrain does not provide: what to use instead."""

from __future__ import annotations

# tf.NAME -> its equivalent. Names that tf.math has (tf.log1p -> tf.math.log1p) and names whose
# keras.ops function has the same name (tf.einsum -> keras.ops.einsum) are found without being
# listed; these are the ones that differ or need more.
_EQUIVALENTS = {
    "Tensor": "torch.Tensor (the tensors here are torch tensors)",
    "TensorShape": "a tuple of ints (x.shape)",
    "reverse": "keras.ops.flip (or torch.flip)",
    "gather_nd": "x[tuple(indices.T)] on a torch tensor",
    "scatter_nd": "keras.ops.scatter",
    "tensor_scatter_nd_update": "keras.ops.scatter_update",
    "sequence_mask": "keras.ops.arange(maxlen) < keras.ops.expand_dims(lengths, -1)",
    "linalg": "keras.ops.linalg (e.g. keras.ops.inv) or torch.linalg",
    "image": "keras.ops.image, or keras.layers.Resizing and the other preprocessing layers",
    "io": "Python's open() and numpy (TFRecord and tf.io need TensorFlow itself)",
    "strings": "Python strings (tf.strings needs TensorFlow itself)",
    "RaggedTensor": "padded tensors with a mask (ragged tensors need TensorFlow itself)",
    "SparseTensor": "torch.sparse_coo_tensor",
    "compat": "the TF2 names (tf.compat.v1 graphs and sessions need TensorFlow itself)",
    "summary": "keras.callbacks.TensorBoard, or torch.utils.tensorboard.SummaryWriter",
    "train": "keras.callbacks.ModelCheckpoint (checkpoints) and keras.optimizers",
    "optimizers": "tf.keras.optimizers",
    "losses": "tf.keras.losses",
    "Module": "keras.layers.Layer, or torch.nn.Module",
    "py_function": "a plain Python call (everything runs eagerly here)",
    "numpy_function": "a plain Python call (everything runs eagerly here)",
    "device": "torch.device, or hpctrain's plan (which picks the device)",
}

_TORCH_TWIN = {"einsum": "torch.einsum", "linspace": "torch.linspace", "meshgrid": "torch.meshgrid",
               "norm": "torch.linalg.norm", "roll": "torch.roll", "tensordot": "torch.tensordot"}


def _in_tf_math(name: str) -> bool:
    from hpctrain.tfcompat import math

    return name in math.__all__


def _keras_ops_has(name: str) -> bool:
    from hpctrain.keras import ops

    return not name.startswith("_") and callable(getattr(ops, name, None))


def equivalent(name: str) -> str | None:
    """What to use for ``tf.<name>``, or None where nothing is known."""
    if name in _EQUIVALENTS:
        return _EQUIVALENTS[name]
    if _in_tf_math(name):
        return f"tf.math.{name}"
    if _keras_ops_has(name):
        twin = _TORCH_TWIN.get(name)
        return f"keras.ops.{name}" + (f" (or {twin})" if twin else "")
    return None


def missing_name_message(name: str) -> str:
    """The AttributeError message for ``tf.<name>``."""
    instead = equivalent(name)
    if instead is not None:
        return f"hpctrain has no tf.{name}; use {instead}."
    return (f"hpctrain has no tf.{name}: it provides only the TensorFlow names Keras tutorials use "
            "(see docs/tf-compat.md). Look for an equivalent in keras.ops (https://keras.io/api/ops/) "
            "or torch.")
