from __future__ import annotations

from pathlib import Path

import click

from fieldmon import __version__
from fieldmon.model.bundle import PRECISIONS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fieldmon")
def main() -> None:
    """Species detections from passive acoustic recordings.

    Scans recorder archives in 2 s windows with a multiscale CNN trained by
    dynamic triplet loss, and marks sounds the model does not know as "unknown".
    """


@main.command()
@click.argument("model", default="default")
def info(model: str) -> None:
    """Describe a model bundle: classes, settings, metrics and provenance.

    MODEL is a bundle directory, or "default" for the shipped model.
    """
    from fieldmon.cli.info import show_model_info

    show_model_info(model)


@main.command()
@click.argument("clips", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option("--loss", type=click.Choice(["triplet", "crossentropy"]), default="triplet", show_default=True,
              help="triplet: the paper's method. crossentropy: the same CNN with a softmax head (MS-CNN baseline).")
@click.option("--base", type=str, default=None,
              help="Reuse this model's convolutional trunk and train only the dense embedding head (fast on CPU).")
@click.option("--steps", type=int, default=None, help="Budget in optimisation steps.")
@click.option("--epochs", type=int, default=None, help="Budget in passes over the training windows.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --out.")
@click.option("--triplet-update", type=click.Choice(["minibatch", "paper"]), default="minibatch", show_default=True,
              help="minibatch: one update per mini-batch over all its semi-hard triplets. "
                   "paper: updates on batches of at most --triplet-batch triplets, as in the paper.")
@click.option("--triplet-batch", type=int, default=50, show_default=True)
@click.option("--windows-per-class", type=int, default=5, show_default=True)
@click.option("--distinct-clips/--any-clips", default=False, show_default=True,
              help="Draw a species' windows in a mini-batch from different clips, so that positive pairs "
                   "are different recordings.")
@click.option("--batch-size", type=int, default=None, help="Mini-batch size (default: windows-per-class x species).")
@click.option("--hop", type=float, default=2.0, show_default=True, help="Seconds between training windows.")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--dropout", type=float, default=None,
              help="Dropout before each dense layer while training (default: the network's, the paper's 0.5).")
@click.option("--adagrad-initial-accumulator", type=float, default=0.1, show_default=True,
              help="Adagrad's starting sum of squares (Keras/TensorFlow's default; 0 is torch's).")
@click.option("--margin-start", type=float, default=0.2, show_default=True)
@click.option("--margin-step", type=float, default=0.05, show_default=True)
@click.option("--margin-max", type=float, default=0.6, show_default=True)
@click.option("--margin-threshold", type=int, default=15, show_default=True)
@click.option("--eval-every", type=int, default=25, show_default=True, help="Steps between validation checks.")
@click.option("--checkpoint-every", type=int, default=10, show_default=True)
@click.option("--open-set-threshold", type=float, default=0.01, show_default=True,
              help="Reject a window as unknown when its open-set score is below this.")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path), default=None,
              help="Feature cache directory (default ~/.cache/fieldmon/features).")
@click.option("--quiet", is_flag=True)
def train(clips, out, base, steps, epochs, device, seed, resume, cache_dir, quiet, **options) -> None:
    """Train a species model on labelled CLIPS: a folder with one sub-folder per
    species, or a CSV manifest with path,label[,split] columns.

    One step of the full network takes about a minute on a 2-core CPU and well under
    a second on a GPU; --base trains in minutes on a CPU.
    """
    from fieldmon.cli.train import TrainDisplay, fail
    from fieldmon.train.api import TrainCallbacks, train as run_training
    from fieldmon.train.settings import TrainSettings

    if steps is None and epochs is None and not resume:
        if base is None:
            raise click.UsageError("give a budget: --steps N or --epochs N (one full-network step is ~1 min on a CPU)")
        steps = 2000
    names = {"lr": "learning_rate", "hop": "hop_seconds"}
    settings = None  # with --resume and no budget: the checkpoint's own settings
    if steps is not None or epochs is not None:
        try:
            settings = TrainSettings(steps=steps, epochs=epochs, seed=seed,
                                     **{names.get(k, k): v for k, v in options.items()})
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
    display = TrainDisplay(quiet)
    callbacks = TrainCallbacks(display.message, display.clips_found, display.step)
    try:
        run_training(clips, out, settings, base=base, device=device, cache_dir=cache_dir, resume=resume,
                     callbacks=callbacks)
    except KeyboardInterrupt:
        display.close()
        raise SystemExit(130) from None
    except Exception as exc:
        display.close()
        from fieldmon.model.bundle import BundleError
        from fieldmon.train.dataset import DatasetError

        if isinstance(exc, (DatasetError, BundleError, ValueError, FileExistsError, FileNotFoundError)):
            fail(exc)
        raise
    display.close()


