"""``fieldmon info``: a model bundle summarised for a person deciding whether to trust
it; ``--json`` prints model.json itself for everything else.

The summary leaves out what only the machine that trained the model knew: the
training command and the clips' folder are local paths (at most the clips' base name
is shown), and which clips were left out is counted, not listed.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import click

from fieldmon.model.bundle import ModelBundle
from fieldmon.model.metadata import JSON_NAME, BundleError, read_metadata, resolve_model_path
from fieldmon.model.card import TARGET_FILE_MACRO_F1, preliminary_reasons, validation_file_macro_f1
from fieldmon.model.network import count_flops, count_parameters
from fieldmon.model.networks import network_kind

LABEL_WIDTH = 12


def print_model_json(model: str) -> None:
    try:
        path = resolve_model_path(model)
        read_metadata(path)  # a model.json that is not a fieldmon model is named, not printed
    except BundleError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo((path / JSON_NAME).read_text().rstrip("\n"))


def show_model_info(model: str) -> None:
    try:
        path = resolve_model_path(model)
        bundle = ModelBundle.load(path)
        meta = read_metadata(path)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from exc
    width = min(max(shutil.get_terminal_size((100, 24)).columns, 60), 100)
    click.echo(f"{bundle.name} (model id {bundle.model_id})")
    for label, text in summary(bundle, meta, path):
        click.echo(textwrap.fill(text, width, initial_indent=f"{label + ':':<{LABEL_WIDTH}}",
                                 subsequent_indent=" " * LABEL_WIDTH, break_on_hyphens=False, break_long_words=False))
    click.echo(f"every setting: fieldmon info {model} --json")


def summary(bundle: ModelBundle, meta: dict, path: Path) -> list[tuple[str, str]]:
    """(label, text) lines of the summary."""
    fs = bundle.feature_settings
    training, provenance = bundle.training or {}, bundle.provenance or {}
    lines = [("status", status(bundle, path))]
    shape = (getattr(bundle.network.settings, "in_channels", 3), fs.n_mels, fs.n_frames)
    flops = count_flops(bundle.network, shape)  # one forward pass of a zero window: well under a second
    lines.append(("network", f"{network_kind(bundle.network)}, {bundle.loss} loss; {flops / 1e9:.2f} GFLOP per "
                             f"{fs.window_seconds:g} s window, {count_parameters(bundle.network):,} parameters"))
    lines.append(("species", f"{len(bundle.class_names)}: {', '.join(bundle.class_names)}"))
    band = (f" (the top {fs.empty_bands} left empty: the band ends at {fs.band_limit_hz / 1000:g} kHz)"
            if fs.band_limit_hz else "")
    lines.append(("features", f"{fs.sample_rate} Hz, {fs.window_seconds:g} s windows, {fs.n_mels} Mel bands{band}"))
    lines.append(("training", training_line(training, provenance)))
    review = training.get("from_review")
    if review:
        text = (f"{review['clips_added']} verified windows trained on ({review['correct']} correct, "
                f"{review['relabelled']} relabelled), {review.get('to_reject', 0)} to reject")
        calibrated = review.get("open_set")
        if calibrated:
            text += f" (open-set threshold {calibrated['from_threshold']:g} -> {calibrated['threshold']:.3g})"
        lines.append(("review", text))
    for split in ("validation", "test"):
        if split in bundle.metrics:
            lines.append((split, scores_line(bundle.metrics, split)))
    if "validation" not in bundle.metrics:
        lines.append(("validation", "no scores recorded"))
    if bundle.classifier is not None:
        lines.append(("classifier", classifier_line(bundle)))
    if bundle.open_set is None:
        lines.append(("open set", "none: every window gets a species"))
    else:
        calibration = bundle.metrics.get("open_set_calibration")
        how = (f"calibrated: rejects {calibration['validation_windows_rejected']:.0%} of the validation windows, "
               f"macro-F1 {calibration['validation_macro_f1_without_rejection']:.3f} -> "
               f"{calibration['validation_macro_f1_with_rejection']:.3f}; " if calibration else "")
        lines.append(("open set", f"{_open_set_kind(bundle.open_set)}, threshold {bundle.open_set.threshold:.3g} ({how}a window "
                                  "whose open-set score is below it is labelled unknown)"))
    int8 = meta.get("int8")
    int8_threshold = ((int8 or {}).get("open_set") or {}).get("threshold")
    own = f"; its own open-set threshold {int8_threshold:.4g}" if int8_threshold is not None else ""
    lines.append(("int8", f"{int8.get('file')} ({int8.get('calibration_windows')} calibration windows{own})" if int8
                  else "none (fieldmon quantize adds one)"))
    made = [f"fieldmon {provenance['fieldmon_version']}" if "fieldmon_version" in provenance else None,
            provenance.get("created"), f"torch {provenance['torch']}" if "torch" in provenance else None]
    if any(made):
        lines.append(("created", ", ".join(m for m in made if m)))
    return lines


def classifier_line(bundle: ModelBundle) -> str:
    hidden = bundle.classifier.layers[0]
    text = f"MLP {hidden.in_features}->{hidden.out_features}->{len(bundle.class_names)}"
    metrics = bundle.metrics
    if "mlp_best_epoch" not in metrics:  # bundles from before the MLP's fit was recorded
        return text
    start = (f"the nearest class mean (temperature {metrics['mlp_init_temperature']:.3g})"
             if metrics.get("mlp_init") == "class-means" else "random weights")
    return f"{text}, started from {start}; kept epoch {metrics['mlp_best_epoch']} of {metrics['mlp_epochs']} " \
           "by validation loss"


def status(bundle: ModelBundle, path: Path) -> str:
    reasons = preliminary_reasons(bundle.metrics, path)
    if reasons:
        return "PRELIMINARY: " + "; ".join(reasons) + "; treat its labels as suggestions to verify"
    f1 = validation_file_macro_f1(bundle.metrics)
    if f1 is None:
        return "not validated: the bundle records no validation scores"
    return f"validation macro-F1 per file {f1:.3f} meets the {TARGET_FILE_MACRO_F1} target"


def training_line(training: dict, provenance: dict) -> str:
    parts = []
    clips = training.get("clips") or {}
    if clips:
        parts.append(", ".join(f"{n:,} {split}" for split, n in clips.items()) + " clips")
    source = provenance.get("clips_source")
    if source:
        parts.append(f"from {Path(source).name}")  # the base name only: the folder is the trainer's
    left_out = training.get("clips_left_out") or []
    if left_out:
        parts.append(f"{len(left_out)} left out (silent or unusable)")
    same = training.get("clips_same_recording") or []
    if same:
        parts.append(f"{len(same)} pair(s) holding the same recording (model.json: training.clips_same_recording)")
    run = []
    if training.get("steps_done") is not None:
        run.append(f"{training['steps_done']:,} steps")
    if training.get("wall_seconds") is not None:
        run.append(f"in {duration(training['wall_seconds'])}")
    if training.get("device"):
        run.append(f"on {training['device']}")
    if run:
        parts.append(" ".join(run))
    if training.get("base_model"):
        parts.append(f"fine-tuned from {training['base_model']}")
    return "; ".join(parts) or "not recorded"


def scores_line(metrics: dict, split: str) -> str:
    scores = metrics[split]
    text = f"macro-F1 per file {_score(scores.get('file_macro_f1'))}"
    detail = [f"{scores['files']} files"] if "files" in scores else []
    interval = scores.get("file_macro_f1_interval")
    if interval:
        detail.append(f"95 % bootstrap interval {interval[0]:.3f}-{interval[1]:.3f}")
    if detail:
        text += f" ({', '.join(detail)})"
    text += f", per window {_score(scores.get('macro_f1'))}"
    baseline = (metrics.get("baseline") or {}).get(split)
    if baseline:
        text += (f"; shallow baseline {_score(baseline.get('file_macro_f1'))} per file, "
                 f"{_score(baseline.get('macro_f1'))} per window")
    return text


def _score(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def duration(seconds: float) -> str:
    """6993.7 -> '1 h 57 min' (to the nearest minute); 95 -> '1 min 35 s'."""
    if seconds >= 3600 - 30:
        hours, minutes = divmod(round(seconds / 60), 60)
        return f"{hours} h {minutes} min"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _open_set_kind(open_set) -> str:
    if open_set.rule == "nearest_window":
        return f"nearest_window ({len(open_set.reference)} training windows)"
    return f"{open_set.rule} ({open_set.spread} spread)"
