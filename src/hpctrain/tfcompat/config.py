"""``tf.config``: the device queries tutorials print, answered from torch.

``list_physical_devices("GPU")`` lists the CUDA devices torch sees, so the usual
``len(tf.config.list_physical_devices("GPU"))`` counts them. Memory growth has no meaning for
torch's caching allocator (it already grows on demand): ``set_memory_growth`` accepts the call and
does nothing.
"""

from __future__ import annotations

import collections
import types

import torch

PhysicalDevice = collections.namedtuple("PhysicalDevice", ["name", "device_type"])


def list_physical_devices(device_type=None) -> list:
    """As ``tf.config.list_physical_devices``: ``"CPU"`` (one), ``"GPU"`` (each CUDA device), or both."""
    devices = [PhysicalDevice("/physical_device:CPU:0", "CPU")]
    if torch.cuda.is_available():
        devices += [PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(torch.cuda.device_count())]
    if device_type is None:
        return devices
    return [d for d in devices if d.device_type == str(device_type).upper()]


def list_logical_devices(device_type=None) -> list:
    """The same devices (there is no logical splitting here), named as logical devices."""
    return [PhysicalDevice(d.name.replace("/physical_device:", "/device:"), d.device_type)
            for d in list_physical_devices(device_type)]


def set_memory_growth(device, enable) -> None:
    """Accepted and ignored: torch's allocator takes GPU memory as it is needed."""


def get_memory_growth(device) -> bool:
    return True


def run_functions_eagerly(run_eagerly) -> None:
    """Accepted and ignored: ``tf.function`` always runs eagerly here."""


def functions_run_eagerly() -> bool:
    return True


experimental = types.SimpleNamespace(list_physical_devices=list_physical_devices,
                                     set_memory_growth=set_memory_growth, get_memory_growth=get_memory_growth)


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(f"hpctrain has no tf.config.{name}; use keras.config, or torch "
                         "(torch.set_num_threads, torch.cuda) for device settings.")