@main.command()
@click.argument("model")
@click.argument("clips", type=click.Path(exists=True, path_type=Path))
@click.option("--outliers", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of clips of species the model never saw; reports their rejection.")
@click.option("--split", type=click.Choice(["train", "validation", "test"]), default=None,
              help="Only the clips of this split of a manifest, e.g. MODEL/split.csv saved by fieldmon train.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the metrics as JSON.")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path), default=None)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="fp32-onnx: the same numbers on ONNX Runtime. int8: the model's quantised trunk "
                   "(see fieldmon quantize). bf16, fp16: the trunk under torch.autocast (scans use them on GPUs).")
def evaluate(model, clips, outliers, split, json_out, cache_dir, precision) -> None:
    """Macro-F1 per window and per file, accuracy, per-species scores and the confusion
    matrix of MODEL on labelled CLIPS (folder or manifest)."""
    from fieldmon.audio import AudioReadError
    from fieldmon.cli.train import fail, print_evaluation
    from fieldmon.evaluation.evaluate import evaluate as run_evaluation
    from fieldmon.model.bundle import BundleError
    from fieldmon.train.dataset import DatasetError

    try:
        result = run_evaluation(model, clips, outliers=outliers, split=split, cache_dir=cache_dir, precision=precision)
    except (AudioReadError, BundleError, DatasetError, ValueError) as exc:
        fail(exc)
    print_evaluation(result, json_out)


@main.command()
@click.argument("model")
@click.argument("clips", type=click.Path(exists=True, path_type=Path))
@click.option("--windows", type=int, default=1024, show_default=True, help="Calibration windows.")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path), default=None)
def quantize(model, clips, windows, cache_dir) -> None:
    """Add an int8 version of MODEL's convolutions for `--precision int8`, calibrated
    on windows of the training clips CLIPS (folder or manifest); open-set rejection is
    calibrated again on int8 embeddings of the validation clips. Needs
    pip install 'fieldmon[int8]'. Measure it with `fieldmon evaluate --precision int8`."""
    from fieldmon.audio import AudioReadError
    from fieldmon.cli.train import fail
    from fieldmon.model.bundle import BundleError
    from fieldmon.train.api import quantize as run_quantize
    from fieldmon.train.dataset import DatasetError

    try:
        section = run_quantize(model, clips, windows=windows, cache_dir=cache_dir)
    except (AudioReadError, BundleError, DatasetError, ValueError) as exc:
        fail(exc)
    open_set = section.get("open_set")
    refit = f"; open set fitted on {open_set['fitted_on_windows']} validation windows" if open_set else ""
    click.echo(f"wrote {section['file']} ({section['calibration_windows']} calibration windows{refit})")


