"""Console side of ``fieldmon scan``: progress on a terminal, plain log lines under cron."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from fieldmon.audio import AUDIO_EXTENSIONS
from fieldmon.scan.pipeline import ScanProgress, ScanSummary


class ScanDisplay(ScanProgress):
    def __init__(self, quiet: bool = False, log_every: int = 100) -> None:
        self.console = Console(stderr=True, quiet=quiet)
        self.summary_console = Console(stderr=True)  # the summary is printed even with --quiet
        self.interactive = self.console.is_terminal
        self.log_every = log_every
        self.progress: Progress | None = None
        self.started = time.monotonic()
        self.files = self.done = self.failed = 0
        self.audio_seconds = 0.0

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def start(self, files: int, total_bytes: int, skipped: int) -> None:
        self.files = files
        self.message(f"{files} files to scan" + (f", {skipped} unchanged since the last scan" if skipped else ""))
        if self.interactive and files:
            self.progress = Progress(
                TextColumn("{task.fields[files]}"), BarColumn(), TextColumn("{task.fields[speed]}"),
                TimeRemainingColumn(), console=self.console, transient=True,
            )
            self.progress.start()
            # progress by bytes: the ETA then follows long and short files alike
            self.task = self.progress.add_task("scan", total=max(total_bytes, 1), files="", speed="")

    def file_done(self, relative: str, ok: bool, audio_seconds: float, size: int, error: str | None) -> None:
        self.done += 1
        self.failed += not ok
        self.audio_seconds += audio_seconds
        if not ok:
            self.message(f"failed: {relative}: {error}")
        status = f"{self.done}/{self.files} files, {self.audio_seconds / 3600:.2f} h of audio"
        if self.progress is not None:
            self.progress.update(self.task, advance=size or 0, files=status, speed=self._speed())
        elif self.done % self.log_every == 0:
            self.message(f"{status}, {self._speed()}")

    def _speed(self) -> str:
        elapsed = time.monotonic() - self.started
        return f"{self.audio_seconds / elapsed:.0f}x real time" if elapsed > 0 else ""

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def finish(self, summary: ScanSummary, out: str, recordings: str = "") -> None:
        self.close()
        if not summary.files_ok and not summary.files_failed and not summary.files_skipped:
            extensions = ", ".join(sorted(e.lstrip(".") for e in AUDIO_EXTENSIONS))
            self.summary_console.print(f"warning: no audio files ({extensions}) found in {recordings}",
                                       markup=False, highlight=False, soft_wrap=True)
        lines = [f"warning: {line}" for line in summary.warnings(out)]
        retimed = summary.retimed
        if retimed is not None and retimed.changed:
            lines.append(f"the output was in --tz {retimed.old_tz or 'none'}: {retimed.rows_retimed()} to --tz "
                         f"{retimed.new_tz} without scanning them again")
        speed = summary.audio_seconds / summary.wall_seconds if summary.wall_seconds else 0.0
        lines += [
            f"{summary.files_ok} files scanned, {summary.files_failed} failed, {summary.files_skipped} unchanged; "
            f"{summary.windows} windows, {summary.rows} rows written to {out}",
            f"{summary.audio_seconds / 3600:.2f} h of audio in {summary.wall_seconds:.1f} s ({speed:.1f}x real time)",
        ]
        if summary.interrupted:
            lines.append("interrupted: finished files are saved; run the same command again to continue")
        for line in lines:
            # soft_wrap: a long output path stays on its line instead of breaking mid-path
            self.summary_console.print(line, markup=False, highlight=False, soft_wrap=True)
