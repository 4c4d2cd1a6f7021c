"""The training performance layer: what makes the protocol's 10 trainings fast on one GPU,
apart from the plain research core (data, splits, loop, metrics, report) that works without it.

  engine.py       ENGINE, the one way in: `fit(engine=ENGINE)` for one training's step and input
                  forms, `ENGINE.side_by_side(jobs, ...)` for run.parallel trainings at a time
  step.py         one optimisation step as eager, torch.compile or one CUDA graph (run.step)
  device_data.py  the training set on the device, augmented there (data.pipeline = "device")
  parallel.py     run.parallel = N trainings as N processes side by side on one device
  grouped.py      N DenseNet-161s as one grouped network; grouped_fit.py trains them in lockstep
  bench.py        `cxr-node bench train`: throughput and the projected protocol wall time

The research core imports nothing from here.
"""

from __future__ import annotations

from training.fast.engine import ENGINE

__all__ = ["ENGINE"]
