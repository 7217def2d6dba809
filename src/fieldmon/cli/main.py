from __future__ import annotations

import contextlib
from pathlib import Path

import click

from fieldmon import __version__
from fieldmon.model.loading import PRECISIONS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fieldmon")
def main() -> None:
    """Species detections from passive acoustic recordings.

    Scans recorder archives in 2 s windows with a multiscale CNN trained by
    dynamic triplet loss, and marks sounds the model does not know as "unknown".
    """


@main.command()
@click.argument("model", default="default")
@click.option("--json", "as_json", is_flag=True, help="Print the bundle's model.json as it is (every setting).")
def info(model: str, as_json: bool) -> None:
    """Summarise a model bundle: species, network, training data, validation scores,
    open-set threshold and status.

    MODEL is a bundle directory, or "default" for the shipped model.
    """
    from fieldmon.cli.info import print_model_json, show_model_info

    if as_json:
        print_model_json(model)
    else:
        show_model_info(model)


def _zone(ctx, param, value):
    """--tz: an IANA zone, checked here so that a typo is a usage error."""
    if value is None:
        return None
    from fieldmon.recorder import parse_zone

    try:
        parse_zone(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a known time zone (an IANA name such as Europe/Berlin)",
                                 param=param) from None
    return value


POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.FloatRange(min=0.0)


class ThresholdOrAuto(click.ParamType):
    """A number from 0 to 1, or "auto" (None: calibrated on the validation split)."""

    name = "threshold"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, float):
            return value
        if str(value).strip().lower() == "auto":
            return None
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not 0.0 <= number <= 1.0:
            self.fail(f"{value!r} is not a number from 0 to 1 or auto", param, ctx)
        return number


class BandLimit(click.ParamType):
    """auto, none, or a frequency in Hz up to the model's Nyquist frequency."""

    name = "band_limit"

    def convert(self, value, param, ctx):
        from fieldmon.features import FeatureSettings

        if isinstance(value, float):
            return value
        given = str(value).strip().lower()
        if given in ("auto", "none"):
            return given
        nyquist = FeatureSettings().sample_rate / 2
        try:
            number = float(given)
        except ValueError:
            number = float("nan")
        if not 0 < number <= nyquist:
            self.fail(f"{value!r} is not auto, none or a frequency in Hz from 0 to {nyquist:g}", param, ctx)
        return number


class Duration(click.ParamType):
    """A duration with units: 90s, 20m, 2h, 1h30m."""

    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        import re

        text = str(value).strip().lower()
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", text)
        if not text or parts is None:
            self.fail(f"{value!r} is not a duration with units, such as 90s, 20m, 2h or 1h30m", param, ctx)
        hours, minutes, seconds = (float(p) if p else 0.0 for p in parts.groups())
        total = hours * 3600 + minutes * 60 + seconds
        if total <= 0:
            self.fail(f"{value!r} must be longer than zero", param, ctx)
        return total


