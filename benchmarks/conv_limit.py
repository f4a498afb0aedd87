"""The convnet's kernel limit: only its convolutions and matrix products, back to back.

Per training step of the Keras MNIST convnet (batch B, channels-last memory as Keras's NHWC):

    conv1  forward; weight and bias gradients (the images need no gradient)
    conv2  forward; input, weight and bias gradients
    Dense  forward product; weight-gradient and input-gradient products

and per epoch the validation rows' forward convolutions and product. Nothing else: no pooling,
activation, dropout, loss, optimizer, metrics or batch gather. The convolutions are PyTorch's CPU
kernels (``aten.convolution`` / ``aten.convolution_backward``, oneDNN), each on the faster of two
kernel layouts timed before the epochs (Keras's (k, k, in, out) read as a view, or a channels-last
copy); their outputs are new tensors, so those allocations count. Operands are made once; inputs
of each layer have the shape pooling would give, their values random.
"""

from __future__ import annotations

import torch

from torch_common import fastest_call

KERNEL = 3
CHANNELS = (32, 64)


def _images(rows: int, height: int, width: int, channels: int) -> torch.Tensor:
    return torch.rand(rows, height, width, channels).permute(0, 3, 1, 2)  # NCHW view of NHWC memory


class ConvLayer:
    """One convolution's forward and backward calls on fixed operands."""

    def __init__(self, rows: int, size: int, channels_in: int, channels_out: int, needs_input_grad: bool):
        self.input = _images(rows, size, size, channels_in)
        keras_kernel = torch.randn(KERNEL, KERNEL, channels_in, channels_out) / (KERNEL * KERNEL * channels_in) ** 0.5
        self.weight = keras_kernel.permute(3, 2, 0, 1)
        self.bias = torch.zeros(channels_out)
        self.output_size = size - KERNEL + 1
        self.grad_output = _images(rows, self.output_size, self.output_size, channels_out)
        self.mask = [needs_input_grad, True, True]

    def forward(self, weight=None):
        return torch.ops.aten.convolution(self.input, self.weight if weight is None else weight, self.bias,
                                          [1, 1], [0, 0], [1, 1], False, [0, 0], 1)

    def backward(self, weight=None):
        return torch.ops.aten.convolution_backward(
            self.grad_output, self.input, self.weight if weight is None else weight, [self.bias.shape[0]],
            [1, 1], [0, 0], [1, 1], False, [0, 0], 1, self.mask)

    def use_faster_weight_layout(self) -> None:
        """Keras's kernel read as a view, or copied to channels-last: whichever steps faster."""
        candidates = (self.weight, self.weight.contiguous(memory_format=torch.channels_last))
        calls = [lambda weight=weight: (self.forward(weight), self.backward(weight)) for weight in candidates]
        self.weight = candidates[fastest_call(*calls)]


def convnet_schedule(workload) -> list[list]:
    """One list of no-argument kernel calls per step of an epoch (a partial last batch included),
    then the validation batches' forward calls as one more list."""
    height, _, channels = workload.input_shape
    pooled1 = (height - KERNEL + 1) // 2
    flat = CHANNELS[1] * ((pooled1 - KERNEL + 1) // 2) ** 2

    def step_calls(rows: int, training: bool) -> list:
        conv1 = ConvLayer(rows, height, channels, CHANNELS[0], needs_input_grad=False)
        conv2 = ConvLayer(rows, pooled1, CHANNELS[0], CHANNELS[1], needs_input_grad=True)
        conv1.use_faster_weight_layout()
        conv2.use_faster_weight_layout()
        features, weight = torch.rand(rows, flat), torch.rand(flat, workload.num_classes) / flat
        logits, grad_logits = torch.empty(rows, workload.num_classes), torch.rand(rows, workload.num_classes)
        weight_grad, feature_grad = torch.empty_like(weight), torch.empty_like(features)
        calls = [conv1.forward, conv2.forward, lambda: torch.mm(features, weight, out=logits)]
        if training:
            calls += [lambda: torch.mm(features.T, grad_logits, out=weight_grad),
                      lambda: torch.mm(grad_logits, weight.T, out=feature_grad), conv2.backward, conv1.backward]
        return calls

    def batches(rows: int) -> list[int]:
        full, remainder = divmod(rows, workload.batch_size)
        return [workload.batch_size] * full + ([remainder] if remainder else [])

    training_rows = workload.num_samples - int(workload.num_samples * workload.validation_split)
    made: dict[tuple[int, bool], list] = {}
    schedule = [made.setdefault((rows, True), step_calls(rows, True)) for rows in batches(training_rows)]
    validation = [call for rows in batches(workload.num_samples - training_rows)
                  for call in made.setdefault((rows, False), step_calls(rows, False))]
    return schedule + ([validation] if validation else [])
