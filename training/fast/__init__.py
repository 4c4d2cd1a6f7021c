"""The training performance layer: what makes the protocol's 10 trainings fast on one GPU,
apart from the plain research core (data, splits, loop, metrics, report) that works without it.

  step.py         one optimisation step as eager, torch.compile or one CUDA graph (run.step)
  device_data.py  the training set on the device, augmented there (data.pipeline = "device")
  parallel.py     run.parallel = N trainings as N processes side by side on one device
  grouped.py      N DenseNet-161s as one grouped network; grouped_fit.py trains them in lockstep
  bench.py        `cxr-node bench train`: throughput and the projected protocol wall time

Two ways in, both for the pipeline (the bench uses the first): `train_side_by_side` runs
run.parallel trainings at a time, and `ENGINE` is handed to `training.loop.fit` for one training's
step forms and input path. The research core imports nothing from here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from training.fast.engine import ENGINE

if TYPE_CHECKING:
    import numpy as np
    import torch

    from training.config import TrainConfig
    from training.loop import FitJob


def train_side_by_side(
    jobs: list[FitJob],
    *,
    cfg: TrainConfig,
    squares: np.ndarray,
    workdir: Path,
    weights: Path | None,
    device: torch.device,
    fingerprint: str,
    log: Callable[[str], None],
    log_path: Path | None,
) -> None:
    """run.parallel > 1: every unfinished job, run.parallel at a time, as run.parallel_mode says;
    each leaves its `<stem>.final.pt` for the pipeline (or the bench) to read."""
    from training.determinism import apply_determinism
    from training.fast.grouped_fit import run_grouped
    from training.fast.parallel import run_parallel

    if cfg.run.parallel_mode == "grouped":
        apply_determinism(cfg.run.deterministic)  # grouped trains in this process; workers apply it themselves
        run_grouped(
            jobs,
            cfg=cfg,
            squares=squares,
            weights=weights,
            device=device,
            fingerprint=fingerprint,
            log=log,
            size=cfg.run.parallel,
        )
    else:
        run_parallel(
            jobs,
            cfg=cfg,
            squares=squares,
            workdir=workdir,
            weights=weights,
            device=device,
            fingerprint=fingerprint,
            log=log,
            log_path=log_path,
            processes=cfg.run.parallel,
        )


__all__ = ["ENGINE", "train_side_by_side"]