@main.command()
@click.argument("clips", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option("--network", type=click.Choice(["compact", "paper"]), default=None,
              help="compact (default): the multiscale CNN made trainable on a CPU (0.5 GFLOP per window). "
                   "paper: the paper's network (7.56 GFLOP; a GPU job) with the paper's recipe. "
                   "With --base: the base model's.")
@click.option("--loss", type=click.Choice(["triplet", "crossentropy"]), default="triplet", show_default=True,
              help="triplet: the paper's method. crossentropy: the same CNN with a softmax head (MS-CNN baseline).")
@click.option("--base", type=str, default=None,
              help="Start from this model ('default' or a directory): its network and weights are fine-tuned on "
                   "CLIPS with the triplet loss (the species are CLIPS's own). Without a budget: --time-budget 20m.")
@click.option("--freeze-trunk", is_flag=True,
              help="With --base: train only the dense embedding head, on the base trunk's outputs (fastest; "
                   "default budget 2000 steps).")
@click.option("--head-warmup", "head_warmup_steps", type=click.IntRange(min=0), default=None,
              help="With --base: first train the dense head alone on the base trunk's outputs for this many "
                   "steps (seconds on a CPU), then the whole network.  [default: 0]")
@click.option("--steps", type=POSITIVE, default=None, help="Budget in optimisation steps.")
@click.option("--epochs", type=POSITIVE, default=None, help="Budget in passes over the training windows.")
@click.option("--time-budget", type=Duration(), default=None,
              help="Wall-clock budget, e.g. 20m, 90s or 2h: train until then (alone, or as a cap on --steps or "
                   "--epochs), keep the best weights by validation and write the model. Ctrl-C does the same early.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train: auto takes the GPU when there is one.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds the split, the initial weights, the mini-batches and the augmentation.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --out.")
@click.option("--optimizer", type=click.Choice(["adamw", "adagrad", "adam"]), default=None,
              help="Default: adamw (compact), adagrad (paper; adam for its crossentropy baseline).")
@click.option("--lr", type=click.FloatRange(min=0.0, max=10.0), default=1e-3, show_default=True, help="Peak learning rate.")
@click.option("--trunk-lr-scale", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=1.0,
              show_default=True, help="The convolutional trunk's learning rate as a share of --lr (e.g. 0.1 to "
                                      "fine-tune a --base model's trunk more gently than its head).")
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default=None,
              help="Learning rate over the budget. Default: cosine (compact), constant (paper).")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=None,
              help="Linear warm-up of the learning rate. Default: 50 (compact), 0 (paper).")
@click.option("--augment", default=None, callback=lambda ctx, param, value: _augmentations(value, param),
              help="Comma-separated feature augmentations of training windows: roll, specaugment, noise-floor, "
                   "tilt, stretch, mix, lowpass, mel-shift, filter, or none. "
                   "Default: roll,specaugment,noise-floor,tilt (compact), none (paper).")
@click.option("--triplet-update", type=click.Choice(["minibatch", "paper"]), default="minibatch", show_default=True,
              help="minibatch: one update per mini-batch over all its semi-hard triplets. "
                   "paper: updates on batches of at most --triplet-batch triplets, as in the paper.")
@click.option("--triplet-batch", type=POSITIVE, default=50, show_default=True,
              help="With --triplet-update paper: triplets per update.")
@click.option("--windows-per-class", type=click.IntRange(min=2), default=5, show_default=True,
              help="Windows of every species in each mini-batch.")
@click.option("--crossentropy-weight", type=click.FloatRange(min=0.0, max=10.0), default=0.0, show_default=True,
              help="With the triplet loss: add this weight times the cross-entropy of a cosine-softmax classifier "
                   "on the embedding, trained alongside and then discarded. 0: the paper's triplet loss alone.")
@click.option("--distinct-clips/--any-clips", default=None,
              help="Draw a species' windows in a mini-batch from different clips, so that positive pairs "
                   "are different recordings. Default: --distinct-clips (compact), --any-clips (paper).")
@click.option("--clean-batch-norm/--running-batch-norm", default=False, show_default=True,
              help="Before each validation check, fit the batch-normalisation statistics on 1,024 clean "
                   "training windows drawn at random, instead of keeping the running averages of the "
                   "augmented, species-balanced mini-batches.")
@click.option("--mlp-init", type=click.Choice(["class-means", "random"]), default=None,
              help="Where the MLP on the embeddings starts: class-means, the nearest-class-mean classifier "
                   "(at the softmax temperature validation prefers), or random (the paper's). "
                   "Default: class-means (compact), random (paper).")
@click.option("--batch-size", type=POSITIVE, default=None, help="Mini-batch size (default: windows-per-class x species).")
@click.option("--hop", type=click.FloatRange(min=0.05, max=60.0), default=0.5, show_default=True,
              help="Seconds between training windows.")
@click.option("--weight-decay", type=NON_NEGATIVE, default=1e-4, show_default=True,
              help="Weight decay of the network's optimiser.")
@click.option("--sam-rho", type=click.FloatRange(min=0.0, max=1.0), default=0.0, show_default=True,
              help="Sharpness-aware minimisation: take each mini-batch's gradient again at the weights this far "
                   "along its first gradient (e.g. 0.05; twice the cost per step). 0: plain updates.")
