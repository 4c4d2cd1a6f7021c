"""`cxr-node infer FILE... --models DIR | --allow-untrained --out DIR`: offline analysis, no network.

Per input file, in OUT/<file stem>/: report-sr.dcm, gradcam-sc.dcm and summary.json.
Decoding runs in a process pool ahead of the models, so the next files decode while
the current batch is analysed. A file that cannot be read or analysed gets one error
line naming it; the others go on; the exit status is 1 if any file failed.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cxr_node.results.wording import UNTRAINED_MODEL_TEXT
from cxr_node.validation import PRECISIONS

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from cxr_node.decoding.pool import Decoded

log = logging.getLogger(__name__)


def _by_index(dirs: list[Path]) -> Callable[[int, Dataset], Path]:
    """process_batch's out_dir: image i's results go to dirs[i]."""
    return lambda i, _header: dirs[i]


def _out_dir(out: Path, path: Path, used: set[str]) -> Path:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem) or "image"
    name, k = stem, 2
    while name in used:
        name, k = f"{stem}-{k}", k + 1
    used.add(name)
    return out / name


def run_infer(
    files: list[Path],
    out: Path,
    *,
    models: Path | None = None,
    allow_untrained: bool = False,
    device: str = "auto",
    batch_size: int = 4,
    input_size: int = 224,
    precision: str = "auto",
    compile: bool = False,
    cuda_graphs: bool = True,
    full_decode: bool = False,
    domain_check: bool = True,
    ae_title: str = "CXR_NODE",
    on_result=None,
    on_error=None,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Analyse `files`; returns (summaries, [(file, error message)])."""
    from cxr_node.analysis.bundle import load_bundle, untrained_bundle
    from cxr_node.analysis.engine import Analyzer
    from cxr_node.decoding.pool import DecodePool, decode_file, decoder_for
    from cxr_node.decoding.reduced import DEFAULT_SC_MAX_SIDE, Resolution
    from cxr_node.processing import OutcomeKind, process_batch
    from cxr_node.results.identity import ModelIdentity, NodeIdentity

    on_result = on_result or (lambda s: None)
    on_error = on_error or (lambda f, m: None)
    t_load = time.perf_counter()
    bundle = load_bundle(models) if models is not None else untrained_bundle(input_size)
    analyzer = Analyzer(
        bundle, device, precision=precision, compile=compile, cuda_graphs=cuda_graphs, domain_check=domain_check
    )
    load_s = time.perf_counter() - t_load
    model = ModelIdentity.from_bundle(bundle)
    node = NodeIdentity(ae_title)
    out.mkdir(parents=True, exist_ok=True)

    summaries: list[dict] = []
    errors: list[tuple[str, str]] = []

    def fail(path: Path, message: str) -> None:
        msg = message if str(path) in message else f"{path}: {message}"
        msg = " ".join(msg.split())  # one line
        errors.append((str(path), msg))
        on_error(str(path), msg)

    # The SC is drawn at process_batch's default size: decode no finer than its panel needs.
    resolution = None if full_decode else Resolution.serving(bundle.input_size, DEFAULT_SC_MAX_SIDE)
    pool = DecodePool(kind="process", decode=decoder_for(resolution)) if len(files) > 1 else None
    window = max(2 * batch_size, 2)
    pending: deque = deque()  # (path, future or None)
    todo = deque(files)

    def refill() -> None:
        while todo and len(pending) < window:
            p = todo.popleft()
            pending.append((p, pool.submit(p) if pool else None))

    def settle(path: Path, fut):
        try:
            return fut.result() if fut is not None else decode_file(path, resolution)
        except Exception as exc:
            return exc

    used: set[str] = set()
    try:
        refill()
        while pending:
            batch: list[tuple[Path, Decoded | BaseException]] = []
            while pending and len(batch) < batch_size:
                path, fut = pending.popleft()
                refill()  # keep the pool busy while this batch is analysed
                batch.append((path, settle(path, fut)))
            targets = [_out_dir(out, path, used) for path, _ in batch]
            outcomes = process_batch(
                [p for p, _ in batch],
                analyzer,
                node,
                model,
                _by_index(targets),
                decode=None,
                decoded=[d for _, d in batch],
                max_side=DEFAULT_SC_MAX_SIDE,
            )
            for (path, _), target, outcome in zip(batch, targets, outcomes, strict=True):
                if not outcome.ok:
                    if outcome.kind == OutcomeKind.NOT_ANALYSABLE:  # decided, not broken: no class given
                        fail(path, f"not analysable [{outcome.code}]: {outcome.error}")
                    else:
                        fail(path, outcome.error or "unknown error")
                    continue
                assert outcome.analysis is not None and outcome.files is not None  # ok: analysed and written
                r = outcome.analysis.result
                summary = {
                    "file": str(path),
                    "class": r.label.value,
                    "p_abnormal": round(r.p_abnormal, 6),
                    "p_covid": round(r.p_covid, 6),
                    "models_disagree": r.models_disagree,
                    "model": model.label,
                    "trained": model.trained,
                    "device": str(analyzer.device),
                    "precision": analyzer.precision,
                    "timings": {"model_load": round(load_s, 4), **{k: round(v, 4) for k, v in outcome.timings.items()}},
                    "outputs": {
                        "sr": str(outcome.files.sr_path),
                        "sc": str(outcome.files.sc_path),
                        "json": str(target / "summary.json"),
                    },
                }
                (target / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
                summaries.append(summary)
                on_result(summary)
    finally:
        if pool is not None:
            pool.close()
    return summaries, errors


@click.command("infer")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--models", type=click.Path(path_type=Path, file_okay=False), default=None, help="Model bundle directory."
)
@click.option("--allow-untrained", is_flag=True, help="Use random weights (every result says UNTRAINED).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True, help="Output directory.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(1, 256), default=4, show_default=True)
@click.option(
    "--input-size",
    type=click.IntRange(32, 2048),
    default=224,
    show_default=True,
    help="Model input size for --allow-untrained (a bundle fixes its own).",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="auto",
    show_default=True,
    help="auto = bf16 autocast on GPU, exact fp32 on CPU.",
)
@click.option("--compile", "use_compile", is_flag=True, help="torch.compile the models (falls back to eager).")
@click.option(
    "--no-cuda-graphs", is_flag=True, help="On a GPU, run the forwards eagerly instead of replaying CUDA graphs."
)
@click.option(
    "--full-decode", is_flag=True, help="Decode every image at full resolution (default: only as fine as needed)."
)
@click.option(
    "--domain-check/--no-domain-check",
    default=True,
    show_default=True,
    help="Leave images unlike the bundle's training images without a class (bundles with statistics).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary per line instead of text.")
