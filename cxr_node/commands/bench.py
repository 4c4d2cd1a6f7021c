"""`cxr-node bench inference`: how fast the analysis is, next to the floor and the naive pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cxr_node.results.sc_size import SC_MAX_SIDE
from cxr_node.validation import PRECISIONS


def _sizes(ctx, param, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} must be comma-separated integers, e.g. 1,4,16") from None
    if not sizes or any(s < 1 for s in sizes):
        raise click.BadParameter(f"{value!r} must be positive integers, e.g. 1,4,16")
    return sizes


@click.group("bench")
def command() -> None:
    """Benchmarks (cxr_node/benchmarks; figures in docs/benchmarks.md). Other packages add theirs to this group."""


@command.command("inference")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@click.option(
    "--studies",
    type=click.IntRange(1, 10000),
    default=10,
    show_default=True,
    help="Studies timed one by one (stages, floor, naive).",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--batch-sizes", callback=_sizes, default="1,4,16", show_default=True, help="Throughput batch sizes.")
@click.option(
    "--repeats", type=click.IntRange(1, 1000), default=3, show_default=True, help="Timed runs per batch size."
)
@click.option(
    "--input-size",
    type=click.IntRange(32, 2048),
    default=224,
    show_default=True,
    help="Model input size (untrained models; a bundle fixes its own).",
)
@click.option(
    "--models",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Model bundle [default: untrained weights; same cost].",
)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
@click.option("--compile", "use_compile", is_flag=True, help="torch.compile the models (falls back to eager).")
@click.option(
    "--no-cuda-graphs", is_flag=True, help="On a GPU, run the forwards eagerly instead of replaying CUDA graphs."
)
@click.option("--no-naive", is_flag=True, help="Skip the autograd Grad-CAM baseline.")
@click.option("--no-overlap", is_flag=True, help="Skip the decode-overlap measurement.")
@click.option("--no-rss-probe", is_flag=True, help="Skip the worker-like RSS measurement in a fresh process.")
@click.option(
    "--image",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="DICOM radiograph to time [default: pydicom-data RG1_J2KR.dcm].",
)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Also write the JSON here.")
def inference(
    as_json,
    studies,
    device,
    batch_sizes,
    repeats,
    input_size,
    models,
    precision,
    use_compile,
    no_cuda_graphs,
    no_naive,
    no_overlap,
    no_rss_probe,
    image,
    out,
):
    """Per-stage times (p50/p95), studies/s by batch, peak RSS, floor and naive pipeline, on RG1_J2KR.dcm
    or --image."""
    from cxr_node.benchmarks.inference import run_inference_bench
    from cxr_node.benchmarks.report import format_report
    from cxr_node.memory import tune_malloc

    tune_malloc()  # this process analyses like a worker: the same process-wide settings as serve
    try:
        result = run_inference_bench(
            studies=studies,
            batch_sizes=batch_sizes,
            device=device,
            input_size=input_size,
            models=models,
            precision=precision,
            compile=use_compile,
            cuda_graphs=not no_cuda_graphs,
            repeats=repeats,
            naive=not no_naive,
            overlap=not no_overlap,
            rss_probe=not no_rss_probe,
            image=image,
            progress=None if as_json else (lambda m: click.echo(f"... {m}", err=True)),
        )
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    click.echo(json.dumps(result, indent=2) if as_json else format_report(result))


@command.command("decode-memory")
@click.option(
    "--image",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="DICOM radiograph to encode [default: pydicom-data RG1_UNCR.dcm].",
)
@click.option("--side", type=click.IntRange(64, 16384), default=None, help="Resize to SIDE x SIDE first.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
def decode_memory(image, side, as_json):
    """Peak memory per pixel of each decoder and of a decoder process's whole job, per transfer syntax."""
    from cxr_node.benchmarks.decode_memory import format_table, run_decode_memory_bench

    result = run_decode_memory_bench(
        image, side, progress=None if as_json else (lambda m: click.echo(f"... {m}", err=True))
    )
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))


