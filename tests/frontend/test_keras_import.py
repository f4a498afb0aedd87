"""What importing Keras through hpctrain costs and leaves behind."""

import importlib.util
import subprocess
import sys

import pytest

PROGRAM = """
import sys
import hpctrain as tf
tf.keras.Sequential, tf.keras.callbacks.ModelCheckpoint
print("jax imported with keras:", "jax" in sys.modules)
import jax
print("jax after:", float(jax.numpy.ones(3).sum()))
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_keras_is_imported_without_jax_which_stays_importable():
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["jax imported with keras: False", "jax after: 3.0"]
