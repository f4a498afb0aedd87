"""``tf.version``: which TensorFlow API this stands for.

``VERSION`` is the version of the Keras release the surface runs on (e.g. ``"3.15.1"``), not a
TensorFlow version: the TensorFlow names here are those Keras 3 tutorials use, and Keras is what
actually runs. ``KERAS_VERSION`` says the same; ``HPCTRAIN_VERSION`` is hpctrain's own.
"""

from __future__ import annotations

import hpctrain
from hpctrain.keras import __version__ as KERAS_VERSION

VERSION = KERAS_VERSION
HPCTRAIN_VERSION = hpctrain.__version__
GIT_VERSION = "unknown"
