"""Grad-CAM for a torchvision-compatible DenseNet (analysis.densenet) without a backward pass.

The DenseNet head is features -> ReLU -> global average pool -> Linear.
Take A = ReLU(features(x)) (shape K x H x W) and the class score
y_c = sum_k w_ck * mean_hw(A_k) + b_c. Its gradient with respect to A_k at every
position is w_ck / (H W), so Grad-CAM's channel weights are alpha_ck = w_ck / (H W)
and Grad-CAM_c = ReLU(sum_k alpha_ck A_k) = ReLU(CAM_c) / (H W): the class
activation map of Zhou et al. up to a positive scale. After normalising to [0, 1]
the two are identical, and this one costs one small matmul instead of a backward.
(tests/test_cam.py checks it against autograd.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _densenet_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The DenseNet's `features` and `classifier` (nn.Module's attribute lookup types them loosely)."""
    features, classifier = model.features, model.classifier
    assert isinstance(features, nn.Module) and isinstance(classifier, nn.Module), (
        "not a torchvision-compatible DenseNet"
    )
    return features, classifier


def densenet_classifier(model: nn.Module) -> nn.Linear:
    """The DenseNet's final Linear layer (the CAM's class weights)."""
    head = model.classifier
    assert isinstance(head, nn.Linear), "not a torchvision-compatible DenseNet"
    return head


def forward_with_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One DenseNet forward returning (post-ReLU features A, logits)."""
    features, classifier = _densenet_parts(model)
    feats = F.relu(features(x))
    pooled = torch.flatten(F.adaptive_avg_pool2d(feats, 1), 1)
    return feats, classifier(pooled)


def cam_from_features(feats: torch.Tensor, classifier: nn.Linear, class_index: int) -> torch.Tensor:
    """(B, K, H, W) post-ReLU features -> (B, H, W) CAM in [0, 1] for one class.

    Computed in float32 even when the forward ran under bf16/fp16 autocast (it is one
    K-vector product per position, negligible next to the forward).
    """
    weights = classifier.weight[class_index].float()
    cam = F.relu(torch.einsum("bkhw,k->bhw", feats.float(), weights))
    peak = cam.flatten(1).amax(dim=1).clamp_min(torch.finfo(cam.dtype).tiny)
    return cam / peak[:, None, None]


def gradcam_autograd(model: nn.Module, x: torch.Tensor, class_index: int) -> torch.Tensor:
    """Textbook Grad-CAM on the post-ReLU features with a real backward pass.

    The reference for tests and the "naive" pipeline of the benchmark; not used when serving.
    Returns (B, H, W) maps normalised to [0, 1] like cam_from_features.
    """
    features, classifier = _densenet_parts(model)
    with torch.enable_grad():
        feats = F.relu(features(x))
        feats.retain_grad()
        logits = classifier(torch.flatten(F.adaptive_avg_pool2d(feats, 1), 1))
        logits[:, class_index].sum().backward()
        assert feats.grad is not None  # retain_grad() above, and the backward reached feats
        alpha = feats.grad.mean(dim=(2, 3))  # (B, K)
        cam = F.relu(torch.einsum("bkhw,bk->bhw", feats.detach(), alpha))
    peak = cam.flatten(1).amax(dim=1).clamp_min(torch.finfo(cam.dtype).tiny)
    return cam / peak[:, None, None]
