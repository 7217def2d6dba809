"""Console side of ``fieldmon train`` and ``fieldmon evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fieldmon.train.dataset import ClipSet
from fieldmon.train.loop import StepReport


class TrainDisplay:
    """Rich progress on a terminal; a plain log line every ``log_every`` steps otherwise (cron, nohup)."""

    def __init__(self, quiet: bool = False, log_every: int = 10) -> None:
        self.console = Console(stderr=True, quiet=quiet)
        self.result_console = Console(stderr=True)  # warnings and the outcome, even with --quiet
        self.interactive = self.console.is_terminal
        self.log_every = log_every
        self.progress: Progress | None = None
        self.task = None
        self.first_step_logged = False

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def result(self, text: str) -> None:
        self.close()  # a warning in the middle of a progress bar would be drawn over
        self.result_console.print(text, markup=False, highlight=False, soft_wrap=True)

    def clips_found(self, clips: ClipSet) -> None:
        table = Table(title=f"{len(clips.clips)} clips of {len(clips.class_names)} species in {clips.source}")
        for column in ("species", "clips", "minutes", "train", "validation", "test"):
            table.add_column(column, justify="left" if column == "species" else "right")
        for name, n, minutes in clips.summary():
            per_split = [sum(1 for c in clips.in_split(s) if c.label == name) for s in ("train", "validation", "test")]
            table.add_row(name, str(n), f"{minutes:.1f}", *map(str, per_split))
        self.console.print(table)

    def step(self, report: StepReport) -> None:
        total = report.total_steps or report.total_minibatches
        done = report.step if report.total_steps else report.minibatch
        remaining = _remaining_seconds(report, total, done)
        if not self.first_step_logged:
            self.first_step_logged = True
            if remaining is not None:
                self.message(f"first step took {report.seconds_per_step:.1f} s; about {remaining / 60:.0f} min to go")
        fields = f"loss {report.loss:.4f}"
        if report.margin is not None:
            fields += f"  margin {report.margin:.2f}"
        if report.semi_hard is not None:
            fields += f"  semi-hard {report.semi_hard}"
        if report.validation is not None:
            fields += f"  validation {report.validation:.3f}"
        if self.interactive:
            if self.progress is None:
                self.progress = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                                         TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                         TextColumn("{task.fields[eta]}"), console=self.console)
                self.progress.start()
                self.task = self.progress.add_task("train", total=total, completed=done, info=fields, eta="")
            self.progress.update(self.task, total=total, completed=done, info=fields, eta=_clock(remaining, "left"))
        elif report.step % self.log_every == 0:
            self.message(f"step {report.step}{'/' + str(total) if total else ''}  {fields}  "
                         f"{report.seconds_per_step:.2f} s/step  {_clock(report.elapsed_seconds, 'elapsed')}  "
                         f"{_clock(remaining, 'left')}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _remaining_seconds(report: StepReport, total: int | None, done: int) -> float | None:
    estimates = []
    if total:
        estimates.append((total - done) * report.seconds_per_step)
    if report.time_budget_seconds is not None:
        estimates.append(report.time_budget_seconds - report.elapsed_seconds)
    return max(0.0, min(estimates)) if estimates else None


def _clock(seconds: float | None, what: str) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d} {what}"


def print_evaluation(result: dict, json_out: Path | None) -> None:
    console = Console()
    table = Table(title="evaluation", show_header=False, title_justify="left")
    for key in ("windows", "files", "macro_f1", "file_macro_f1", "accuracy", "macro_f1_with_rejection",
                "known_rejected", "outlier_windows", "rejection_accuracy"):
        if key in result:
            value = result[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
            if key == "file_macro_f1":
                low, high = result["file_macro_f1_interval"]
                table.add_row("file_macro_f1 95 % interval", f"{low:.4f} - {high:.4f} (bootstrap over files)")
    console.print(table)
    per_class = Table(title="per species (windows)", title_justify="left")
    for column in ("species", "precision", "recall", "f1", "support"):
        per_class.add_column(column, justify="left" if column == "species" else "right")
    for name, row in result["per_class"].items():
        per_class.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    console.print(per_class)
    for problem in result.get("clips_left_out", []):
        console.print(f"[yellow]left out[/]: {problem}", highlight=False, soft_wrap=True)
    for problem in result.get("clips_same_recording", []):
        console.print(f"[yellow]warning[/]: {problem}", highlight=False, soft_wrap=True)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {json_out}")


def fail(exc: Exception) -> None:
    if isinstance(exc, OSError) and exc.strerror:
        raise click.ClickException(f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror) from exc
    raise click.ClickException(str(exc)) from exc

