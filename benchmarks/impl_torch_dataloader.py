"""Idiomatic PyTorch: TensorDataset + DataLoader and the textbook training loop."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from common import EpochClock, child_arg_parser, emit_result, make_dataset, selected_workload  # noqa: E402
from torch_common import build_mlp, configure_torch, torch_details  # noqa: E402


def train_one_epoch(model, loader, criterion, optimizer):
    """Returns (loss sum, correct count) as tensors; read only at epoch end to avoid syncs."""
    model.train()
    loss_sum = torch.zeros(())
    correct = torch.zeros((), dtype=torch.int64)
    for inputs, targets in loader:
        optimizer.zero_grad()
        logits = model(inputs)
        loss = criterion(logits, targets)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            loss_sum += loss * targets.shape[0]
            correct += (logits.argmax(dim=1) == targets).sum()
    return loss_sum, correct


def main() -> None:
    args = child_arg_parser(__doc__).parse_args()
    workload = selected_workload(args)
    threads = configure_torch()
    x, labels, _y_onehot = make_dataset(workload)

    dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(labels))
    loader = DataLoader(dataset, batch_size=workload.batch_size, shuffle=True)
    model = build_mlp(workload)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=workload.learning_rate)

    clock = EpochClock()
    for _ in range(args.epochs):
        clock.begin_epoch()
        loss_sum, correct = train_one_epoch(model, loader, criterion, optimizer)
        epoch_loss = loss_sum.item() / workload.num_samples
        epoch_accuracy = correct.item() / workload.num_samples
        clock.end_epoch()

    emit_result("torch_dataloader", workload, clock, epoch_loss, epoch_accuracy, **torch_details(threads))


if __name__ == "__main__":
    main()