@main.command()
@click.argument("recordings", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Detections output (a directory of Parquet parts, e.g. detections.parquet).")
@click.option("--model", default="default", show_default=True, help="Model bundle directory, or 'default'.")
@click.option("--hop", type=float, default=2.0, show_default=True, help="Seconds between window starts.")
@click.option("--channel", type=int, default=None, help="Use this channel (0-based) instead of the downmix.")
@click.option("--top-k", type=int, default=3, show_default=True, help="Alternatives stored per window.")
@click.option("--min-score", type=float, default=0.0, show_default=True,
              help="Drop windows whose top score is lower (the default keeps every window).")
@click.option("--embeddings", is_flag=True, help="Also store the 128-D embedding of every window.")
@click.option("--tz", default=None, help="IANA time zone of recorders that name files in local time (Song Meter).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Decoding threads.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="On CPU, with pip install 'fieldmon[int8]': fp32-onnx gives the same numbers about 2x "
                   "faster; int8 is faster still, with the model's quantised trunk. On a GPU: bf16 or fp16 "
                   "(torch.autocast, channels_last).")
@click.option("--time-limit", type=float, default=None,
              help="Stop cleanly after this many seconds (finished files are kept; exit status 130).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: run on a Ray cluster (pip install 'fieldmon[ray]'); see the README.")
@click.option("--address", default=None, help="Ray cluster to join (e.g. auto or HEAD:6379); default: a private local one.")
@click.option("--ray-cpus", type=int, default=None, help="CPUs of the private local Ray instance (default: all).")
@click.option("--ray-temp-dir", default=None, help="Temp dir of the private local Ray instance (default: OUT/_fieldmon/ray when short enough).")
@click.option("--ray-object-store-gb", type=float, default=1.0, show_default=True,
              help="Object store cap of the private local Ray instance.")
@click.option("--ray-actors", type=int, default=None, help="Model actors (default: one per GPU, or from the CPUs).")
@click.option("--ray-actor-cpus", type=float, default=None, help="CPUs reserved per CPU model actor.")
@click.option("--quiet", is_flag=True, help="Only the summary.")
def scan(recordings, out, model, hop, channel, top_k, min_score, embeddings, tz, device, batch_size, workers,
         precision, time_limit, engine, address, ray_cpus, ray_temp_dir, ray_object_store_gb, ray_actors,
         ray_actor_cpus, quiet) -> None:
    """Scan RECORDINGS (a folder, searched recursively, or one file) into per-window detections.

    Rerunning the same command scans only new or changed files. Exit status: 0 all
    files scanned; 3 some files failed (listed in the per-file table); 130 interrupted
    (finished files are kept); 1 the scan could not run; 2 bad usage.
    """
    from fieldmon.cli.scan import ScanDisplay
    from fieldmon.model.bundle import BundleError
    from fieldmon.outputs.store import StoreError
    from fieldmon.scan.pipeline import RayOptions, RunOptions, ScanSettings, scan as run_scan

    settings = ScanSettings(hop_seconds=hop, channel=channel, top_k=top_k, min_score=min_score,
                            embeddings=embeddings, tz=tz)
    ray = RayOptions(address, ray_cpus, ray_temp_dir, ray_object_store_gb, ray_actors, ray_actor_cpus)
    if engine != "ray" and ray != RayOptions(object_store_gb=ray_object_store_gb):
        raise click.UsageError("--address and the --ray-* options need --engine ray")
    options = RunOptions(device, batch_size, workers, precision=precision, time_limit_s=time_limit, engine=engine,
                         ray=ray)
    display = ScanDisplay(quiet)
    try:
        summary = run_scan(recordings, out, model, settings, options, display)
    except (BundleError, StoreError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    display.finish(summary, str(out))
    raise SystemExit(summary.exit_code)


def _filters(min_score, species, site, date_from, date_to):
    import pandas as pd

    from fieldmon.outputs.tables import Filters

    return Filters(min_score, tuple(species), tuple(site), pd.Timestamp(date_from) if date_from else None,
                   pd.Timestamp(date_to) if date_to else None)


def _read(detections: Path, filters):
    from fieldmon.outputs.tables import apply_filters, read_scan

    try:
        return apply_filters(read_scan(detections), filters)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc


_filter_options = [
    click.option("--min-score", type=float, default=0.0, show_default=True),
    click.option("--species", multiple=True, help="Only this species (repeatable)."),
    click.option("--site", multiple=True, help="Only this site (repeatable)."),
    click.option("--from", "date_from", default=None, help="First date, YYYY-MM-DD."),
    click.option("--to", "date_to", default=None, help="Last date, YYYY-MM-DD."),
]


def filter_options(command):
    for option in reversed(_filter_options):
        command = option(command)
    return command


@main.command()
@click.argument("detections", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Report directory.")
@filter_options
def report(detections, out, min_score, species, site, date_from, date_to) -> None:
    """Survey report of a scan: one self-contained HTML file and CSV tables (species
    summary, daily detections, diel activity, effort, unknown share)."""
    from fieldmon.outputs.report import write_report

    filters = _filters(min_score, species, site, date_from, date_to)
    path = write_report(_read(detections, filters), out, filters, source=str(detections))
    click.echo(f"wrote {path} and its CSV tables")


@main.command()
@click.argument("detections", type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["raven", "audacity", "csv"]), required=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Export directory.")
@filter_options
def export(detections, fmt, out, min_score, species, site, date_from, date_to) -> None:
    """Export detections: Raven Pro selection tables or Audacity label tracks (one per
    audio file, in the recordings' folder layout), or one flat CSV."""
    from fieldmon.outputs.export import export as run_export

    written = run_export(_read(detections, _filters(min_score, species, site, date_from, date_to)), fmt, out)
    click.echo(f"wrote {len(written)} file(s) to {out}")


@main.command()
@click.argument("detections", type=click.Path(exists=True, path_type=Path))
@click.option("--per-species", type=int, default=10, show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--mode", type=click.Choice(["best", "random"]), default="best", show_default=True,
              help="The best-scoring windows, or a random sample of each species' windows.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--audio-root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Where the recordings are now (default: the folder that was scanned).")
@filter_options
def clips(detections, per_species, out, mode, seed, audio_root, min_score, species, site, date_from, date_to) -> None:
    """Cut the best (or random) detections of each species into short audio clips, with
    a spectrogram PNG each and index.csv, for manual verification."""
    from fieldmon.outputs.export import extract_clips

    output = _read(detections, _filters(min_score, species, site, date_from, date_to))
    root = audio_root or output.metadata.get("root")
    if root is None:
        raise click.UsageError("the scan does not record its folder; pass --audio-root")
    table = extract_clips(output, root, out, per_species, mode, seed)
    click.echo(f"wrote {len(table)} clips to {out} (index.csv)")
