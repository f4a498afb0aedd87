"""Hand-tuned PyTorch: one resident tensor, randperm + index gather, fused Adam.

Images are permuted to NCHW once, up front, as a PyTorch user would store them (with
``--channels-last``, NCHW tensors in channels-last memory, model too: oneDNN's preferred layout);
with a validation split the held-out rows are evaluated after every epoch, inside its time.
``--compile`` wraps the model in ``torch.compile`` (its compile time falls in the first epoch).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import EpochClock, child_arg_parser, emit_result, make_dataset, selected_workload  # noqa: E402
from torch_common import build_model, configure_torch, torch_details  # noqa: E402


def train_one_epoch(model, x, labels, batch_size, optimizer):
    """Returns (loss sum, correct count) as tensors; read only at epoch end to avoid syncs."""
    model.train()
    loss_sum = torch.zeros(())
    correct = torch.zeros((), dtype=torch.int64)
    # One permutation per epoch; slicing it is cheap, and the gather x[idx]
    # replaces DataLoader's per-sample indexing and collate.
    order = torch.randperm(x.shape[0])
    for start in range(0, x.shape[0], batch_size):
        idx = order[start : start + batch_size]
        inputs, targets = x[idx], labels[idx]
        logits = model(inputs)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            loss_sum.add_(loss.detach(), alpha=targets.shape[0])
            correct.add_((logits.argmax(dim=1) == targets).sum())
    return loss_sum, correct


@torch.no_grad()
def validate(model, x, labels, batch_size=1000):
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        logits = model(x[start:start + batch_size])
        targets = labels[start:start + batch_size]
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        correct += (logits.argmax(dim=1) == targets).sum().item()
    return loss_sum / x.shape[0], correct / x.shape[0]


def main() -> None:
    parser = child_arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--channels-last", action="store_true", help="images and model in channels-last memory")
    parser.add_argument("--compile", action="store_true", help="train torch.compile(model)")
    parser.add_argument("--name", default="torch_handtuned")
    args = parser.parse_args()
    workload = selected_workload(args)
    threads = configure_torch()
    x_np, labels_np, _y_onehot = make_dataset(workload)
    x, labels = torch.from_numpy(x_np), torch.from_numpy(labels_np)
    if x.dim() == 4:
        layout = torch.channels_last if args.channels_last else torch.contiguous_format
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=layout)
    train = workload.train_samples
    x, x_val, labels, labels_val = x[:train], x[train:], labels[:train], labels[train:]

    model = build_model(workload)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # fused=True: one kernel updates all parameters instead of a loop of small ops.
    optimizer = torch.optim.Adam(model.parameters(), lr=workload.learning_rate, fused=True)

    if args.compile:
        model = torch.compile(model)  # after the optimizer took the parameters, which it shares
    clock = EpochClock()
    for _ in range(args.epochs):
        clock.begin_epoch()
        loss_sum, correct = train_one_epoch(model, x, labels, workload.batch_size, optimizer)
        epoch_loss = loss_sum.item() / train
        epoch_accuracy = correct.item() / train
        if len(x_val):
            validate(model, x_val, labels_val)
        clock.end_epoch()

    emit_result(args.name, workload, clock, epoch_loss, epoch_accuracy, channels_last=args.channels_last,
                torch_compile=args.compile, **torch_details(threads))


if __name__ == "__main__":
    main()
