"""The TensorFlow names Keras tutorials use, for ``import hpctrain as tf``.

``hpctrain.__getattr__`` sends every name it does not define itself here (:func:`lookup`). The
names are built on ``keras.ops`` and torch; TensorFlow is never imported. ``docs/tf-compat.md``
lists the surface and where it differs from TensorFlow.
"""

from __future__ import annotations

import importlib

# tf.NAME -> (module, attribute); attribute None means the module itself.
_SURFACE = {
    "keras": ("hpctrain.keras", None),
    "distribute": ("hpctrain.distribute", None),
    "nn": ("hpctrain.tfcompat.nn", None),
    "random": ("hpctrain.tfcompat.random", None),
    "data": ("hpctrain.tfcompat.data", None),
    "version": ("hpctrain.tfcompat.version", None),
    "dtypes": ("hpctrain.tfcompat.dtypes", None),
    "saved_model": ("hpctrain.tfcompat.saved_model", None),
    "config": ("hpctrain.tfcompat.config", None),
    "math": ("hpctrain.tfcompat.math", None),
    "DType": ("hpctrain.tfcompat.dtypes", "DType"),
    "as_dtype": ("hpctrain.tfcompat.dtypes", "as_dtype"),
    "GradientTape": ("hpctrain.tfcompat.tape", "GradientTape"),
    "function": ("hpctrain.tfcompat.tape", "function"),
    "Variable": ("hpctrain.tfcompat.variables", "Variable"),
    "print": ("hpctrain.tfcompat.output", "print"),
    "get_logger": ("hpctrain.tfcompat.output", "get_logger"),
}
for _name in ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool",
              "half", "double"):
    _SURFACE[_name] = ("hpctrain.tfcompat.dtypes", _name)
for _name in ("constant", "convert_to_tensor", "cast", "shape", "one_hot", "argmax", "argmin", "reduce_sum",
              "reduce_mean", "reduce_max", "reduce_min", "executing_eagerly"):
    _SURFACE[_name] = ("hpctrain.tfcompat.ops", _name)

# tf.math's functions that TensorFlow (or TensorFlow 1, which tutorials still copy from) also has
# at the top level: tf.exp is tf.math.exp.
for _name in ("exp", "log", "sqrt", "square", "abs", "sign", "round", "floor", "ceil", "negative", "reciprocal",
              "sigmoid", "tanh", "sin", "cos", "add", "subtract", "multiply", "divide", "truediv", "floordiv",
              "pow", "maximum", "minimum", "equal", "not_equal", "less", "less_equal", "greater",
              "greater_equal", "logical_and", "logical_or", "logical_not", "matmul", "clip_by_value",
              "add_n", "cumsum", "reduce_prod", "reduce_any", "reduce_all", "reduce_logsumexp", "is_nan",
              "is_finite", "is_inf", "squared_difference", "count_nonzero"):
    _SURFACE[_name] = ("hpctrain.tfcompat.math", _name)
for _name in ("newaxis", "reshape", "expand_dims", "squeeze", "concat", "stack", "unstack", "zeros", "ones",
              "zeros_like", "ones_like", "fill", "eye", "range", "transpose", "broadcast_to", "identity", "gather",
              "tile", "pad", "split", "size", "rank", "boolean_mask", "where", "sort", "argsort", "unique"):
    _SURFACE[_name] = ("hpctrain.tfcompat.array", _name)

SUPPORTED_NAMES = frozenset(_SURFACE)


def lookup(name: str):
    """``tf.<name>``: the supported object, else AttributeError naming what to use instead."""
    if name not in _SURFACE:
        from hpctrain.tfcompat.hints import missing_name_message

        raise AttributeError(missing_name_message(name))
    module_name, attribute = _SURFACE[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)


__all__ = ["SUPPORTED_NAMES", "lookup"]
