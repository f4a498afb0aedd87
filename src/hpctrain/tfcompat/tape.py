"""``tf.GradientTape`` on torch autograd, and ``tf.function`` (which runs the function as written).

Torch records every operation on tensors that require grad, so the tape does not record anything
itself: inside ``with tf.GradientTape() as tape:`` gradient recording is switched on (even under
``torch.no_grad()``), ``tape.watch(x)`` makes a plain tensor require grad, and ``tape.gradient``
asks torch autograd for the gradients of the recorded graph.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from hpctrain.keras import tree


def _as_torch(source):
    """The torch tensor behind a source: a Keras variable's value, or the tensor itself."""
    value = getattr(source, "value", source)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"tape.gradient sources must be Keras variables or torch tensors; got {type(source).__name__}.")
    return value


class GradientTape:
    """As ``tf.GradientTape``; ``persistent=True`` allows several ``gradient`` calls."""

    def __init__(self, persistent: bool = False, watch_accessed_variables: bool = True):
        self.persistent = persistent
        self.watch_accessed_variables = watch_accessed_variables
        self._grad_mode = None
        self._watched: list[torch.Tensor] = []
        self._used = False

    def __enter__(self):
        self._grad_mode = torch.enable_grad()
        self._grad_mode.__enter__()
        return self

    def __exit__(self, *exc_info):
        self._grad_mode.__exit__(*exc_info)
        self._grad_mode = None
        return False

    def watch(self, tensor) -> None:
        """Record operations on ``tensor`` (torch tensors, or a nested structure of them).

        A floating-point leaf tensor is made to require grad (until a non-persistent tape's
        gradient is taken); tensors and variables that already require grad need no watching."""
        for item in tree.flatten(tensor):
            value = _as_torch(item)
            if value.requires_grad:
                continue
            if not value.is_leaf or not (value.is_floating_point() or value.is_complex()):
                raise ValueError("tape.watch needs a floating-point tensor created outside the tape's computation "
                                 f"(got a {value.dtype} {'leaf' if value.is_leaf else 'computed'} tensor).")
            value.requires_grad_(True)
            self._watched.append(value)

    @contextlib.contextmanager
    def stop_recording(self):
        """Operations inside are not recorded (as ``tape.stop_recording()``)."""
        with torch.no_grad():
            yield

    def reset(self) -> None:
        """Forget the watched tensors (the graph itself belongs to the tensors computed)."""
        self._release_watched()

    def gradient(self, target, sources, output_gradients=None, unconnected_gradients="none"):
        """Gradients of ``target`` (summed over its elements and, for a structure, over its
        tensors) with respect to ``sources``, in the structure of ``sources``.

        A source that ``target`` does not depend on gets None (or zeros with
        ``unconnected_gradients="zero"``), as in TensorFlow."""
        if self._used and not self.persistent:
            raise RuntimeError("A non-persistent GradientTape can only be used to compute one set of "
                               "gradients (or jacobians)")
        self._used = True
        targets = [torch.as_tensor(t) for t in tree.flatten(target)]
        inputs = [_as_torch(s) for s in tree.flatten(sources)]
        if output_gradients is None:
            grad_outputs = [torch.ones_like(t) for t in targets]
        else:
            grad_outputs = [torch.as_tensor(g, dtype=t.dtype, device=t.device)
                            for g, t in zip(tree.flatten(output_gradients), targets)]
        recorded = [i for i, t in enumerate(targets) if t.requires_grad]  # others depend on no source
        targets, grad_outputs = [targets[i] for i in recorded], [grad_outputs[i] for i in recorded]
        differentiable = [i for i, x in enumerate(inputs) if x.requires_grad] if targets else []
        found = torch.autograd.grad(targets, [inputs[i] for i in differentiable], grad_outputs=grad_outputs,
                                    retain_graph=self.persistent, allow_unused=True) if differentiable else ()
        grads = [None] * len(inputs)
        for index, grad in zip(differentiable, found):
            grads[index] = grad
        if str(unconnected_gradients).lower().endswith("zero"):
            grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
        if not self.persistent:
            self._release_watched()
        return tree.pack_sequence_as(sources, grads)

    def _release_watched(self) -> None:
        for value in self._watched:
            value.requires_grad_(False)
        self._watched = []


def function(func=None, *, input_signature=None, autograph=True, jit_compile=None, reduce_retracing=False,
             experimental_relax_shapes=None, name=None):
    """As ``@tf.function`` / ``@tf.function(jit_compile=True)``, except that nothing is compiled:
    the function runs as written, eagerly, on every call; the arguments are accepted and ignored.
    (Keras's own ``jit_compile`` in ``model.compile`` is where compilation is chosen.)"""

    def decorate(f):
        @functools.wraps(f)
        def run(*args, **kwargs):
            return f(*args, **kwargs)

        run.python_function = f
        return run

    return decorate if func is None else decorate(func)
