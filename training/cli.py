"""Click commands `train` and `evaluate`, registered with cxr-node through the
`cxr_node.commands` entry-point group (pyproject.toml)."""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import click


def _known_errors():
    from cxr_node.analysis.bundle import BundleError
    from cxr_node.analysis.models import WeightsError
    from training.config import ConfigError
    from training.data import DataError
    from training.loop import CheckpointMismatch, TrainingDiverged

    return (ConfigError, DataError, CheckpointMismatch, TrainingDiverged, WeightsError, BundleError)


@click.command(short_help="Train models A and B; write bundle, metrics, report.")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Training TOML (configs/train-paper.toml, configs/train-smoke.toml).",
)
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder with manifest.csv, or a DICOM folder together with --labels.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Output folder: bundle/, metrics.json, report.md, plots/, gradcam/, checkpoints/.",
)
@click.option(
    "--labels",
    "labels_csv",
    type=click.Path(dir_okay=False),
    help="Labels CSV keyed by SOP Instance UID (sop_instance_uid,label[,patient_id]) for a DICOM folder.",
)
@click.option("--skip-bad-rows", is_flag=True, help="Train without bad rows instead of refusing to start.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a config key, e.g. --set optim.epochs=10 (repeatable).",
)
def train(config_path, data_dir, out_dir, labels_csv, skip_bad_rows, overrides):
    """Train models A and B (de Moura et al. 2020) and write a bundle, metrics and a report.

    Resumes from the checkpoints in --out when rerun with the same config and data.
    Multi-GPU: torchrun --nproc_per_node N $(which cxr-node) train ...
    """
    from training.config import load_config
    from training.pipeline import train as run_training

    try:
        cfg = load_config(config_path, overrides)
        metrics = run_training(
            cfg, data_dir, out_dir, labels_csv=labels_csv, skip_bad_rows=skip_bad_rows, config_path=str(config_path)
        )
    except _known_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    if metrics is not None:
        s = metrics["summary"]

        def mean(part: str) -> str:
            m = s[part].get("accuracy", {}).get("mean")
            return "n/a" if m is None else f"{m:.4f}"

        click.echo(
            f"test accuracy A {mean('A')}, B {mean('B')}, "
            f"joint {mean('joint')} (mean of {len(metrics['repetitions'])}); "
            f"report {Path(out_dir) / 'report.md'}"
        )


@click.command(short_help="Metrics of a bundle on a labelled data set.")
@click.option("--models", "bundle_dir", required=True, type=click.Path(file_okay=False), help="Model bundle folder.")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder with manifest.csv, or a DICOM folder together with --labels.",
)
@click.option("--labels", "labels_csv", type=click.Path(dir_okay=False), help="Labels CSV keyed by SOP Instance UID.")
@click.option("--skip-bad-rows", is_flag=True, help="Evaluate without bad rows instead of refusing.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 1024))
@click.option(
    "--predictions",
    "predictions_csv",
    type=click.Path(dir_okay=False),
    help="Also write per-image probabilities and joint answers to this CSV.",
)
@click.option(
    "--domain-only",
    is_flag=True,
    help="Only the out-of-domain rate, on any images (manifest.csv with `image` and optional `kind`, "
    "or every PNG/JPEG/.dcm file in the folder); no labels needed.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(
    bundle_dir, data_dir, labels_csv, skip_bad_rows, device, batch_size, predictions_csv, domain_only, as_json
):
    """Metrics of a bundle on a labelled set: joint 3-class accuracy, balanced accuracy, AUC of A and B,
    per-class precision/recall/F1, confusion matrix, counts, and how many images the out-of-domain
    check flags. With --domain-only: the flagged share of any folder of images, per kind."""
    from tqdm import tqdm

    from training.evaluate import evaluate as run_evaluate
    from training.evaluate import evaluate_domain, format_domain_summary, format_summary

    if domain_only:
        try:
            result = evaluate_domain(
                bundle_dir,
                data_dir,
                skip_bad_rows=skip_bad_rows,
                device=device,
                batch_size=batch_size,
                predictions_csv=predictions_csv,
                progress=partial(tqdm, file=sys.stderr, leave=False),
                log=lambda m: click.echo(m, err=True),
            )
        except _known_errors() as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(json.dumps(result, indent=1) if as_json else format_domain_summary(result))
        return
    try:
        metrics = run_evaluate(
            bundle_dir,
            data_dir,
            labels_csv=labels_csv,
            skip_bad_rows=skip_bad_rows,
            device=device,
            batch_size=batch_size,
            predictions_csv=predictions_csv,
            progress=partial(tqdm, file=sys.stderr, leave=False),
            log=lambda m: click.echo(m, err=True),
        )
    except _known_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(metrics, indent=1) if as_json else format_summary(metrics))


@click.command("train", short_help="Training throughput and the projected wall time of the full protocol.")
@click.option("--device", default="cuda", show_default=True, help="cpu, cuda or cuda:N.")
@click.option(
    "--parallel",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Training processes side by side on the device (run.parallel).",
)
@click.option(
    "--mode",
    "parallel_mode",
    type=click.Choice(["processes", "grouped"]),
    default=None,
    help="How the --parallel trainings share the device (run.parallel_mode) [default: the config's].",
)
@click.option(
    "--epochs",
    type=click.IntRange(1, 1000),
    default=3,
    show_default=True,
    help="Epochs each process trains (the first is reported apart as warm-up).",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Data set (manifest folder) to train on and to project for [default: small synthetic set].",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True),
    default="configs/train-paper.toml",
    show_default=True,
    help="Training config: batch, input size, step form, epochs and repetitions projected.",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a config key (repeatable)."
)
@click.option(
    "--images",
    type=click.IntRange(0, 1_000_000),
    default=0,
    show_default=True,
    help="Training images per process (0 = the whole training split of repetition 1).",
)
@click.option(
    "--profile",
    "profile_steps_n",
    type=click.IntRange(0, 1000),
    default=0,
    show_default=True,
    help="Also profile this many steps of one process (where the step time goes) after the bench.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the JSON here (and the profile table next to it, .profile.txt).",
)
def bench_train(
    device, parallel, parallel_mode, epochs, data_dir, config_path, overrides, images, profile_steps_n, as_json, out
):
    """Images/s per process and in aggregate, device memory, and the projected wall time of the
    full protocol (optim.epochs x run.repetitions, models A and B) with --parallel processes."""
    import dataclasses
    import tempfile

    from training.config import load_config
    from training.fast.bench import format_report, run_train_bench

    try:
        cfg = load_config(config_path, overrides)
        if parallel_mode:
            cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, parallel_mode=parallel_mode))
        with tempfile.TemporaryDirectory(prefix="cxr-bench-train-") as work:
            result = run_train_bench(
                cfg=cfg,
                data_dir=data_dir,
                device_request=device,
                parallel=parallel,
                epochs=epochs,
                images=images,
                workdir=Path(work),
                log=lambda m: click.echo(f"... {m}", err=True),
            )
        if profile_steps_n:
            from training.fast.bench import profile_steps

            result["profile"], table = profile_steps(cfg, device, profile_steps_n, parallel)
            if out:
                out.with_suffix(".profile.txt").write_text(table, encoding="utf-8")
    except (*_known_errors(), RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    click.echo(json.dumps(result, indent=1) if as_json else format_report(result))
