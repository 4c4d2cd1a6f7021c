"""The one way into the performance layer: `ENGINE`, handed to `training.loop.fit` for run.step's
compiled and CUDA-graph forms (step.py) and the device input path (device_data.py), and asked by
the pipeline and the bench to run run.parallel trainings side by side (parallel.py, grouped_fit.py),
so that the plain loop knows none of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from training.fast.device_data import device_or_loader_batches
from training.fast.step import make_step
from training.loop import Engine

if TYPE_CHECKING:
    import numpy as np
    import torch

    from training.config import TrainConfig
    from training.loop import FitJob


@dataclass(frozen=True)
class FastEngine(Engine):
    def side_by_side(
        self,
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


ENGINE = FastEngine(make_step, device_or_loader_batches)

__all__ = ["ENGINE", "FastEngine"]
