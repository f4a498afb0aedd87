"""The message for a TensorFlow name hpctrain does not provide: what to use instead."""

from __future__ import annotations

# tf.NAME -> its equivalent. Names whose keras.ops function has the same name (tf.exp ->
# keras.ops.exp) are found without being listed; these are the ones that differ or need more.
_EQUIVALENTS = {
    "Variable": "keras.Variable (a trainable tensor), or torch.nn.Parameter",
    "Tensor": "torch.Tensor (the tensors here are torch tensors)",
    "TensorShape": "a tuple of ints (x.shape)",
    "concat": "keras.ops.concatenate (or torch.cat)",
    "range": "keras.ops.arange (or torch.arange)",
    "clip_by_value": "keras.ops.clip (or torch.clamp)",
    "gather": "keras.ops.take (or torch.index_select)",
    "reduce_prod": "keras.ops.prod",
    "reduce_any": "keras.ops.any",
    "reduce_all": "keras.ops.all",
    "reduce_std": "keras.ops.std",
    "reduce_variance": "keras.ops.var",
    "reduce_logsumexp": "keras.ops.logsumexp",
    "pow": "keras.ops.power (or torch.pow)",
    "boolean_mask": "x[mask] on a torch tensor",
    "math": "keras.ops (its functions carry tf.math's names: keras.ops.exp, keras.ops.log ...)",
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
    "print": "Python's print",
    "device": "torch.device, or hpctrain's plan (which picks the device)",
}

_TORCH_TWIN = {"matmul": "torch.matmul", "exp": "torch.exp", "reshape": "torch.reshape", "transpose": "torch.permute",
               "stack": "torch.stack", "zeros": "torch.zeros", "ones": "torch.ones", "where": "torch.where",
               "einsum": "torch.einsum", "sqrt": "torch.sqrt", "log": "torch.log", "square": "torch.square",
               "abs": "torch.abs", "maximum": "torch.maximum", "minimum": "torch.minimum"}


def _keras_ops_has(name: str) -> bool:
    from hpctrain.keras import ops

    return not name.startswith("_") and callable(getattr(ops, name, None))


def equivalent(name: str) -> str | None:
    """What to use for ``tf.<name>``, or None where nothing is known."""
    if name in _EQUIVALENTS:
        return _EQUIVALENTS[name]
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
