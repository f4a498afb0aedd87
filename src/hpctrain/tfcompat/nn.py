"""``tf.nn``: the activations, with TensorFlow's argument names and defaults, on ``keras.ops``."""

from __future__ import annotations

from hpctrain.keras import ops
from hpctrain.keras.call_output import eager_result


@eager_result
def relu(features, name=None):
    return ops.relu(features)


@eager_result
def sigmoid(x, name=None):
    return ops.sigmoid(x)


@eager_result
def tanh(x, name=None):
    return ops.tanh(x)


@eager_result
def softmax(logits, axis=None, name=None):
    """As ``tf.nn.softmax``: over the last axis unless ``axis`` says."""
    return ops.softmax(logits, axis=-1 if axis is None else axis)


@eager_result
def log_softmax(logits, axis=None, name=None):
    return ops.log_softmax(logits, axis=-1 if axis is None else axis)


@eager_result
def gelu(features, approximate=False, name=None):
    """As ``tf.nn.gelu``: the exact (erf) form unless ``approximate=True`` (``keras.ops.gelu``'s
    default is the tanh approximation)."""
    return ops.gelu(features, approximate=approximate)


@eager_result
def elu(features, name=None):
    return ops.elu(features)


@eager_result
def selu(features, name=None):
    return ops.selu(features)


@eager_result
def softplus(features, name=None):
    return ops.softplus(features)


@eager_result
def leaky_relu(features, alpha=0.2, name=None):
    """As ``tf.nn.leaky_relu``: slope ``alpha`` (default 0.2) below zero."""
    return ops.leaky_relu(features, negative_slope=alpha)


@eager_result
def silu(features, beta=1.0, name=None):
    """As ``tf.nn.silu``: ``features * sigmoid(beta * features)``."""
    if beta == 1.0:
        return ops.silu(features)
    features = ops.convert_to_tensor(features)
    return features * ops.sigmoid(beta * features)


swish = silu


def top_k(input, k=1, sorted=True, index_type="int32", name=None):  # noqa: A002 - TensorFlow's name
    """As ``tf.nn.top_k``, which is ``tf.math.top_k``."""
    from hpctrain.tfcompat.reductions import top_k as math_top_k

    return math_top_k(input, k=k, sorted=sorted, index_type=index_type)


def l2_normalize(x, axis=None, epsilon=1e-12, name=None, dim=None):
    """As ``tf.nn.l2_normalize``, which is ``tf.math.l2_normalize``."""
    from hpctrain.tfcompat.math import l2_normalize as math_l2_normalize

    return math_l2_normalize(x, axis=axis, epsilon=epsilon, dim=dim)


_EQUIVALENTS = {
    "conv1d": "keras.ops.conv", "conv2d": "keras.ops.conv", "conv3d": "keras.ops.conv",
    "dropout": "keras.random.dropout, or keras.layers.Dropout",
    "softmax_cross_entropy_with_logits": "keras.losses.categorical_crossentropy(y, logits, from_logits=True)",
    "sparse_softmax_cross_entropy_with_logits":
        "keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)",
    "sigmoid_cross_entropy_with_logits": "keras.losses.binary_crossentropy(y, logits, from_logits=True)",
    "embedding_lookup": "keras.ops.take(params, ids, axis=0)",
}


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    if name in _EQUIVALENTS:
        equivalent = _EQUIVALENTS[name]
    elif hasattr(ops, name):
        equivalent = f"keras.ops.{name}"
    else:
        equivalent = "keras.ops (https://keras.io/api/ops/nn/)"
    raise AttributeError(f"hpctrain has no tf.nn.{name}; use {equivalent}.")
