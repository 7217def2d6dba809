from __future__ import annotations

import click

from fieldmon import __version__


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
