from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from fieldmon.model.bundle import BundleError
from fieldmon.model.loading import load_model


def show_model_info(model: str) -> None:
    try:
        bundle = load_model(model)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from exc
    console = Console()
    table = Table(title=f"fieldmon model {bundle.model_id}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("loss", bundle.loss)
    table.add_row("classes", f"{len(bundle.class_names)}: {', '.join(bundle.class_names)}")
    table.add_row("parameters", f"{sum(p.numel() for p in bundle.network.parameters()):,}")
    table.add_row("features", _kv(bundle.feature_settings.to_dict()))
    table.add_row("network", _kv(bundle.network.settings.to_dict()))
    table.add_row("open-set", "none" if bundle.open_set is None else
                  f"{bundle.open_set.rule}, threshold {bundle.open_set.threshold:g}")
    for section in ("training", "metrics", "provenance"):
        value = getattr(bundle, section)
        table.add_row(section, _kv(value) if value else "-")
    console.print(table)


def _kv(d: dict) -> str:
    return "\n".join(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in d.items())
