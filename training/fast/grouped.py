"""N DenseNets (DenseNet-161 in the paper's config) as one network: every layer of the N models runs as one grouped layer.

At the paper's batch of 4 one DenseNet-161 step is ~5,100 kernels that each fill a sliver of
a GPU; processes side by side time-share the device and do not overlap (docs/training.md).
Here the N models of `run.parallel` become one module whose every convolution has groups=N,
whose batch norms have N x C channels (per-channel statistics, so still per model) and whose
dense-block concatenations keep each model's channels together. One step then launches the
kernels of one model, each doing N models' work. Model n sees only its own batch: the input
is (N, B, 3, S, S), the output (N, B, classes), and no layer mixes groups.

Parameter and buffer names are torchvision's (analysis.densenet keeps them), and every grouped
tensor is the N models' tensors stacked along dim 0, so `member_state(n)` is model n's state dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

POINTWISE = ("conv", "matmul")  # how 1x1 convolutions run: grouped cuDNN convolution | batched GEMM


def gcat(parts: Sequence[torch.Tensor], groups: int) -> torch.Tensor:
    """Concatenate (B, N*c_i, H, W) tensors per group: (B, N*sum(c_i), H, W), model n's channels
    in the order of `parts`, as torch.cat(dim=1) does for one model."""
    b, _, h, w = parts[0].shape
    if parts[0].is_contiguous(memory_format=torch.channels_last) and not parts[0].is_contiguous():
        # (B, H, W, N, c) views of channels-last memory: one cat along the innermost dim
        views = [p.permute(0, 2, 3, 1).reshape(b, h, w, groups, -1) for p in parts]
        return torch.cat(views, dim=4).reshape(b, h, w, -1).permute(0, 3, 1, 2)
    views = [p.reshape(b, groups, -1, h, w) for p in parts]
    return torch.cat(views, dim=2).reshape(b, -1, h, w)


def _parts(modules: Sequence[nn.Module], name: str) -> list[Any]:
    """The same-named child of each member (typed Any: nn.Module's attribute lookup is untyped)."""
    return [getattr(m, name) for m in modules]


def _grouped_conv(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    c = convs[0]
    n = len(convs)
    g = nn.Conv2d(
        c.in_channels * n,
        c.out_channels * n,
        c.kernel_size,  # type: ignore[arg-type]  # a tuple, as Conv2d stores it
        stride=c.stride,  # type: ignore[arg-type]
        padding=c.padding,  # type: ignore[arg-type]
        groups=n,
        bias=c.bias is not None,
    )
    with torch.no_grad():
        g.weight.copy_(torch.cat(_parts(convs, "weight")))
        if g.bias is not None:
            g.bias.copy_(torch.cat(_parts(convs, "bias")))
    return g


def _grouped_linear(linears: Sequence[nn.Linear]) -> nn.Conv2d:
    """A Linear per model as one grouped 1x1 convolution on (B, N*F, 1, 1)."""
    lin = linears[0]
    g = nn.Conv2d(lin.in_features * len(linears), lin.out_features * len(linears), 1, groups=len(linears))
    with torch.no_grad():
        g.weight.copy_(torch.cat(_parts(linears, "weight"))[:, :, None, None])
        g.bias.copy_(torch.cat(_parts(linears, "bias")))  # type: ignore[union-attr]
    return g


class BatchedPointwise(nn.Module):
    """N per-model 1x1 convolutions (or Linears) as one batched matrix product.

    cuDNN runs a grouped convolution on channels-last tensors as one slice-copy plus one small
    kernel per group (nhwcSliceCKernel: a quarter of the grouped step's GPU time at N = 10, H200
    profile in docs/training.md). A 1x1 convolution is a matrix product per pixel, so here it is
    one strided batched GEMM over the N models (input read in place from channels-last memory)
    plus one copy that puts the result back in that layout. The weight keeps the grouped
    convolution's shape (N*O, C, 1, 1), so state dicts and member_state are unchanged."""

    def __init__(self, conv: nn.Conv2d, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.weight = conv.weight
        self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, nc, h, w = x.shape
        n = self.groups
        c, o = nc // n, self.weight.shape[0] // n
        if x.is_contiguous(memory_format=torch.channels_last):
            rows = x.permute(0, 2, 3, 1).reshape(b * h * w, n, c).transpose(0, 1)  # a view: (N, pixels, C)
        else:
            rows = x.reshape(b, n, c, h * w).permute(1, 0, 3, 2).reshape(n, b * h * w, c)
        y = torch.bmm(rows, self.weight.reshape(n, o, c).transpose(1, 2))  # (N, pixels, O)
        if self.bias is not None:
            y = y + self.bias.reshape(n, 1, o).to(y.dtype)
        return y.transpose(0, 1).reshape(b, h, w, n * o).permute(0, 3, 1, 2)  # channels-last (B, N*O, H, W)


def _pointwise(convs: Sequence[nn.Conv2d], pointwise: str) -> nn.Module:
    g = _grouped_conv(convs)
    return BatchedPointwise(g, len(convs)) if pointwise == "matmul" else g


def _grouped_bn(bns: Sequence[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    b = bns[0]
    g = nn.BatchNorm2d(b.num_features * len(bns), eps=b.eps, momentum=b.momentum)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(g, name).copy_(torch.cat([getattr(m, name) for m in bns]))
        g.num_batches_tracked.copy_(b.num_batches_tracked)  # type: ignore[union-attr, arg-type]
    return g


def _bn_relu(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    return F.relu(bn(x), inplace=True)


class _Layer(nn.Module):
    def __init__(self, layers: Sequence[nn.Module], groups: int, pointwise: str) -> None:
        super().__init__()
        self.groups = groups
        self.norm1 = _grouped_bn(_parts(layers, "norm1"))
        self.conv1 = _pointwise(_parts(layers, "conv1"), pointwise)
        self.norm2 = _grouped_bn(_parts(layers, "norm2"))
        self.conv2 = _grouped_conv(_parts(layers, "conv2"))
        if any(float(getattr(m, "drop_rate", 0.0)) > 0 for m in layers):
            raise ValueError("grouped DenseNet: dropout layers are not supported")

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = gcat(features, self.groups) if len(features) > 1 else features[0]
        return self.conv2(_bn_relu(self.norm2, self.conv1(_bn_relu(self.norm1, x))))


class _Block(nn.Module):
    def __init__(self, blocks: Sequence[nn.Module], groups: int, pointwise: str) -> None:
        super().__init__()
        self.groups = groups
        for name, _ in blocks[0].named_children():
            self.add_module(name, _Layer(_parts(blocks, name), groups, pointwise))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.children():
            features.append(layer(features))
        return gcat(features, self.groups)


class _Transition(nn.Module):
    def __init__(self, transitions: Sequence[nn.Module], pointwise: str) -> None:
        super().__init__()
        self.norm = _grouped_bn(_parts(transitions, "norm"))
        self.conv = _pointwise(_parts(transitions, "conv"), pointwise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(_bn_relu(self.norm, x)), kernel_size=2, stride=2)


class _Features(nn.Module):
    def __init__(self, features: Sequence[nn.Module], groups: int, pointwise: str) -> None:
        super().__init__()
        for name, first in features[0].named_children():
            parts = [getattr(f, name) for f in features]
            if isinstance(first, nn.Conv2d):
                self.add_module(name, _grouped_conv(parts))
            elif isinstance(first, nn.BatchNorm2d):
                self.add_module(name, _grouped_bn(parts))
            elif name.startswith("denseblock"):
                self.add_module(name, _Block(parts, groups, pointwise))
            elif name.startswith("transition"):
                self.add_module(name, _Transition(parts, pointwise))
            elif isinstance(first, nn.ReLU | nn.MaxPool2d):
                self.add_module(name, first)  # no parameters, acts per channel
            else:
                raise ValueError(f"grouped DenseNet: unexpected feature layer {name} ({type(first).__name__})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = layer(x)
        return x


class GroupedDenseNet(nn.Module):
    """N torchvision-compatible DenseNets (same architecture) as one module: (N, B, 3, S, S) -> (N, B, classes).
    `pointwise` = "matmul" runs the 1x1 convolutions and the classifier as batched GEMMs."""

    def __init__(self, members: Sequence[nn.Module], pointwise: str = "conv") -> None:
        super().__init__()
        if not members:
            raise ValueError("grouped DenseNet: no members")
        if pointwise not in POINTWISE:
            raise ValueError(f"grouped DenseNet: pointwise must be one of {', '.join(POINTWISE)}, got {pointwise!r}")
        self.groups = len(members)
        self.features = _Features(_parts(members, "features"), self.groups, pointwise)
        classifier = _grouped_linear(_parts(members, "classifier"))
        self.classifier = BatchedPointwise(classifier, self.groups) if pointwise == "matmul" else classifier
        self._shapes = {k: tuple(v.shape) for k, v in members[0].state_dict().items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, b, c, h, w = x.shape
        x = x.transpose(0, 1).reshape(b, n * c, h, w)
        if _prefers_channels_last(self):
            x = x.contiguous(memory_format=torch.channels_last)
        x = F.relu(self.features(x))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.classifier(x).reshape(b, n, -1).transpose(0, 1)

    def member_state(self, n: int, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Model n's state dict (views of this module's tensors, or of `state`)."""
        state = self.state_dict() if state is None else state
        return {k: member_slice(t, n, self.groups, self._shapes[k]) for k, t in state.items()}


def member_slice(t: torch.Tensor, n: int, groups: int, shape: tuple[int, ...]) -> torch.Tensor:
    if t.dim() == 0:  # num_batches_tracked: one counter, the same for every member
        return t
    return t.reshape(groups, -1)[n].reshape(shape)


def _prefers_channels_last(model: nn.Module) -> bool:
    conv0 = getattr(model.features, "conv0", None)
    return conv0 is not None and conv0.weight.is_contiguous(memory_format=torch.channels_last)
