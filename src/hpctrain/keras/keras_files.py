"""What a Keras user saves is real Keras: optimizers written under their public, backend-neutral names.

(Named ``keras_files`` because ``hpctrain.keras.saving`` is Keras's own ``keras.saving``.)

On its torch backend, ``keras.optimizers.Adam(...)`` builds an instance of a torch-only subclass
(``keras.src.backend.torch.optimizers.torch_adam.Adam``; likewise AdamW, SGD, RMSprop, Adagrad,
Adadelta, Adamax, Lion, Nadam). Keras serializes an object under its public ``keras.*`` name only
when its class itself is exported, so these subclasses are written by module path::

    {"module": "keras.src.backend.torch.optimizers.torch_adam", "class_name": "Adam",
     "registered_name": "Adam", ...}

in ``model.get_compile_config()``, ``keras.optimizers.serialize`` and the ``config.json`` of a
``.keras`` file. Keras on another backend imports that torch module and trains with the torch
class, whose update fails on its arrays (``TypeError: expected Tensor ...``).

``install()`` gives each torch subclass the public name of the Keras optimizer it specializes, in
the table Keras's own serializer reads (the one ``keras_export`` fills for public classes), in one
direction only: serializing a torch Adam writes ``{"module": "keras.optimizers", "class_name":
"Adam", "registered_name": null}``, exactly what Keras on JAX or TensorFlow writes, while looking up
``keras.optimizers.Adam`` by name still gives the public class (whose constructor picks the torch
subclass on torch). Files written by Keras on torch before, with the module path, still load.
"""

from __future__ import annotations

import importlib
import pkgutil

_TORCH_OPTIMIZERS = "keras.src.backend.torch.optimizers"
_PUBLIC_PREFIX = "keras.optimizers."
_installed: dict[type, str] = {}


def public_names() -> dict[type, str]:
    """Each torch-only optimizer class and the public name it is written under."""
    return dict(_installed)


def _torch_subclasses() -> dict[type, str]:
    from keras.src import api_export

    package = importlib.import_module(_TORCH_OPTIMIZERS)
    found: dict[type, str] = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{_TORCH_OPTIMIZERS}.{info.name}")
        for value in vars(module).values():
            if not isinstance(value, type) or value.__module__ != module.__name__:
                continue
            if api_export.get_name_from_symbol(value) is not None:
                continue  # already written under a public name
            # The first exported optimizer it specializes: torch AdamW -> keras.optimizers.AdamW.
            public = next((name for name in map(api_export.get_name_from_symbol, value.__mro__[1:])
                           if name is not None and name.startswith(_PUBLIC_PREFIX)), None)
            if public is not None:
                found[value] = public
    return found


def install() -> None:
    """Write Keras's torch-only optimizer classes under their public names (idempotent)."""
    if _installed:
        return
    from keras.src import api_export

    for cls, public in _torch_subclasses().items():
        api_export.REGISTERED_OBJS_TO_NAMES.setdefault(cls, public)
        _installed[cls] = public
