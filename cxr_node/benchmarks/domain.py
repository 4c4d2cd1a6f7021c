"""What the out-of-domain check costs: the same images analysed with the check on and off.

    python -m cxr_node.benchmarks.domain --models BUNDLE [--batch 1] [--repeats 20] [--json] FILE...

A bundle without statistics is measured against statistics fitted here on its own random
letterboxed noise (the cost depends on the layers and the input size, not on what was fitted).
Prints the median seconds per image of Analyzer.run with the check on and off, the check's own
scoring stage, and the difference in per cent. The figures in docs/training.md come from here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from cxr_node.analysis.domain_layers import DEFAULT_LAYERS


def _noise_statistics(bundle, layers_text: str):
    from cxr_node.analysis.domain import extract, fit_domain, parse_layers

    layers = parse_layers(layers_text)
    squares = np.random.default_rng(0).random((40, bundle.input_size, bundle.input_size), dtype=np.float32)
    desc: dict[str, np.ndarray] = {}
    for key, model in (("A", bundle.model_a), ("B", bundle.model_b)):
        desc.update(extract(model, squares, tuple(s for s in layers if s.model == key)))
    return fit_domain(
        {k: v[:20] for k, v in desc.items()},
        {k: v[20:] for k, v in desc.items()},
        layers,
        components=16,
        quantile=0.975,
    )


def run(models: Path | None, files: list[Path], batch: int, repeats: int, input_size: int, layers: str) -> dict:
    import torch

    from cxr_node.analysis.bundle import load_bundle, untrained_bundle
    from cxr_node.analysis.engine import Analyzer
    from cxr_node.decoding.pixels import read_image

    bundle = load_bundle(models) if models else untrained_bundle(input_size)
    fitted_here = bundle.domain is None
    if fitted_here:
        bundle = replace(bundle, domain=_noise_statistics(bundle, layers))
    assert bundle.domain is not None
    layer_count = len(bundle.domain.layers)
    images = [read_image(f).pixels for f in files]
    images = (images * batch)[:batch]
    on, off = Analyzer(bundle, "cpu"), Analyzer(bundle, "cpu", domain_check=False)
    prepared = on.prepare(images)
    times: dict[str, list[float]] = {"on": [], "off": [], "scoring": []}
    for _ in range(2):  # warm-up
        on.run(prepared), off.run(prepared)
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        for name, analyzer in (("on", on), ("off", off)):
            t = time.perf_counter()
            analyzer.run(prepared)
            times[name].append((time.perf_counter() - t) / batch)
        times["scoring"].append(on.last_timings["domain"] / batch)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "bundle": bundle.label,
        "statistics": "fitted here on noise" if fitted_here else "the bundle's",
        "layers": layer_count,
        "input_size": bundle.input_size,
        "batch": batch,
        "repeats": repeats,
        "seconds_per_image": med,
        "check_share_percent": 100 * (med["on"] - med["off"]) / med["off"],
        "machine": f"{platform.machine()} {os.cpu_count()} logical cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "load_average": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--models", type=Path, default=None, help="bundle (default: untrained, statistics fitted on noise)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--input-size", type=int, default=224, help="untrained bundle only")
    p.add_argument("--layers", default=None, help="untrained bundle only; default: training's domain.layers")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    result = run(a.models, a.files, a.batch, a.repeats, a.input_size, a.layers or DEFAULT_LAYERS)
    if a.json:
        print(json.dumps(result, indent=1))
        return
    s = result["seconds_per_image"]
    print(
        f"{result['bundle']} ({result['statistics']}, {result['layers']} layers), {result['input_size']} px, batch "
        f"{result['batch']}: {1000 * s['off']:.1f} ms/image without the check, {1000 * s['on']:.1f} ms with it "
        f"({result['check_share_percent']:+.1f} %), scoring {1000 * s['scoring']:.2f} ms/image; "
        f"{result['machine']}; load {' '.join(result['load_average'] or [])}"
    )


if __name__ == "__main__":
    main()
