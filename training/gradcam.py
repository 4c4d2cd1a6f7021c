"""Grad-CAM examples on test images, made by the runtime's own Analyzer on the written bundle
(so the pictures show what `serve`/`infer` would show, not a training-side re-implementation)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a training server
import matplotlib.pyplot as plt  # noqa: E402

from cxr_node.analysis.bundle import Bundle  # noqa: E402
from cxr_node.analysis.engine import Analyzer  # noqa: E402
from cxr_node.decoding.pixels import read_image  # noqa: E402
from training.data import LABELS, Sample  # noqa: E402


def pick_examples(samples: list[Sample], n: int) -> list[Sample]:
    """Up to n images, taking the labels in turn so every class is shown."""
    by_label = {lab: [s for s in samples if s.label == lab] for lab in LABELS}
    out: list[Sample] = []
    while len(out) < n and any(by_label.values()):
        for lab in LABELS:
            if by_label[lab] and len(out) < n:
                out.append(by_label[lab].pop(0))
    return out


def write_gradcam_examples(
    bundle: Bundle, samples: list[Sample], out_dir: Path, n: int, device: str = "auto"
) -> list[str]:
    chosen = pick_examples(samples, n)
    if not chosen:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    analyzer = Analyzer(bundle, device=device)
    images = [read_image(s.image).pixels for s in chosen]
    written = []
    for k, (sample, img, analysis) in enumerate(zip(chosen, images, analyzer.analyse(images), strict=True)):
        r = analysis.result
        fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.8))
        axes[0].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[0].set_title(f"truth: {sample.label}")
        for ax, cam, title in (
            (axes[1], analysis.cam_a, f"A: P(abnormal) {r.p_abnormal:.2f}"),
            (axes[2], analysis.cam_b, f"B: P(COVID-19) {r.p_covid:.2f}"),
        ):
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
            ax.set_title(title)
        for ax in axes:
            ax.axis("off")
        fig.suptitle(
            f"{sample.name} -> {r.label.value}" + (" (models disagree)" if r.models_disagree else ""), fontsize=9
        )
        fig.tight_layout()
        name = f"{k:02d}_{sample.label}_{Path(sample.name).stem}.png"
        fig.savefig(out_dir / name, dpi=80)
        plt.close(fig)
        written.append(name)
    return written
