"""The reference for framework overhead: a minimal plain-PyTorch training loop.

Same network, optimizer, batch size and data as the Lightning path (the model and optimizer come
from the same Hydra config), the data as uint8 tensors in memory, and the same per-step work a
Keras `fit` does: forward, cross-entropy, backward, optimizer step, running loss and accuracy.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def plain_epoch_seconds(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    steps: int,
    epochs: int,
    device: str | torch.device = "cpu",
) -> list[float]:
    """Train for `epochs` epochs of `steps` shuffled batches; return each epoch's wall time."""
    model.to(device).train()
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(labels), device=images.device)  # no host-to-device copy per step
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for step in range(steps):
            index = order[step * batch_size : (step + 1) * batch_size]
            x = images[index].to(device, non_blocking=True).float().div_(255)
            y = labels[index].to(device, non_blocking=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            correct += (logits.argmax(dim=1) == y).sum()
        float(loss_sum)  # one sync per epoch, like Lightning's epoch-end logging
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds
