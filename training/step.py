"""One plain optimisation step (forward under autocast, loss, backward, SGD), as torchvision's
reference loop takes it. It returns the loss and the number of correct predictions as device
tensors, so the loop never waits for the device. training/fast/step.py adds the compiled and
CUDA-graph forms of the same step (run.step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def autocast_for(device: torch.device, amp: bool, cache: bool = True):
    """bf16 autocast on CUDA when run.amp is on; a disabled context otherwise."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return torch.autocast("cpu", enabled=False)


Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """bf16 autocast logits in float32 for the loss; float64 stays float64 (the exactness tests)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def classification_objective(label_smoothing: float) -> Objective:
    """(logits (B, C), targets (B,)) -> (loss to minimise, loss to report, correct predictions)."""

    def objective(logits: torch.Tensor, y: torch.Tensor):
        loss = F.cross_entropy(at_least_float32(logits), y, label_smoothing=label_smoothing)
        return loss, loss.detach(), (logits.detach().argmax(1) == y).sum()

    return objective


class Step:
    """step(x, y) -> (loss, correct) device tensors; set_lr(lr) before an epoch. `objective`
    (default: cross-entropy of one model) says what is minimised and what is reported."""

    mode = "eager"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        device: torch.device,
        amp: bool,
        label_smoothing: float,
        objective: Objective | None = None,
    ) -> None:
        self.model, self.optimizer, self.device, self.amp = model, optimizer, device, amp
        self.label_smoothing = label_smoothing
        self.objective = objective or classification_objective(label_smoothing)
        self.lr = optimizer.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.lr = lr

    def _eager(self, forward, x, y, set_to_none: bool = True):
        with autocast_for(self.device, self.amp):
            logits = forward(x)
        loss, reported, correct = self.objective(logits, y)
        self.optimizer.zero_grad(set_to_none=set_to_none)
        loss.backward()
        self.optimizer.step()
        return reported, correct

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._eager(self.model, x, y)


__all__ = ["Objective", "Step", "at_least_float32", "autocast_for", "classification_objective"]