@command.command("decode")
@click.option(
    "--image",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="DICOM radiograph [default: pydicom-data RG1_J2KR.dcm].",
)
@click.option(
    "--repeats", type=click.IntRange(1, 1000), default=5, show_default=True, help="Timed decodes per variant."
)
@click.option(
    "--studies",
    type=click.IntRange(0, 1000),
    default=5,
    show_default=True,
    help="Studies (decode + analysis + SR/SC) per variant; 0 skips.",
)
@click.option(
    "--models",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Model bundle [default: untrained weights; same cost].",
)
@click.option("--input-size", type=click.IntRange(32, 2048), default=224, show_default=True)
@click.option("--sc-max-side", type=click.IntRange(256, 4096), default=SC_MAX_SIDE, show_default=True)
@click.option("--cores", type=click.IntRange(1, 1024), default=16, show_default=True, help="GPU host cores to project.")
@click.option(
    "--throughput",
    type=click.IntRange(0, 100000),
    default=0,
    show_default=True,
    help="Studies end to end through the decode pool and process_batch (0: skip).",
)
@click.option("--batch", type=click.IntRange(1, 256), default=4, show_default=True, help="Throughput batch size.")
@click.option("--workers", type=click.IntRange(1, 256), default=None, help="Decode processes [default: CPUs - 1].")
@click.option("--device", default="cpu", show_default=True, help="Analysis device: cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Also write the JSON here.")
def decode(
    image, repeats, studies, models, input_size, sc_max_side, cores, throughput, batch, workers, device, as_json, out
):
    """Full versus reduced decoding and CPU seconds per study, side by side in one run."""
    from cxr_node.benchmarks.decode import report, run_decode_bench
    from cxr_node.memory import tune_malloc

    tune_malloc()
    result = run_decode_bench(
        image=image,
        repeats=repeats,
        studies=studies,
        models=models,
        input_size=input_size,
        sc_max_side=sc_max_side,
        cores=cores,
        throughput=throughput,
        batch=batch,
        workers=workers,
        device=device,
        progress=None if as_json else (lambda m: click.echo(f"... {m}", err=True)),
    )
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    click.echo(json.dumps(result, indent=2) if as_json else report(result))


@command.command("decode-agreement")
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="Folder with manifest.csv (image, label), e.g. ../shared/datasets/public-cxr-plus.",
)
@click.option("--models", type=click.Path(path_type=Path, file_okay=False, exists=True), required=True)
@click.option(
    "--work",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Folder for the converted DICOM files (outside the repository; reused by a re-run).",
)
@click.option("--limit", type=click.IntRange(0, 100000), default=120, show_default=True, help="Images (0: all).")
@click.option("--upscale", type=click.IntRange(1, 8), default=4, show_default=True, help="Enlarge the 512 px images.")
@click.option("--syntaxes", default="j2k16,jpeg8,jpeg12", show_default=True, help="Comma-separated.")
@click.option("--sc-max-side", type=click.IntRange(256, 4096), default=SC_MAX_SIDE, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Also write the JSON here.")
def decode_agreement(data, models, work, limit, upscale, syntaxes, sc_max_side, as_json, out):
    """Both models' probabilities from full versus reduced decoding, on the set converted to DICOM."""
    from cxr_node.benchmarks.agreement import SYNTAXES, report, run_agreement_bench
    from cxr_node.benchmarks.inference import bench_image

    chosen = tuple(s.strip() for s in syntaxes.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SYNTAXES]
    if unknown or not chosen:
        raise click.BadParameter(f"{syntaxes!r}: choose from {', '.join(SYNTAXES)}", param_hint="--syntaxes")
    try:
        result = run_agreement_bench(
            data=data,
            models=models,
            work=work,
            limit=limit,
            upscale=upscale,
            syntaxes=chosen,
            sc_max_side=sc_max_side,
            extra=(bench_image(),),
            progress=None if as_json else (lambda m: click.echo(f"... {m}", err=True)),
        )
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    click.echo(json.dumps(result, indent=2) if as_json else report(result))


def _add_latency() -> None:
    # Its own module (it starts Orthanc and serve); imported when `bench` is built, imports nothing heavy.
    from cxr_node.benchmarks.latency import command as latency

    command.add_command(latency)


def _add_ingest() -> None:
    from cxr_node.benchmarks.ingest import command as ingest

    command.add_command(ingest)


_add_latency()
_add_ingest()
