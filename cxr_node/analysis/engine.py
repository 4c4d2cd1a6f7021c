"""Batched analysis: float images -> probabilities of A and B, joint class, CAMs on the source grid."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from cxr_node.analysis.bundle import Bundle
from cxr_node.analysis.cam import cam_from_features, forward_with_features
from cxr_node.analysis.fusion import JointResult, joint_rule
from cxr_node.analysis.preprocess import Letterbox, map_to_source, to_model_input

POSITIVE = 1  # index of the positive class in both heads (abnormal for A, COVID for B)


@dataclass
class Analysis:
    result: JointResult
    cam_a: np.ndarray  # (rows, cols) float32 in [0, 1] on the source grid
    cam_b: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, batch share


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available")
    return device


class Analyzer:
    """Holds both models loaded on one device; analyse() takes any number of images at once."""

    def __init__(self, bundle: Bundle, device: str = "auto") -> None:
        self.bundle = bundle
        self.device = pick_device(device)
        # channels_last lets oneDNN / cuDNN pick their fastest convolution layouts.
        self.model_a = bundle.model_a.to(self.device, memory_format=torch.channels_last).eval()
        self.model_b = bundle.model_b.to(self.device, memory_format=torch.channels_last).eval()
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None

    def _run(self, model, x):
        if self.autocast_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                return forward_with_features(model, x)
        return forward_with_features(model, x)

    @torch.inference_mode()
    def analyse(self, images: list[np.ndarray]) -> list[Analysis]:
        if not images:
            return []
        n = len(images)
        t0 = time.perf_counter()
        inputs, boxes = [], []
        for img in images:
            tensor, box = to_model_input(img, self.bundle.input_size)
            inputs.append(tensor)
            boxes.append(box)
        x = torch.from_numpy(np.stack(inputs)).to(self.device).contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()

        feats_a, logits_a = self._run(self.model_a, x)
        p_abn = torch.softmax(logits_a.float(), dim=1)[:, POSITIVE]
        self._sync()
        t2 = time.perf_counter()
        feats_b, logits_b = self._run(self.model_b, x)
        p_cov = torch.softmax(logits_b.float(), dim=1)[:, POSITIVE]
        self._sync()
        t3 = time.perf_counter()

        cams_a = cam_from_features(feats_a, self.model_a.classifier, POSITIVE).cpu().numpy()
        cams_b = cam_from_features(feats_b, self.model_b.classifier, POSITIVE).cpu().numpy()
        p_abn, p_cov = p_abn.cpu().numpy(), p_cov.cpu().numpy()
        out = []
        for i, box in enumerate(boxes):
            out.append(
                Analysis(
                    result=joint_rule(float(p_abn[i]), float(p_cov[i]), self.bundle.thresholds),
                    cam_a=map_to_source(cams_a[i], box),
                    cam_b=map_to_source(cams_b[i], box),
                )
            )
        t4 = time.perf_counter()
        share = {
            "preprocess": (t1 - t0) / n,
            "model_a": (t2 - t1) / n,
            "model_b": (t3 - t2) / n,
            "cams": (t4 - t3) / n,
        }
        for a in out:
            a.timings = dict(share)
        return out

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


__all__ = ["Analysis", "Analyzer", "Letterbox", "pick_device"]
