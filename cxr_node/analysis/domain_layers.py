"""Names of the out-of-domain check's layers, torch-free (training's config reads them too).

A layer is MODEL:TAP:POOL: model A or B, where in the DenseNet forward the activation is read
(a `features` child or "final", the post-ReLU features of the classifier and the CAM), and how it
is pooled to a descriptor (channel means, a 2x2 or 4x4 grid of them, channel standard deviations).
"""

from __future__ import annotations

MODELS = ("A", "B")
TAPS = ("denseblock1", "denseblock2", "denseblock3", "denseblock4", "final")
POOLS = ("gap", "grid2", "grid4", "std")

# Every model x tap x pool explored (grid4 on dense blocks 1-3, grid2 on the final maps, which are
# 2x2 at the smoke config's 64 px and 7x7 at 224 px). How it was chosen: docs/training.md.
DEFAULT_LAYERS = ",".join(
    f"{m}:{tap}:{pool}"
    for m in MODELS
    for tap in ("denseblock1", "denseblock2", "denseblock3", "final")
    for pool in ("gap", "grid2" if tap == "final" else "grid4", "std")
)
