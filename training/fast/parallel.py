"""`run.parallel = N`: the protocol's trainings (repetitions x models A and B) as N processes
side by side on one device.

At the paper's batch of 4 one DenseNet-161 leaves a GPU mostly idle (launch-bound), so N
independent trainings share it far better than one. Each job is one `fit` call, exactly what
the sequential path runs: the same datasets, seed, checkpoint stem and fingerprint, so its
`<stem>.final.pt` is what the sequential path would have written; the pipeline then finds the
finished models and goes on as if it had trained them itself (resume works the same way).

Workers are spawned (CUDA cannot be forked), share the decoded squares through a memory-mapped
.npy file, log to train.log, and each uses cpu_count / N intra-op threads.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch

from training.config import TrainConfig
from training.determinism import apply_determinism
from training.distributed import DistEnv
from training.fast.engine import ENGINE
from training.loop import FitJob, run_fit


def _worker_init(threads: int, deterministic: bool, device: str) -> None:
    torch.set_num_threads(threads)
    apply_determinism(deterministic)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))


def _worker(
    job: FitJob,
    cfg: TrainConfig,
    squares_path: str,
    weights: Path | None,
    device: str,
    fingerprint: str,
    log_path: str | None,
) -> tuple[str, int]:
    from training.runlog import RunLog

    squares = np.load(squares_path, mmap_mode="r")
    result = run_fit(
        job,
        cfg=cfg,
        squares=squares,
        weights=weights,
        device=torch.device(device),
        env=DistEnv(),
        fingerprint=fingerprint,
        log=RunLog(Path(log_path) if log_path else None, True),
        engine=ENGINE,
    )
    return job.label, result.best_epoch


def run_parallel(
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
    processes: int,
) -> None:
    """Train every unfinished job, `processes` at a time, longest first; raise the first failure."""
    todo = sorted((j for j in jobs if not j.final_path.is_file()), key=lambda j: -len(j.train_idx))
    if not todo:
        return
    processes = min(processes, len(todo))
    threads = max(1, (os.cpu_count() or 1) // processes)
    squares_path = workdir / f"squares-{fingerprint}.npy"
    np.save(squares_path, squares)
    log(f"run.parallel = {processes}: {len(todo)} training(s) side by side on {device}, {threads} CPU thread(s) each")
    try:
        pool = ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(threads, cfg.run.deterministic, str(device)),
        )
        with pool:
            futures = [
                pool.submit(
                    _worker,
                    j,
                    cfg,
                    str(squares_path),
                    weights,
                    str(device),
                    fingerprint,
                    str(log_path) if log_path else None,
                )
                for j in todo
            ]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            errors = [exc for f in done if (exc := f.exception()) is not None]
            if errors:
                for f in futures:
                    f.cancel()  # queued ones; running ones finish (their checkpoints stay resumable)
                raise errors[0]
    finally:
        squares_path.unlink(missing_ok=True)