@click.option("--average", type=click.FloatRange(min=0.0, max=1.0, min_open=True, max_open=True), default=None,
              help="Validate and keep an exponential moving average of the weights with this decay per step "
                   "(e.g. 0.995) instead of the weights themselves.")
@click.option("--dropout", type=click.FloatRange(min=0.0, max=1.0, max_open=True), default=None,
              help="Dropout before each dense layer while training (default: the network's; compact 0, paper 0.5).")
@click.option("--pooling", type=click.Choice(["mean", "mean-std"]), default=None,
              help="How the compact network pools its last maps over time: mean, or mean-std (statistics "
                   "pooling: each map's mean and standard deviation). Default: mean.")
@click.option("--adagrad-initial-accumulator", type=NON_NEGATIVE, default=0.1, show_default=True,
              help="Adagrad's starting sum of squares (Keras/TensorFlow's default; 0 is torch's).")
@click.option("--margin-start", type=click.FloatRange(min=0.0, max=4.0), default=0.2, show_default=True,
              help="Triplet margin at the start (dynamic margin, Algorithm 1).")
@click.option("--margin-step", type=click.FloatRange(min=0.0, max=4.0), default=0.05, show_default=True,
              help="How much the margin grows when semi-hard triplets run short.")
@click.option("--margin-max", type=click.FloatRange(min=0.0, max=4.0), default=0.6, show_default=True,
              help="The margin never grows beyond this.")
@click.option("--margin-threshold", type=click.IntRange(min=0), default=15, show_default=True,
              help="Fewer semi-hard triplets than this in three mini-batches in a row grow the margin.")
@click.option("--eval-every", type=POSITIVE, default=25, show_default=True, help="Steps between validation checks.")
@click.option("--checkpoint-every", type=POSITIVE, default=10, show_default=True,
              help="Steps between checkpoints in OUT/checkpoint (for --resume).")
@click.option("--open-set-threshold", type=ThresholdOrAuto(), default=None,
              help="Reject a window as unknown when its open-set score is below this (0 to 1). Default: auto, "
                   "the highest threshold (at most 0.5 with --open-set species) that costs at most 0.03 "
                   "of validation macro-F1.")
@click.option("--open-set", type=click.Choice(["species", "shared", "nearest-window"]), default=None,
              help="How a window is scored as known: by its distance to the predicted species' mean under that "
                   "species' own Gaussian (species) or one shared by all species (shared), or by its similarity "
                   "to the nearest training window (nearest-window; README, 'Open-set rejection'). "
                   "Default: species.")
@click.option("--band-limit", type=BandLimit(), default=None,
              help="Leave the Mel bands above this frequency (Hz) empty in every window, in training and in "
                   "scans. Default: auto, the lowest Nyquist frequency among the clips, so that clips recorded at "
                   "a lower rate cannot teach the model their bandwidth instead of the species; none: keep them.")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also fit the shallow baseline (log-Mel and MFCC statistics, logistic regression) on the "
                   "same split and print both scores.")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path), default=None,
              help="Feature cache directory (default ~/.cache/fieldmon/features).")
@click.option("--add-verified", "verified", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A review page's verdicts CSV: windows marked correct (or wrong with the right species) are cut "
                   "from the recordings into OUT/verified_clips and join the train split; see the README.")
@click.option("--quiet", is_flag=True, help="No progress: only warnings, how training ended, the final "
                                           "validation score and where the model was written.")
