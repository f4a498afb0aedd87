"""``tf.random``: the global seed, the samplers and the shuffle tutorials use, on ``keras.random``."""

from __future__ import annotations

from hpctrain import keras
from hpctrain.tfcompat.dtypes import as_dtype, float32


def set_seed(seed: int) -> None:
    """As ``tf.random.set_seed``: seeds Python, NumPy, torch and Keras's global seed generator
    (``keras.utils.set_random_seed``), so ``tf.data`` shuffles and weight initialisers repeat."""
    keras.utils.set_random_seed(int(seed))


def _shape(shape):
    return tuple(int(s) for s in shape)


def normal(shape, mean=0.0, stddev=1.0, dtype=float32, seed=None, name=None):
    """As ``tf.random.normal``."""
    return keras.random.normal(_shape(shape), mean=mean, stddev=stddev, dtype=str(as_dtype(dtype)), seed=seed)


def uniform(shape, minval=0, maxval=None, dtype=float32, seed=None, name=None):
    """As ``tf.random.uniform``: floats in ``[minval, maxval)`` (``maxval`` defaults to 1); integer
    dtypes need ``maxval``, as in TensorFlow."""
    dtype = as_dtype(dtype)
    if dtype.is_integer:
        if maxval is None:
            raise ValueError(f"Must specify maxval for integer dtype {dtype.name}")
        return keras.random.randint(_shape(shape), minval=minval, maxval=maxval, dtype=str(dtype), seed=seed)
    return keras.random.uniform(_shape(shape), minval=minval, maxval=1 if maxval is None else maxval,
                                dtype=str(dtype), seed=seed)


def shuffle(value, seed=None, name=None):
    """As ``tf.random.shuffle``: ``value`` with its first axis in a random order."""
    from hpctrain.tfcompat.ops import convert_to_tensor

    return keras.random.shuffle(convert_to_tensor(value), axis=0, seed=seed)
