"""`cxr-node demo`: the whole path on one machine, with a real CR chest radiograph.

node + loopback PACS on free loopback ports, SQLite and storage in a fresh directory;
the radiograph goes in by C-STORE, the SR and SC come back by C-STORE.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import click
import cv2
import pydicom

from cxr_node.config import ConfigError, Destination, NodeConfig, load_config, with_overrides
from cxr_node.results.wording import UNTRAINED_MODEL_TEXT

DEMO_IMAGE = "RG1_J2KR.dcm"  # pydicom-data: CR chest, JPEG 2000 lossless, MONOCHROME1, 1955 x 1841


def demo_image_path() -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(DEMO_IMAGE)
    if path is None:
        raise click.ClickException(f"{DEMO_IMAGE} not found: install the PyPI package pydicom-data")
    return Path(path)


def run_demo(cfg: NodeConfig, image: Path, out: Path, timeout_s: float = 300.0) -> dict:
    from cxr_node.commands.demo_pacs import LoopbackPACS
    from cxr_node.dicom.sender import Sender
    from cxr_node.dicom.status import status_ok
    from cxr_node.node import Node

    # A demo starts from nothing each time: a kept queue would know the study and, rightly,
    # not report it a second time.
    for leftover in ("node", "pacs"):
        shutil.rmtree(out / leftover, ignore_errors=True)
    pacs = LoopbackPACS(out / "pacs")
    pacs.start()
    cfg = with_overrides(
        cfg,
        ae_title="CXR_NODE",
        bind="127.0.0.1",
        port=0,
        storage=out / "node",
        destination=Destination("DEMO_PACS", "127.0.0.1", pacs.port),
        poll_interval_s=0.2,
    )
    t_load = time.perf_counter()
    node = Node.build(cfg)
    load_s = time.perf_counter() - t_load
    node.start()
    try:
        source = pydicom.dcmread(image, stop_before_pixels=True)
        t0 = time.perf_counter()
        port = node.receiver.port if node.receiver is not None else None
        if port is None:
            raise click.ClickException(
                "the demo sends to the node's receiver: node.roles must include it, on a plain port"
            )
        outcome = Sender("DEMO_MODALITY").send_files(Destination(cfg.ae_title, "127.0.0.1", port), [str(image)])[0]
        store_s = time.perf_counter() - t0
        if not status_ok(outcome.status):
            why = outcome.transport_error or f"0x{outcome.status:04X} {outcome.comment}"
            raise click.ClickException(f"the node refused the image: {why}")
        received = pacs.wait_for(2, timeout_s)
        total_s = time.perf_counter() - t0
        if len(received) < 2:
            raise click.ClickException(f"no SR + SC at the PACS after {timeout_s:.0f} s; queue: {node.queue.counts()}")
        result = node.queue.result_for_instance(str(source.SOPInstanceUID))
        if result is None:
            raise click.ClickException(f"the PACS got an SR and SC but the queue has no result for {image}")
    finally:
        node.stop()
        pacs.stop()

    files = {pydicom.dcmread(p, stop_before_pixels=True).Modality: p for p in received}
    sc = pydicom.dcmread(files["OT"])
    png = out / "gradcam-sc.png"
    cv2.imwrite(str(png), cv2.cvtColor(sc.pixel_array, cv2.COLOR_RGB2BGR))
    return {
        "image": str(image),
        "class": result["label"],
        "p_abnormal": round(result["p_abnormal"], 4),
        "p_covid": round(result["p_covid"], 4),
        "models_disagree": result["models_disagree"],
        "model": result["model"],
        "trained": result["trained"],
        "seconds": {
            "model_load": round(load_s, 3),
            "c_store_in": round(store_s, 3),
            **(result["timings"] or {}),
            "end_to_end": round(total_s, 3),
        },
        "returned": {"sr": str(files["SR"]), "sc": str(files["OT"])},
        "sc_png": str(png),
    }


@click.command("demo")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Node config (only [models] and [analysis] matter here); default: embedded defaults.",
)
@click.option("--models", type=click.Path(path_type=Path), default=None, help="Model bundle; default: untrained.")
@click.option(
    "--image", type=click.Path(path_type=Path, exists=True), default=None, help=f"Radiograph [default: {DEMO_IMAGE}]."
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Output directory [default: a new temp dir]."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(config_path, models, image, out, as_json):
    """Send a real chest radiograph through node and loopback PACS and print the result."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config_path)
        cfg = with_overrides(cfg, models=models)
        if cfg.models is None:
            cfg = with_overrides(cfg, allow_untrained=True)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="cxr-node-demo-"))
    summary = run_demo(cfg, Path(image) if image else demo_image_path(), out)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"radiograph      {summary['image']}")
    click.echo(f"model           {summary['model']}")
    if not summary["trained"]:
        click.echo(f"                 {UNTRAINED_MODEL_TEXT} (random weights; pass --models BUNDLE)")
    click.echo(f"class           {summary['class']}" + ("   (models disagree)" if summary["models_disagree"] else ""))
    click.echo(f"P(abnormal)     {100 * summary['p_abnormal']:.1f} %   (model A)")
    click.echo(f"P(COVID-19)     {100 * summary['p_covid']:.1f} %   (model B)")
    click.echo("seconds per stage")
    for stage, seconds in summary["seconds"].items():
        note = "   (A and B run at the same time on a CPU: these two overlap)" if stage == "model_b" else ""
        click.echo(f"  {stage:<14}{seconds:8.3f}{note}")
    click.echo(f"SR returned     {summary['returned']['sr']}")
    click.echo(f"SC returned     {summary['returned']['sc']}")
    click.echo(f"SC as PNG       {summary['sc_png']}")