def train(clips, out, base, steps, epochs, time_budget, device, seed, resume, cache_dir, verified, quiet,
          **options) -> None:
    """Train a species model on labelled CLIPS: a folder with one sub-folder per
    species, or a CSV manifest with path,label[,split] columns.

    The compact network trains in hours on a CPU (about 2.5 s per step of 160 windows
    on two cores); the paper's network takes about half a minute per step on such a
    CPU and is a GPU job; --base fine-tunes a trained model in minutes on a CPU.
    """
    from fieldmon.cli.train import TrainDisplay, fail
    from fieldmon.train.api import TrainCallbacks, train as run_training
    from fieldmon.train.settings import TrainSettings

    if base is not None and options["network"] is not None:
        raise click.UsageError("--network does not apply with --base: the base model's network is trained")
    if base is not None and options["pooling"] is not None:
        raise click.UsageError("--pooling does not apply with --base: the base model's layout is trained")
    if options["freeze_trunk"] and base is None:
        raise click.UsageError("--freeze-trunk needs --base: the trunk to freeze is the base model's")
    if options["head_warmup_steps"] and (base is None or options["freeze_trunk"]):
        raise click.UsageError("--head-warmup needs --base without --freeze-trunk: it warms up the base's head "
                               "before the whole network trains")
    if steps is None and epochs is None and time_budget is None and not resume:
        if base is None:
            raise click.UsageError("give a budget: --steps N, --epochs N or --time-budget 20m")
        if options["freeze_trunk"]:
            steps = 2000
        else:
            time_budget = 20 * 60.0
    settings = None  # with --resume and no budget: the checkpoint's own settings
    if steps is not None or epochs is not None or time_budget is not None:
        try:
            settings = TrainSettings.for_network(options.pop("network") or "compact", steps=steps, epochs=epochs,
                                                 time_budget_seconds=time_budget, seed=seed,
                                                 **_train_options(options))
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
    display = TrainDisplay(quiet)
    callbacks = TrainCallbacks(display.message, display.clips_found, display.step, display.result)
    try:
        run_training(clips, out, settings, base=base, device=device, cache_dir=cache_dir, resume=resume,
                     callbacks=callbacks, verified=verified)
    except KeyboardInterrupt:
        display.close()
        raise SystemExit(130) from None
    except Exception as exc:
        display.close()
        from fieldmon.model.metadata import BundleError
        from fieldmon.train.dataset import DatasetError

        if isinstance(exc, (DatasetError, BundleError, ValueError, OSError)):
            fail(exc)
        raise
    display.close()


def _train_options(options: dict) -> dict:
    """CLI option values as TrainSettings fields; options left unset keep the recipe's."""
    names = {"lr": "learning_rate", "hop": "hop_seconds"}
    return {names.get(k, k): v for k, v in options.items() if v is not None}


def _augmentations(value: str | None, param: click.Parameter) -> tuple[str, ...] | None:
    """--augment roll,tilt -> ("roll", "tilt"); "none" -> ()."""
    if value is None:
        return None
    from fieldmon.train.augment import AUGMENTATIONS

    given = value.strip().lower()
    names = () if given == "none" else tuple(a.strip() for a in given.split(",") if a.strip())
    unknown = [a for a in names if a not in AUGMENTATIONS]
    if unknown:
        raise click.BadParameter(f"{unknown[0]!r} is not one of {', '.join(AUGMENTATIONS)} or none", param=param)
    return names


@main.command()
@click.argument("model")
@click.argument("clips", type=click.Path(exists=True, path_type=Path))
@click.option("--outliers", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of clips of species the model never saw; reports their rejection.")
@click.option("--split", type=click.Choice(["train", "validation", "test"]), default=None,
              help="Only the clips of this split of a manifest, e.g. MODEL/split.csv saved by fieldmon train.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the metrics as JSON.")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path), default=None,
              help="Feature cache directory (default ~/.cache/fieldmon/features).")
@click.option("--precision", type=click.Choice(list(PRECISIONS)), default="fp32", show_default=True,
              help="fp32-onnx: the same numbers on ONNX Runtime. int8: the model's quantised trunk "
                   "(see fieldmon quantize). bf16, fp16: the trunk under torch.autocast (scans use them on GPUs).")
def evaluate(model, clips, outliers, split, json_out, cache_dir, precision) -> None:
    """Macro-F1 per window and per file, accuracy, per-species scores and the confusion
    matrix of MODEL on labelled CLIPS (folder or manifest)."""
    from fieldmon.audio import AudioReadError
    from fieldmon.cli.train import fail, print_evaluation
    from fieldmon.evaluation.evaluate import evaluate as run_evaluation
    from fieldmon.model.metadata import BundleError
    from fieldmon.train.dataset import DatasetError

    try:
        result = run_evaluation(model, clips, outliers=outliers, split=split, cache_dir=cache_dir, precision=precision)
    except (AudioReadError, BundleError, DatasetError, ValueError) as exc:
        fail(exc)
    print_evaluation(result, json_out)


