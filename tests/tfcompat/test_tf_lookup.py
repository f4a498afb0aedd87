"""tf.<name> lookup: the supported surface, and the messages for names outside it."""

import pytest

import hpctrain
import hpctrain as tf
from hpctrain import tfcompat
from hpctrain.tfcompat import hints


def test_keras_and_distribute_are_hpctrains_own():
    import keras

    assert tf.keras is hpctrain.keras
    assert tf.keras.layers.Dense is keras.layers.Dense
    assert tfcompat.lookup("keras") is hpctrain.keras
    assert tf.distribute.MirroredStrategy is hpctrain.distribute.MirroredStrategy
    assert tf.distribute.MultiWorkerMirroredStrategy is hpctrain.distribute.MultiWorkerMirroredStrategy
    assert tfcompat.lookup("distribute") is hpctrain.distribute


def test_every_supported_name_resolves():
    for name in tfcompat.SUPPORTED_NAMES:
        assert getattr(tf, name) is tfcompat.lookup(name)
    assert tf.data.Dataset.__name__ == "Dataset"
    assert tf.GradientTape.__name__ == "GradientTape"


@pytest.mark.parametrize("name, message", [
    ("einsum", "hpctrain has no tf.einsum; use keras.ops.einsum (or torch.einsum)."),
    ("linspace", "hpctrain has no tf.linspace; use keras.ops.linspace (or torch.linspace)."),
    ("reverse", "hpctrain has no tf.reverse; use keras.ops.flip (or torch.flip)."),
    ("TensorShape", "hpctrain has no tf.TensorShape; use a tuple of ints (x.shape)."),
    ("reduce_std", "hpctrain has no tf.reduce_std; use tf.math.reduce_std."),
    ("Session", "hpctrain has no tf.Session: it provides only the TensorFlow names Keras tutorials use "
     "(see docs/tf-compat.md). Look for an equivalent in keras.ops (https://keras.io/api/ops/) or torch."),
    ("softmax_cross_entropy_with_logits_v3",
     "hpctrain has no tf.softmax_cross_entropy_with_logits_v3: it provides only the TensorFlow names Keras "
     "tutorials use (see docs/tf-compat.md). Look for an equivalent in keras.ops (https://keras.io/api/ops/) "
     "or torch."),
])
def test_missing_names_say_what_to_use(name, message):
    with pytest.raises(AttributeError) as error:
        getattr(tf, name)
    assert str(error.value) == message


def test_hasattr_is_false_for_missing_names():
    assert not hasattr(tf, "Session")
    assert hasattr(tf, "one_hot")


def test_the_keras_ops_named_in_the_table_exist():
    from hpctrain.keras import ops

    for name, text in hints._EQUIVALENTS.items():
        for word in text.replace(",", " ").replace("(", " ").replace(")", " ").split():
            if word.startswith("keras.ops.") and word.count(".") == 2:
                assert getattr(ops, word.split(".")[2], None) is not None, (name, word)
    for name in hints._TORCH_TWIN:
        assert hints.equivalent(name).startswith(f"keras.ops.{name}")


def test_nn_missing_name_points_at_keras_ops():
    with pytest.raises(AttributeError) as error:
        tf.nn.sparse_softmax_cross_entropy_with_logits
    assert str(error.value) == ("hpctrain has no tf.nn.sparse_softmax_cross_entropy_with_logits; use "
                                "keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True).")
    with pytest.raises(AttributeError) as error:
        tf.nn.conv2d
    assert str(error.value) == "hpctrain has no tf.nn.conv2d; use keras.ops.conv."
    with pytest.raises(AttributeError) as error:
        tf.nn.moments
    assert str(error.value) == "hpctrain has no tf.nn.moments; use keras.ops.moments."
    with pytest.raises(AttributeError) as error:
        tf.nn.fractional_max_pool
    assert str(error.value) == "hpctrain has no tf.nn.fractional_max_pool; use keras.ops (https://keras.io/api/ops/nn/)."


def test_version_is_the_keras_version():
    import keras

    assert tf.version.VERSION == keras.__version__
    assert tf.version.KERAS_VERSION == keras.__version__
    assert tf.version.HPCTRAIN_VERSION == hpctrain.__version__
    assert tf.executing_eagerly() is True
