"""``fieldmon report``: a survey report as one self-contained HTML file plus CSV tables.

Every figure in the HTML is computed from the same tables that are written as CSV,
so a number in the report can always be traced to a row.
"""

from __future__ import annotations

import base64
import html
import json
import io
from pathlib import Path

import pandas as pd

from fieldmon import __version__
from fieldmon.model.openset import UNKNOWN
from fieldmon.outputs.tables import Filters, ScanOutput, naive_times


def species_summary(output: ScanOutput) -> pd.DataFrame:
    d = output.detections
    known = d[d["label"] != UNKNOWN]
    when = naive_times(known[output.time_column])
    columns = ["species", "windows", "files", "sites", "days_detected", "first_detection", "last_detection",
               "mean_score"]
    if known.empty:
        return pd.DataFrame(columns=columns)
    g = known.assign(_when=when, _day=when.dt.date).groupby("label")
    table = pd.DataFrame({
        "windows": g.size(),
        "files": g["path"].nunique(),
        "sites": g["site"].nunique(),
        "days_detected": g["_day"].nunique(),
        "first_detection": g["_when"].min(),
        "last_detection": g["_when"].max(),
        "mean_score": g["score"].mean().round(4),
    })
    return table.rename_axis("species").reset_index().sort_values(["windows", "species"], ascending=[False, True])[columns]


def daily_detections(output: ScanOutput) -> pd.DataFrame:
    d = output.detections
    known = d[(d["label"] != UNKNOWN)]
    day = naive_times(known[output.time_column]).dt.date
    table = known.assign(date=day).dropna(subset=["date"]).groupby(["date", "label"]).size().unstack(fill_value=0)
    return table.rename_axis(columns=None)


def diel_activity(output: ScanOutput) -> pd.DataFrame:
    """Windows per hour of day (rows 0-23) and species (columns)."""
    d = output.detections
    known = d[d["label"] != UNKNOWN]
    hour = naive_times(known[output.time_column]).dt.hour
    table = known.assign(hour=hour).dropna(subset=["hour"]).groupby(["hour", "label"]).size().unstack(fill_value=0)
    return table.reindex(range(24), fill_value=0).rename_axis(index="hour", columns=None)


def effort(output: ScanOutput) -> pd.DataFrame:
    """Hours recorded and files failed per site and day: absence needs recording effort."""
    f = output.files
    if f.empty:
        return pd.DataFrame(columns=["site", "date", "hours_recorded", "files_ok", "files_failed"])
    start = f["recorder_start_local"].where(f["recorder_start_local"].notna(), naive_times(f["recorder_start_utc"]))
    f = f.assign(date=start.dt.date, ok=f["status"] == "ok", failed=f["status"] == "failed",
                 hours=f["duration_s"].fillna(0) / 3600)
    g = f.groupby(["site", "date"], dropna=False)
    table = pd.DataFrame({"hours_recorded": g["hours"].sum().round(4), "files_ok": g["ok"].sum(),
                          "files_failed": g["failed"].sum()})
    return table.reset_index()


def unknown_share(output: ScanOutput) -> float:
    d = output.detections
    return float((d["label"] == UNKNOWN).mean()) if len(d) else float("nan")


def write_report(output: ScanOutput, out_dir: str | Path, filters: Filters = Filters(), source: str = "") -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, daily, diel, eff = species_summary(output), daily_detections(output), diel_activity(output), effort(output)
    summary.to_csv(out_dir / "species_summary.csv", index=False)
    daily.to_csv(out_dir / "daily_detections.csv")
    diel.to_csv(out_dir / "diel_activity.csv")
    eff.to_csv(out_dir / "effort.csv", index=False)
    share = unknown_share(output)
    zone = "recorder local time" if output.time_column == "local_time" else "UTC"
    meta = output.metadata
    sections = [
        ("Species summary", _table_html(summary)),
        ("Daily detections", _img(_daily_chart(daily)) + _table_html(daily.reset_index())),
        (f"Diel activity ({zone})", _img(_diel_chart(diel))),
        ("Effort", _table_html(eff)),
    ]
    n_windows = len(output.detections)
    facts = [
        ("windows", f"{n_windows:,}"),
        ("unknown windows (open-set rejected)", f"{share:.1%}" if n_windows else "-"),
        ("files scanned", f"{int((output.files.get('status') == 'ok').sum()) if len(output.files) else 0:,}"),
        ("files failed", f"{int((output.files.get('status') == 'failed').sum()) if len(output.files) else 0:,}"),
        ("hours recorded", f"{eff['hours_recorded'].sum():.2f}" if len(eff) else "0"),
        ("model", str(meta.get("model_id", "?"))),
        ("scan settings", html.escape(json.dumps(meta.get("settings", {})))),
        ("filters", html.escape(filters.describe())),
        ("detections", html.escape(source)),
        ("report made by", f"fieldmon {__version__}"),
    ]
    body = "<table class='facts'>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts) + "</table>"
    body += "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fieldmon survey report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} table.facts th {{ text-align: left; }} table.facts td {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>fieldmon survey report</h1>
{body}
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _table_html(table: pd.DataFrame) -> str:
    if table.empty:
        return "<p>No detections.</p>"
    return table.to_html(index=False, border=0, na_rep="-")


def _img(png: bytes | None) -> str:
    if png is None:
        return "<p>No detections with a known time.</p>"
    return f"<img alt='chart' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _daily_chart(daily: pd.DataFrame) -> bytes | None:
    if daily.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    if len(daily) <= 60:  # bars read better than lines over a few days (and a single day)
        daily.plot(ax=ax, kind="bar", width=0.8)
        ax.set_xticklabels([str(d) for d in daily.index], rotation=45, ha="right")
    else:
        daily.set_axis(pd.to_datetime(daily.index)).plot(ax=ax, linewidth=1)
    ax.set_ylabel("windows detected")
    ax.set_xlabel("date")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _figure_png(fig)


def _diel_chart(diel: pd.DataFrame) -> bytes | None:
    if diel.empty or not diel.values.any():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.4 * len(diel.columns) + 1.5))
    image = ax.imshow(diel.T.values, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(diel.columns)), diel.columns, fontsize=8)
    ax.set_xticks(range(24), range(24))
    ax.set_xlabel("hour of day")
    fig.colorbar(image, ax=ax, label="windows detected")
    return _figure_png(fig)
