"""The fast Engine for `training.loop.fit`: run.step's compiled and CUDA-graph forms (step.py)
and the device input path (device_data.py), injected so that the plain loop does not know them."""

from __future__ import annotations

from training.fast.device_data import device_or_loader_batches
from training.fast.step import make_step
from training.loop import Engine

ENGINE = Engine(make_step, device_or_loader_batches)

__all__ = ["ENGINE"]
