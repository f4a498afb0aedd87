"""The real Keras 3, on its PyTorch backend, trained by the hpctrain engine.

``from hpctrain import keras`` and ``from hpctrain.keras.layers import Dense`` give Keras's own
modules and classes (``hpctrain.keras.Model is keras.Model``). Importing this package selects the
torch backend and installs the seam that runs ``fit``/``evaluate``/``predict`` on the engine
(:mod:`hpctrain.keras.seam`; ``use_engine(False)`` turns it off).
"""

from __future__ import annotations

import sys as _sys

from hpctrain.keras.backend_select import import_keras as _import_keras

_keras = _import_keras()

# Keras's public modules under this package's name, so that ``hpctrain.keras.layers`` and
# ``from hpctrain.keras.optimizers.schedules import CosineDecay`` are Keras's own objects.
for _name, _module in list(_sys.modules.items()):
    if _name.startswith("keras.") and not _name.startswith(("keras.src", "keras._tf_keras")):
        _sys.modules.setdefault("hpctrain." + _name, _module)
globals().update({name: getattr(_keras, name) for name in dir(_keras) if not name.startswith("__")})
__version__ = _keras.__version__

from hpctrain.keras.seam import install as _install_seam, use_engine as use_engine  # noqa: E402

_install_seam()
from hpctrain.keras.keras_files import install as _install_keras_files; _install_keras_files()  # noqa: E402,E702