@main.command()
@click.argument("model")
@click.argument("clips", type=click.Path(exists=True, path_type=Path))
@click.option("--windows", type=click.IntRange(1, 100_000), default=1024, show_default=True, help="Calibration windows.")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path), default=None,
              help="Feature cache directory (default ~/.cache/fieldmon/features).")
def quantize(model, clips, windows, cache_dir) -> None:
    """Add an int8 version of MODEL's convolutions for `--precision int8`, calibrated
    on windows of the training clips CLIPS (folder or manifest); open-set rejection is
    calibrated again on int8 embeddings of the validation clips. Needs
    pip install 'fieldmon[int8]'. Measure it with `fieldmon evaluate --precision int8`."""
    from fieldmon.audio import AudioReadError
    from fieldmon.cli.train import fail
    from fieldmon.model.metadata import BundleError
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
@click.option("--hop", type=click.FloatRange(0.1, 3600.0), default=2.0, show_default=True,
              help="Seconds between window starts (0.1 to 3600).")
@click.option("--channel", type=click.IntRange(min=0), default=None,
              help="Use this channel (0-based) instead of the downmix.")
@click.option("--top-k", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Alternatives stored per window (at most the model's species).")
@click.option("--min-score", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Drop windows whose top score is lower (the default keeps every window).")
@click.option("--embeddings", is_flag=True, help="Also store the 128-D embedding of every window.")
@click.option("--tz", default=None, callback=_zone,
              help="IANA time zone of recorders that name files in local time (Song Meter), to give their "
                   "windows a UTC start_time. A new zone for an existing output retimes its rows.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: the GPU when torch sees one.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=None,
              help="Windows per batch through features and network [default: 16 on a CPU, 64 on a GPU].")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Feature processes (each decodes and computes the features of one file at a time; the "
                   "network gets the cores they leave), or else decoding threads. [default: half the cores "
                   "for processes, 2 threads]")
@click.option("--feature-processes/--no-feature-processes", default=None,
              help="Compute the features in --workers processes of their own beside the network [default: with "
                   "fp32-onnx and int8, whose network is light enough to share the cores; fp32 computes them "
                   "in the scan's process].")
@click.option("--precision", type=click.Choice(list(PRECISIONS)), default="fp32", show_default=True,
              help="On CPU, with pip install 'fieldmon[int8]': fp32-onnx gives the same numbers about 2x "
                   "faster; int8 is faster still, with the model's quantised trunk. On a GPU: bf16 or fp16 "
                   "(torch.autocast, channels_last).")
@click.option("--time-limit", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Stop cleanly after this many seconds (finished files are kept; exit status 130).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: run on a Ray cluster (pip install 'fieldmon[ray]'); see the README.")
@click.option("--address", default=None, help="Ray cluster to join (e.g. auto or HEAD:6379); default: a private local one.")
@click.option("--ray-cpus", type=click.IntRange(min=1), default=None, help="CPUs of the private local Ray instance (default: all).")
@click.option("--ray-temp-dir", default=None, help="Temp dir of the private local Ray instance (default: OUT/_fieldmon/ray when short enough).")
@click.option("--ray-object-store-gb", type=click.FloatRange(0.1, 1024.0), default=1.0, show_default=True,
              help="Object store cap of the private local Ray instance.")
@click.option("--ray-actors", type=click.IntRange(min=1), default=None, help="Model actors (default: one per GPU, or from the CPUs).")
@click.option("--ray-actor-cpus", type=click.FloatRange(min=0.0, min_open=True), default=None, help="CPUs reserved per CPU model actor.")
@click.option("--quiet", is_flag=True, help="Only the summary.")
def scan(recordings, out, model, hop, channel, top_k, min_score, embeddings, tz, device, batch_size, workers,
         feature_processes, precision, time_limit, engine, address, ray_cpus, ray_temp_dir, ray_object_store_gb, ray_actors,
         ray_actor_cpus, quiet) -> None:
    """Scan RECORDINGS (a folder, searched recursively, or one file) into per-window detections.

    Rerunning the same command scans only new or changed files. Exit status: 0 all
    files scanned; 3 some files failed (listed in the per-file table); 130 interrupted
    (finished files are kept); 1 the scan could not run; 2 bad usage.
    """
    from fieldmon.scan.feature_workers import FeatureWorkers, default_workers
    from fieldmon.scan.options import RayOptions, RunOptions, uses_feature_processes

    ray = RayOptions(address, ray_cpus, ray_temp_dir, ray_object_store_gb, ray_actors, ray_actor_cpus)
    if engine != "ray" and ray != RayOptions(object_store_gb=ray_object_store_gb):
        raise click.UsageError("--address and the --ray-* options need --engine ray")
    options = RunOptions(device, batch_size, workers, feature_processes, precision=precision,
                         time_limit_s=time_limit, engine=engine, ray=ray)
    # Feature processes start first, so that they load their libraries while this process
    # imports torch and loads the model.
    workers_started = FeatureWorkers(workers or default_workers(True)) if uses_feature_processes(options) else None
    try:
        from fieldmon.cli.scan import ScanDisplay
        from fieldmon.model.metadata import BundleError
        from fieldmon.outputs.store import StoreError
        from fieldmon.scan.feature_workers import FeatureWorkerError
        from fieldmon.scan.pipeline import ScanSettings, scan as run_scan

        settings = ScanSettings(hop_seconds=hop, channel=channel, top_k=top_k, min_score=min_score,
                                embeddings=embeddings, tz=tz)
        display = ScanDisplay(quiet)
        try:
            summary = run_scan(recordings, out, model, settings, options, display, workers_started)
        except (BundleError, StoreError, FeatureWorkerError, ValueError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:  # a second Ctrl-C or SIGTERM: stop now
            display.close()
            click.echo("stopped at once: files finished before the stop are kept; run the same command to continue",
                       err=True)
            raise SystemExit(130) from None
    finally:
        if workers_started is not None:
            workers_started.close()  # scan() closes them; this is for errors before it ran
    display.finish(summary, str(out), str(recordings))
    raise SystemExit(summary.exit_code)


@main.command()
@click.argument("detections", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--tz", required=True, callback=_zone,
              help="IANA time zone of the recorders' clocks, e.g. Europe/Berlin.")
def retime(detections, tz) -> None:
    """Set the recorders' time zone of a scan's output without scanning again.

    Rewrites start_time (UTC) of every row and of the per-file table from the recorders'
    local time in zone --tz (Song Meter names, GUANO without offset); files whose time
    is UTC already (AudioMoth) keep it, and their local_time follows the zone. Later
    scans into DETECTIONS take the same --tz.
    """
    from fieldmon.outputs.store import StoreError, retime as run_retime

    try:
        result = run_retime(detections, tz)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    if not result.changed:
        click.echo(f"{detections} is in --tz {tz} already; nothing to change")
        return
    click.echo(f"{detections}: {result.rows_retimed()} from --tz {result.old_tz or 'none'} to --tz {tz} "
               f"(files in local time that got their UTC start_time: {result.files_from_local}; "
               f"files in UTC that got their local_time: {result.files_from_utc})")


def _filters(min_score, species, site, date_from, date_to, thresholds=None):
    import pandas as pd

    from fieldmon.outputs.tables import Filters

    if date_from and date_to and date_from > date_to:
        raise click.BadParameter(f"{date_from} is after --to {date_to}", param_hint="--from")
    path, by_species = thresholds or (None, {})
    return Filters(min_score, tuple(species), tuple(site), pd.Timestamp(date_from) if date_from else None,
                   pd.Timestamp(date_to) if date_to else None, tuple(sorted(by_species.items())),
                   str(path) if path else "")


def _thresholds_file(ctx, param, value):
    """--thresholds: read and checked here, so that a bad file is a usage error naming it."""
    if value is None:
        return None
    from fieldmon.outputs.verdicts import VerdictsError, read_thresholds

    try:
        return value, read_thresholds(value)
    except VerdictsError as exc:
        raise click.BadParameter(str(exc), param=param) from None


thresholds_option = click.option(
    "--thresholds", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
    callback=_thresholds_file,
    help="Thresholds JSON from fieldmon review-summary --out: drop each reviewed species' windows scoring below "
         "its threshold (all of them where no score reached the target precision); other species are kept.")


def _read(detections: Path, filters):
    from fieldmon.outputs.tables import apply_filters, read_scan, unmatched_filters

    try:
        output = read_scan(detections)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    for problem in unmatched_filters(output, filters):
        click.echo(f"warning: {problem}", err=True)
    filtered = apply_filters(output, filters)
    if len(output.detections) and not len(filtered.detections):
        click.echo(f"warning: no detections are left after the filters ({filters.describe()})", err=True)
    return filtered


@contextlib.contextmanager
def _writing(out: Path):
    """A failure to write the output as a one-line error that names it, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise click.ClickException(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from exc


def _iso_date(ctx, param, value):
    if value is None:
        return None
    import datetime

    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date as YYYY-MM-DD (e.g. 2024-05-31)", param=param) from None


_filter_options = [
    click.option("--min-score", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
                 help="Only windows whose top score is at least this."),
    click.option("--species", multiple=True,
                 help="Only this species (repeatable; case and spaces do not matter: 'Kikihia muta')."),
    click.option("--site", multiple=True, help="Only this site (repeatable)."),
    click.option("--from", "date_from", default=None, callback=_iso_date, help="First date, YYYY-MM-DD."),
    click.option("--to", "date_to", default=None, callback=_iso_date, help="Last date, YYYY-MM-DD."),
]


def filter_options(command):
    for option in reversed(_filter_options):
        command = option(command)
    return command


@main.command()
@click.argument("detections", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Report directory.")
@click.option("--model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The model directory the scan used, when it is not the shipped default: its validation "
                   "scores decide whether the report is marked preliminary.")
@filter_options
@thresholds_option
def report(detections, out, model, min_score, species, site, date_from, date_to, thresholds) -> None:
    """Survey report of a scan: one self-contained HTML file and CSV tables (species
    summary, score distributions, daily detections, diel activity per recorded hour,
    effort, unknown share)."""
    from fieldmon.outputs.report import write_report

    filters = _filters(min_score, species, site, date_from, date_to, thresholds)
    output = _read(detections, filters)
    with _writing(out):
        path = write_report(output, out, filters, source=str(detections), model=model)
    click.echo(f"wrote {path} and its CSV tables")


@main.command()
@click.argument("detections", type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["raven", "audacity", "csv"]), required=True,
              help="raven: selection tables; audacity: label tracks; csv: one flat table.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Export directory.")
@filter_options
@thresholds_option
def export(detections, fmt, out, min_score, species, site, date_from, date_to, thresholds) -> None:
    """Export detections: Raven Pro selection tables or Audacity label tracks (one per
    audio file, in the recordings' folder layout), or one flat CSV."""
    from fieldmon.outputs.export import export as run_export

    output = _read(detections, _filters(min_score, species, site, date_from, date_to, thresholds))
    with _writing(out):
        written = run_export(output, fmt, out)
    click.echo(f"wrote {len(written)} file(s) to {out}")


@main.command()
@click.argument("detections", type=click.Path(exists=True, path_type=Path))
@click.option("--per-species", type=click.IntRange(1, 100_000), default=10, show_default=True,
              help="Clips per species.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the clips, their spectrograms and index.csv.")
@click.option("--mode", type=click.Choice(["best", "random"]), default="best", show_default=True,
              help="The best-scoring windows, or a random sample of each species' windows.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="For --mode random.")
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
    with _writing(out):
        table = extract_clips(output, root, out, per_species, mode, seed)
    click.echo(f"wrote {len(table)} clips to {out} (index.csv)")


@main.command()
@click.argument("detections", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for index.html, its clips (FLAC) and spectrograms (PNG) in media/, and sample.csv.")
@click.option("--per-species", type=click.IntRange(1, 10_000), default=20, show_default=True,
              help="Windows to review per species (all of a species' windows when it has fewer).")
@click.option("--strata", type=click.IntRange(1, 20), default=4, show_default=True,
              help="Score strata per species: equal-width bins over the species' score range, sampled evenly.")
@click.option("--context", type=click.FloatRange(0.0, 30.0), default=3.0, show_default=True,
              help="Seconds of audio before and after the window in each clip (0 to 30).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seeds the sample.")
@click.option("--audio-root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Where the recordings are now (default: the folder that was scanned).")
@filter_options
def review(detections, out, per_species, strata, context, seed, audio_root, min_score, species, site, date_from,
           date_to) -> None:
    """A review page: a sample of each species' detections, stratified by score, as one
    HTML page (works offline, e.g. from a USB stick) with a clip and spectrogram of every
    window and buttons correct / wrong / unsure. The page saves the verdicts as a CSV
    for fieldmon review-summary and fieldmon train --add-verified."""
    from fieldmon.outputs.review import ReviewSettings, write_review

    output = _read(detections, _filters(min_score, species, site, date_from, date_to))
    root = audio_root or output.metadata.get("root")
    if root is None:
        raise click.UsageError("the scan does not record its folder; pass --audio-root")
    settings = ReviewSettings(per_species=per_species, strata=strata, context_s=context, seed=seed)
    with _writing(out):
        result = write_review(output, root, out, settings, warn=lambda line: click.echo(line, err=True))
    per = result.sample.groupby("species").size() if len(result.sample) else {}
    click.echo(f"wrote {result.page}: {len(result.sample)} windows of {len(per)} species to review"
               + (f" ({len(result.skipped)} left out: audio not readable)" if result.skipped else ""))
    if not len(result.sample):
        click.echo("warning: nothing to review: no window has a species (all unknown, or the filters left none)",
                   err=True)


@main.command("review-summary")
@click.argument("verdicts", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--target-precision", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.9, show_default=True,
              help="The precision each species' score threshold must reach (above 0, at most 1).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the thresholds as JSON for report/export --thresholds, and the table beside it as CSV.")
def review_summary(verdicts, target_precision, out) -> None:
    """Precision per species from VERDICTS (the CSV a review page saves), with a 95 %
    interval, and the score threshold per species that reaches --target-precision.

    Precision is estimated over all of a species' detections from the score-stratified
    sample (Wilson interval at the weighted sample's effective size); unsure windows are
    not counted."""
    from fieldmon.outputs.verdicts import VerdictsError, precision_table, read_verdicts, write_thresholds

    try:
        table = precision_table(read_verdicts(verdicts), target_precision)
    except VerdictsError as exc:
        raise click.ClickException(str(exc)) from exc
    if table["precision"].isna().all():
        raise click.ClickException(f"{verdicts}: no window is marked correct or wrong; mark some on the review "
                                   "page and save the CSV again")
    click.echo(_precision_lines(table, target_precision))
    if out is not None:
        with _writing(out):
            write_thresholds(table, out, target_precision, str(verdicts))
            table.to_csv(out.with_suffix(".csv"), index=False)
        click.echo(f"wrote {out} (for report/export --thresholds) and {out.with_suffix('.csv')}")


def _precision_lines(table, target: float) -> str:
    lines = [f"{'species':<30} {'correct':>7} {'wrong':>5} {'unsure':>6} {'precision':>9} {'95 % interval':>13}  "
             f"threshold for {target:g}"]
    for row in table.itertuples(index=False):
        if row.precision != row.precision:  # NaN: nothing marked correct or wrong
            lines.append(f"{row.species:<30} {row.correct:>7} {row.wrong:>5} {row.unsure:>6} {'-':>9} {'-':>13}  "
                         "not reviewed")
            continue
        reached = (f"{row.threshold:.3f} (precision {row.precision_at_threshold:.2f}, "
                   f"{row.low_at_threshold:.2f}-{row.high_at_threshold:.2f}, {int(row.reviewed_at_threshold)} reviewed)"
                   if row.threshold == row.threshold else "not reached at any reviewed score")
        lines.append(f"{row.species:<30} {row.correct:>7} {row.wrong:>5} {row.unsure:>6} {row.precision:>9.2f} "
                     f"{f'{row.low:.2f}-{row.high:.2f}':>13}  {reached}")
    lines.append("precision: stratified estimate over all detections of the species; interval: Wilson at the "
                 "weighted sample's effective size")
    return "\n".join(lines)
