"""Forward-only CAM == autograd Grad-CAM on the post-ReLU features (and != Grad-CAM on pre-ReLU norm5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr_node.analysis.cam import cam_from_features, forward_with_features, gradcam_autograd
from cxr_node.analysis.models import build_densenet
from cxr_node.analysis.preprocess import letterbox, map_to_source

SIZE = 96  # DenseNet-161 -> 3 x 3 feature grid: small and fast, still a real map


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_densenet("densenet161").eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, SIZE, SIZE, generator=g)


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    return cam / cam.flatten(1).amax(dim=1).clamp_min(1e-30)[:, None, None]


def gradcam_pre_relu(model, x, class_index):
    """What a hook on features[-1] (norm5, before torchvision's ReLU) computes."""
    with torch.enable_grad():
        pre = model.features(x)
        pre.retain_grad()
        logits = model.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(pre), 1), 1))
        logits[:, class_index].sum().backward()
        alpha = pre.grad.mean(dim=(2, 3))
        cam = F.relu(torch.einsum("bkhw,bk->bhw", pre.detach(), alpha))
    model.zero_grad(set_to_none=True)
    return _normalise(cam)


@pytest.mark.parametrize("class_index", [0, 1])
def test_cam_equals_autograd_gradcam_on_post_relu_features(model, images, class_index):
    with torch.inference_mode():
        feats, logits = forward_with_features(model, images)
        cam = cam_from_features(feats, model.classifier, class_index)
        reference_logits = model(images)
    reference = gradcam_autograd(model, images.clone(), class_index)
    model.zero_grad(set_to_none=True)
    assert torch.allclose(logits, reference_logits, atol=1e-5)  # same forward as torchvision's
    assert cam.shape == reference.shape == (2, 3, 3)
    assert torch.allclose(cam, reference, atol=1e-5), (cam - reference).abs().max()


def test_pre_relu_norm5_gradcam_is_a_different_map(model, images):
    with torch.inference_mode():
        feats, _ = forward_with_features(model, images)
        cam = cam_from_features(feats, model.classifier, 1)
    pre = gradcam_pre_relu(model, images.clone(), 1)
    # Not a rescaling of the same map: the masked gradient and the negative norm5 values change it.
    assert (cam - pre).abs().max() > 0.05


def test_cam_shape_and_range(model, images):
    with torch.inference_mode():
        feats, _ = forward_with_features(model, images)
        cam = cam_from_features(feats, model.classifier, 1)
    assert cam.dtype == torch.float32
    assert cam.min() >= 0.0
    assert torch.allclose(cam.flatten(1).amax(dim=1), torch.ones(2))


def test_cam_of_all_negative_scores_is_zero_not_nan():
    feats = torch.ones(1, 4, 2, 2)
    head = torch.nn.Linear(4, 2)
    with torch.no_grad():
        head.weight.fill_(-1.0)
    cam = cam_from_features(feats, head, 1)
    assert torch.all(cam == 0)


def test_map_to_source_undoes_the_letterbox():
    rows, cols = 120, 200  # landscape: padding above and below
    src = np.zeros((rows, cols), np.float32)
    src[20:40, 150:180] = 1.0  # a bright patch off centre
    square, box = letterbox(src, 64)
    assert box.top > 0 and box.left == 0
    back = map_to_source(square, box)  # a "CAM" over the square input
    assert back.shape == (rows, cols)
    r, c = np.unravel_index(np.argmax(back), back.shape)
    assert 15 <= r <= 45 and 145 <= c <= 185
    assert back[:, :100].max() < 0.05  # nothing leaks to the other half