def command(
    files,
    models,
    allow_untrained,
    out,
    device,
    batch_size,
    input_size,
    precision,
    use_compile,
    no_cuda_graphs,
    full_decode,
    domain_check,
    as_json,
):
    """Analyse DICOM radiographs offline; writes SR, Grad-CAM SC and summary.json per file."""
    from cxr_node.analysis.bundle import BundleError
    from cxr_node.memory import tune_malloc
    from cxr_node.results.writer import start_warm_up

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if models is None and not allow_untrained:
        raise click.UsageError("give --models DIR (a trained bundle) or --allow-untrained (random weights)")
    if models is not None and allow_untrained:
        raise click.UsageError("--models and --allow-untrained exclude each other")

    def show(s: dict) -> None:
        if as_json:
            click.echo(json.dumps(s))
            return
        flag = "   (models disagree)" if s["models_disagree"] else ""
        warn = f"   [{UNTRAINED_MODEL_TEXT}]" if not s["trained"] else ""
        click.echo(
            f"{s['file']}: {s['class']}  P(abnormal) {100 * s['p_abnormal']:.1f} %  "
            f"P(COVID-19) {100 * s['p_covid']:.1f} %{flag}{warn} -> {Path(s['outputs']['json']).parent}"
        )

    tune_malloc()  # this process is an analysis process: settings before the models load
    start_warm_up()  # highdicom's tables load while the models do
    try:
        _, errors = run_infer(
            list(files),
            out,
            models=models,
            allow_untrained=allow_untrained,
            device=device,
            batch_size=batch_size,
            input_size=input_size,
            precision=precision,
            compile=use_compile,
            cuda_graphs=not no_cuda_graphs,
            full_decode=full_decode,
            domain_check=domain_check,
            on_result=show,
            on_error=lambda f, m: click.echo(f"error: {m}", err=True),
        )
    except (BundleError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    if errors:
        click.echo(f"{len(errors)} of {len(files)} file(s) failed", err=True)
        raise SystemExit(1)
