"""hpctrain: train neural networks as fast as the hardware allows, with the simplicity of Keras.

``import hpctrain as tf`` makes ``tf.keras.…`` work; PyTorch users use :class:`Trainer` directly.
"""

__version__ = "0.1.0"

from hpctrain import distribute, errors, keras  # noqa: E402
from hpctrain.engine import Trainer  # noqa: E402
from hpctrain.hardware import Plan, make_plan  # noqa: E402

__all__ = ["Plan", "Trainer", "__version__", "distribute", "errors", "keras", "make_plan"]
