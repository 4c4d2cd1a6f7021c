"""One optimisation step (forward, loss, backward, SGD) in one of three forms, all returning the
loss and the number of correct predictions as device tensors, so the loop never waits for the GPU:

  * eager        - plain PyTorch: the research core's step (training/step.py), used as it is;
  * compile      - the model under torch.compile (mode "reduce-overhead", i.e. CUDA graphs via
                   Inductor, on CUDA; Inductor's default on the CPU); the optimizer stays eager;
  * cuda_graphs  - the whole step, SGD included, captured once in a CUDA graph and replayed
                   (batch 4 of DenseNet-161 is launch-bound: ~1,500 small kernels per step).

A form that fails to build falls back to eager with a log line, leaving the weights as they were.
CUDA graphs replay full batches only; a short last batch of an epoch runs eagerly on the same
tensors. The graph bakes the learning rate in, so a new rate (schedule) is captured anew.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from training.step import Objective, Step, autocast_for

WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuDNN/allocator warm-up, momentum buffers)


def resolve_mode(requested: str, device: torch.device, ddp: bool) -> tuple[str, str]:
    """(mode, why) for run.step on this device."""
    if requested == "auto":
        if device.type == "cuda" and not ddp:
            return "cuda_graphs", "auto: CUDA"
        return "eager", "auto: " + ("DDP" if ddp else "no CUDA")
    if requested == "cuda_graphs" and device.type != "cuda":
        return "eager", "run.step = cuda_graphs needs CUDA"
    if requested == "cuda_graphs" and ddp:
        return "eager", "run.step = cuda_graphs is not combined with DDP (NCCL all-reduce inside the graph)"
    return requested, "run.step"


class TrainStep(Step):
    """The plain step (training.step) in the form run.step asks for; the same call and set_lr."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        mode: str,
        device: torch.device,
        amp: bool,
        label_smoothing: float,
        log: Callable[[str], None],
        label: str = "",
        objective: Objective | None = None,
    ) -> None:
        super().__init__(model, optimizer, device=device, amp=amp, label_smoothing=label_smoothing, objective=objective)
        self.log, self.label = log, label
        self.mode = mode
        self._forward: Callable[..., torch.Tensor] = model  # the module, or its torch.compile wrapper
        if mode == "compile":
            self._forward = torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else "default")
        self._first = True
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_lr: float | None = None
        self._warm = 0
        self._static: dict[str, torch.Tensor] = {}

    # -- forms --------------------------------------------------------------------------------
    def _fallback(self, exc: BaseException, snapshot) -> None:
        self.log(
            f"{self.label}: run.step = {self.mode} failed ({type(exc).__name__}: {str(exc)[:200]}); continuing eagerly"
        )
        if snapshot is not None:
            self.model.load_state_dict(snapshot[0])
            self.optimizer.load_state_dict(snapshot[1])
        self.mode, self._forward, self._graph = "eager", self.model, None
        self.optimizer.zero_grad(set_to_none=True)

    def _snapshot(self):
        # what a failed first compiled call could have touched (BatchNorm running statistics)
        return (
            {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            _clone_state(self.optimizer.state_dict()),
        )

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "eager":
            return self._eager(self.model, x, y)
        if self.mode == "compile":
            if self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            if not self._first:
                return self._eager(self._forward, x, y)
            snapshot = self._snapshot()
            try:
                out = self._eager(self._forward, x, y)
                self._first = False
                return out
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
                self._fallback(exc, snapshot)
                return self._eager(self.model, x, y)
        return self._graph_step(x, y)

    # -- CUDA graphs ------------------------------------------------------------------------
    def _graph_step(self, x, y):
        if self._warm < WARMUP_STEPS:  # real training steps, on a side stream as capture requires
            self._warm += 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                out = self._eager(self.model, x, y)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return out
        if self._graph is not None and x.shape != self._static["x"].shape:
            return self._eager(self.model, x, y, set_to_none=False)  # short last batch: grads stay put
        if self._graph is None or self._graph_lr != self.lr:
            try:
                self._capture(x, y)
            except Exception as exc:  # noqa: BLE001 - capture does not run the step: nothing to undo
                self._fallback(exc, None)
                return self._eager(self.model, x, y)
        self._static["x"].copy_(x)
        self._static["y"].copy_(y)
        assert self._graph is not None  # captured above, or we returned eagerly
        self._graph.replay()
        return self._static["loss"].clone(), self._static["correct"].clone()

    def _capture(self, x, y) -> None:
        self._graph = None
        self._static = {"x": x.clone(), "y": y.clone()}
        self.optimizer.zero_grad(set_to_none=True)  # grads are allocated inside the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            with autocast_for(self.device, self.amp, cache=False):
                logits = self.model(self._static["x"])
            loss, reported, correct = self.objective(logits, self._static["y"])
            loss.backward()
            self.optimizer.step()
            self._static["loss"], self._static["correct"] = reported, correct
        self._graph, self._graph_lr = graph, self.lr
        self.log(f"{self.label}: training step captured in a CUDA graph (batch {x.shape[0]}, lr {self.lr:g})")


def make_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg,
    device: torch.device,
    *,
    log: Callable[[str], None],
    label: str = "",
    ddp: bool = False,
    objective: Objective | None = None,
) -> tuple[TrainStep, str]:
    """The TrainStep a training config asks for on this device (run.step, run.amp,
    optim.label_smoothing), and why that form was chosen."""
    mode, why = resolve_mode(cfg.run.step, device, ddp)
    step = TrainStep(
        model,
        optimizer,
        mode=mode,
        device=device,
        amp=cfg.run.amp,
        label_smoothing=cfg.optim.label_smoothing,
        log=log,
        label=label,
        objective=objective,
    )
    return step, why


def _clone_state(state):
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: _clone_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_clone_state(v) for v in state]
    return state
