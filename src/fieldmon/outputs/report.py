"""``fieldmon report``: a survey report as one self-contained HTML file plus CSV tables.

Every figure in the HTML is computed from the same tables that are written as CSV,
so a number in the report can always be traced to a row. The hour-of-day tables carry
the recording effort behind the counts (fieldmon.outputs.effort): detections per
recorded hour, and "not recorded" (NaN) where there was no recording.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fieldmon import __version__
from fieldmon.model.metadata import UNKNOWN
from fieldmon.outputs.effort import (audible_seconds, date_range, effort_by_hour, has_dates, naive, recorded_hours,
                                     silent_seconds, time_column, unplaced_hours)
from fieldmon.outputs.model_quality import model_quality
from fieldmon.outputs.tables import Filters, ScanOutput

NOT_RECORDED = "not recorded"
SCORE_QUANTILES = {"min": 0.0, "q10": 0.1, "median": 0.5, "q90": 0.9, "max": 1.0}


# -- tables ---------------------------------------------------------------------------


def species_summary(output: ScanOutput, filters: Filters = Filters()) -> pd.DataFrame:
    """One row per species: windows, files, sites, days, first and last detection, mean
    score, the hours recorded, detections per recorded hour, and the hour of day with the
    most detections per recorded hour."""
    d = output.detections
    known = d[d["label"] != UNKNOWN]
    column = time_column(output)
    when = naive(known[column])
    columns = ["species", "windows", "files", "sites", "days_detected", "first_detection", "last_detection",
               "mean_score", "hours_recorded", "detections_per_recorded_hour", "peak_hour_per_recorded_hour"]
    if known.empty:
        return pd.DataFrame(columns=columns)
    g = known.assign(_when=when, _day=when.dt.date).groupby("label")
    hours = recorded_hours(output, filters)
    rate = diel_rate(diel_activity(output, filters), effort_by_hour(output, filters))
    peak = rate.apply(lambda col: col.idxmax() if col.notna().any() and col.max() > 0 else np.nan)
    table = pd.DataFrame({
        "windows": g.size(),
        "files": g["path"].nunique(),
        "sites": g["site"].nunique(),
        "days_detected": g["_day"].nunique(),
        "first_detection": g["_when"].min(),
        "last_detection": g["_when"].max(),
        "mean_score": g["score"].mean().round(4),
    })
    table["hours_recorded"] = round(hours, 6) if hours == hours else np.nan
    table["detections_per_recorded_hour"] = (table["windows"] / hours).round(3) if hours > 0 else np.nan
    table["peak_hour_per_recorded_hour"] = peak.reindex(table.index).astype("Int64")
    return table.rename_axis("species").reset_index().sort_values(["windows", "species"], ascending=[False, True])[columns]


def score_distribution(output: ScanOutput) -> pd.DataFrame:
    """Quantiles of the score (probability of the top species) of each species' windows."""
    d = output.detections
    known = d[d["label"] != UNKNOWN]
    columns = ["species", *SCORE_QUANTILES, "count"]
    if known.empty:
        return pd.DataFrame(columns=columns)
    g = known.assign(score=known["score"].astype(float)).groupby("label")["score"]
    table = pd.DataFrame({name: g.quantile(q).round(4) for name, q in SCORE_QUANTILES.items()})
    table["count"] = g.size()
    return table.rename_axis("species").reset_index().sort_values(["count", "species"], ascending=[False, True])[columns]


def daily_detections(output: ScanOutput) -> pd.DataFrame:
    d = output.detections
    known = d[(d["label"] != UNKNOWN)]
    day = naive(known[time_column(output)]).dt.date
    table = known.assign(date=day).dropna(subset=["date"]).groupby(["date", "label"]).size().unstack(fill_value=0)
    return table.rename_axis(columns=None)


def diel_activity(output: ScanOutput, filters: Filters = Filters(), effort: pd.DataFrame | None = None) -> pd.DataFrame:
    """Windows per hour of day (rows 0-23) and species (columns); <NA> in hours that were
    not recorded (a count of 0 there would claim an absence nobody listened for)."""
    d = output.detections
    known = d[d["label"] != UNKNOWN]
    hour = naive(known[time_column(output)]).dt.hour
    table = known.assign(hour=hour).dropna(subset=["hour"]).groupby(["hour", "label"]).size().unstack(fill_value=0)
    table = table.reindex(range(24), fill_value=0).rename_axis(index="hour", columns=None).astype("Int64")
    effort = effort_by_hour(output, filters) if effort is None else effort
    unrecorded = (effort["hours_recorded"] == 0) & (table.sum(axis=1) == 0)  # never hide a real count
    table.loc[unrecorded.to_numpy()] = pd.NA
    return table


def diel_rate(diel: pd.DataFrame, effort: pd.DataFrame) -> pd.DataFrame:
    """Detections (windows) per recorded hour in each hour of day; NaN where not recorded
    or where the effort is unknown."""
    hours = effort["hours_recorded"].where(effort["hours_recorded"] > 0)
    return diel.astype(float).div(hours, axis=0).round(3)


def flagged_files(files: pd.DataFrame) -> pd.Series:
    """Files scanned with a warning (fieldmon.scan.decoding.file_warning: a header at odds
    with the file's length, or samples that are NaN, infinite or all zero): status ok with
    an error message."""
    return (files["status"] == "ok") & files.get("error", pd.Series(None, files.index, object)).notna()


def effort(output: ScanOutput, filters: Filters = Filters()) -> pd.DataFrame:
    """Hours recorded and files failed per site and day: absence needs recording effort.
    ``files_flagged`` (:func:`flagged_files`) count in the hours for the audio they hold;
    their stretches of digital silence are ``hours_silent`` instead."""
    f = output.files
    if f.empty:
        return pd.DataFrame(columns=["site", "date", "hours_recorded", "hours_silent", "files_ok", "files_flagged",
                                     "files_failed"])
    start = naive(f["recorder_start_local"]).where(f["recorder_start_local"].notna(), naive(f["recorder_start_utc"]))
    f = f.assign(date=start.dt.date, ok=f["status"] == "ok", failed=f["status"] == "failed",
                 flagged=flagged_files(f), hours=audible_seconds(f) / 3600, silent=silent_seconds(f) / 3600)
    lo, hi = date_range(filters)
    if lo is not None:
        f = f[start.reindex(f.index) >= lo]
    if hi is not None:
        f = f[start.reindex(f.index) < hi]
    g = f.groupby(["site", "date"], dropna=False)
    table = pd.DataFrame({"hours_recorded": g["hours"].sum().round(4), "hours_silent": g["silent"].sum().round(4),
                          "files_ok": g["ok"].sum(),
                          "files_flagged": g["flagged"].sum(), "files_failed": g["failed"].sum()})
    return table.reset_index()


def unknown_share(output: ScanOutput) -> float:
    d = output.detections
    return float((d["label"] == UNKNOWN).mean()) if len(d) else float("nan")


def no_detections_message(output: ScanOutput, filters: Filters = Filters()) -> str | None:
    """Why a table or chart of detections is empty, in words; None when it need not be.

    "No detections with a known time" only when there are detections and none of them
    has a time; otherwise the reason is that there are no detections at all."""
    d = output.detections
    known = d[d["label"] != UNKNOWN]
    after = f" after the filters ({filters.describe()})" if filters.describe() != "none" else ""
    if known.empty:
        if len(d):
            return (f"No detections{after}: all {len(d):,} windows are 'unknown' "
                    "(rejected by the model's open-set check).")
        return f"No detections{after}: no windows." if after else "No detections: the scan holds no windows."
    if known["start_time"].isna().all() and known["local_time"].isna().all():
        return ("No detections with a known time: the recordings' start times are unknown "
                "(neither their names nor their metadata give one).")
    return None


# -- the report -------------------------------------------------------------------------


def write_report(output: ScanOutput, out_dir: str | Path, filters: Filters = Filters(), source: str = "",
                 model: str | os.PathLike | None = None) -> Path:
    """Write report.html and its CSV tables to ``out_dir``. ``model``: a bundle directory
    to look for the scan's model in (besides the shipped default), for its quality."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hour_effort = effort_by_hour(output, filters)
    summary, scores = species_summary(output, filters), score_distribution(output)
    daily, diel, eff = daily_detections(output), diel_activity(output, filters, hour_effort), effort(output, filters)
    rate = diel_rate(diel, hour_effort)
    summary.to_csv(out_dir / "species_summary.csv", index=False)
    scores.to_csv(out_dir / "score_distribution.csv", index=False)
    daily.to_csv(out_dir / "daily_detections.csv")
    diel.to_csv(out_dir / "diel_activity.csv")
    hour_effort.to_csv(out_dir / "effort_by_hour.csv")
    rate.to_csv(out_dir / "diel_rate.csv")
    eff.to_csv(out_dir / "effort.csv", index=False)
    share = unknown_share(output)
    zone = "recorder local time" if time_column(output) == "local_time" else "UTC"
    meta = output.metadata
    quality = model_quality(output, model)
    empty = no_detections_message(output, filters)
    hours = recorded_hours(output, filters)
    sections = [
        ("Species summary", _table_html(summary, empty)),
        ("Score distributions", _chart_and_table(_score_chart(scores), scores, empty)),
        ("Daily detections", _chart_and_table(_daily_chart(daily), daily.reset_index(), empty)),
        (f"Diel activity ({zone})", _diel_html(diel, rate, hour_effort, output, empty)),
        ("Effort", _table_html(eff, "No per-file table, so the recording effort is unknown.")),
    ]
    n_windows = len(output.detections)
    facts = [
        ("windows", f"{n_windows:,}"),
        ("unknown windows (open-set rejected)", f"{share:.1%}" if n_windows else "-"),
        ("files scanned", f"{int((output.files.get('status') == 'ok').sum()) if len(output.files) else 0:,}"),
        ("files flagged (cut short, an unfinished header, or samples NaN, infinite or all zero)",
         f"{int(flagged_files(output.files).sum()) if len(output.files) else 0:,}"),
        ("files failed", f"{int((output.files.get('status') == 'failed').sum()) if len(output.files) else 0:,}"),
        ("hours recorded", _hours_fact(output, hours, filters)),
        ("model", html.escape(str(meta.get("model_id", "?")))),
        ("model quality", html.escape(quality.text if quality.status == "ok" else quality.status)),
        ("scan settings", html.escape(json.dumps(meta.get("settings", {})))),
        ("filters", html.escape(filters.describe())),
        ("detections", html.escape(source)),
        ("report made by", f"fieldmon {__version__}"),
    ]
    banner = ""
    if quality.status != "ok":
        title = "Preliminary model" if quality.status == "preliminary" else "Model quality unknown"
        banner = (f"<div class='banner {quality.status}' role='alert'><strong>{title}.</strong> "
                  f"{html.escape(quality.text)}</div>\n")
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
.banner {{ padding: 0.8em 1em; margin: 0 0 1em; border: 2px solid; border-radius: 4px; font-size: 1.05em; }}
.banner.preliminary {{ background: #fdecea; border-color: #c0392b; }}
.banner.unknown {{ background: #fff8e1; border-color: #e0a800; }}
</style></head><body>
{banner}<h1>fieldmon survey report</h1>
{body}
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _hours_fact(output: ScanOutput, hours: float, filters: Filters) -> str:
    if hours != hours:
        return "unknown (no per-file table)"
    notes = []
    if not has_dates(filters):
        unplaced = unplaced_hours(output)
        if unplaced > 0:
            notes.append(f"{unplaced:.2f} of them without a known start time, so not in the effort by hour of day")
        ok = output.files[output.files["status"] == "ok"]
        silent = float(silent_seconds(ok).sum() / 3600)
        if silent > 0:
            notes.append(f"besides {silent:.2f} of digital silence, not counted")
    return f"{hours:.2f}" + (f" ({'; '.join(notes)})" if notes else "")


def _diel_html(diel: pd.DataFrame, rate: pd.DataFrame, hour_effort: pd.DataFrame, output: ScanOutput,
               empty: str | None) -> str:
    hours = hour_effort["hours_recorded"]
    if hours.isna().all():
        note = ("<p>Recording effort by hour of day is unknown ("
                + ("no per-file table" if output.files.empty else "the recordings' start times are unknown")
                + "), so the chart shows raw counts and hours without detections may not have been recorded.</p>")
        return _img(_diel_chart(diel, hour_effort), empty) + note
    table = pd.concat([hours.round(4), hour_effort["days_recorded"], rate], axis=1).reset_index()
    text = table.to_html(index=False, border=0, na_rep=NOT_RECORDED)
    note = ("<p>Hours recorded: audio recorded in each hour of day over the whole survey (a file running over "
            "an hour boundary counts in both). Species columns: detections (windows) per recorded hour; "
            f"'{NOT_RECORDED}' (hatched in the chart) where no audio was recorded in that hour.</p>")
    chart = _img(_diel_chart(diel, hour_effort), empty) if len(diel.columns) else f"<p>{html.escape(empty or '')}</p>"
    return chart + note + text


def _chart_and_table(png: bytes | None, table: pd.DataFrame, empty: str | None) -> str:
    if png is None and table.empty:
        return _img(None, empty)  # the reason once, not under each
    return _img(png, empty) + _table_html(table, empty)


def _table_html(table: pd.DataFrame, empty: str | None = None) -> str:
    if table.empty:
        return f"<p>{html.escape(empty or 'No detections.')}</p>"
    return table.to_html(index=False, border=0, na_rep="-")


def _img(png: bytes | None, empty: str | None = None) -> str:
    if png is None:
        return f"<p>{html.escape(empty or 'No detections.')}</p>"
    return f"<img alt='chart' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _daily_chart(daily: pd.DataFrame) -> bytes | None:
    if daily.empty:
        return None
    plt = _pyplot()
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


def _diel_chart(diel: pd.DataFrame, hour_effort: pd.DataFrame) -> bytes | None:
    """Hours recorded per hour of day above, detections per recorded hour below; hours not
    recorded hatched. Raw counts when the effort by hour is unknown."""
    counts = diel.astype(float)
    if counts.empty or not np.nansum(counts.to_numpy()) > 0:
        return None
    plt = _pyplot()
    from matplotlib.patches import Patch, Rectangle

    hours = hour_effort["hours_recorded"]
    effort_known = not hours.isna().all()
    values = diel_rate(diel, hour_effort) if effort_known else counts
    n = len(diel.columns)
    fig, (top, ax) = plt.subplots(2, 1, sharex=True, figsize=(10, 0.4 * n + 3),
                                  gridspec_kw={"height_ratios": [1.2, max(1.5, 0.4 * n)]})
    unrecorded = [h for h in range(24) if effort_known and hours.iloc[h] == 0]
    if effort_known:
        top.bar(range(24), hours.to_numpy(), width=0.9, color="0.5")
        top.set_ylabel("hours\nrecorded")
    else:
        top.text(0.5, 0.5, "recording effort by hour unknown", ha="center", va="center", transform=top.transAxes)
        top.set_yticks([])
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(values.T.to_numpy(dtype=float)), aspect="auto", cmap=cmap,
                      interpolation="nearest")
    for h in unrecorded:
        for axis, height in ((ax, n), (top, None)):
            if height is None:
                axis.axvspan(h - 0.5, h + 0.5, facecolor="none", edgecolor="0.6", hatch="///", linewidth=0)
            else:
                axis.add_patch(Rectangle((h - 0.5, -0.5), 1, height, facecolor="none", edgecolor="0.6",
                                         hatch="///", linewidth=0))
    ax.set_yticks(range(n), diel.columns, fontsize=8)
    ax.set_xticks(range(24), range(24))
    ax.set_xlim(-0.5, 23.5)
    ax.set_xlabel("hour of day")
    label = "detections per recorded hour" if effort_known else "windows detected"
    fig.colorbar(image, ax=[top, ax], label=label)
    if unrecorded:
        top.legend(handles=[Patch(facecolor="none", edgecolor="0.6", hatch="///", label=NOT_RECORDED)],
                   fontsize=8, loc="upper left", bbox_to_anchor=(0.0, 1.35), frameon=False)
    return _figure_png(fig)


def _score_chart(scores: pd.DataFrame) -> bytes | None:
    """Each species' scores: a thin line from min to max, a thick bar from the 10 % to the
    90 % quantile, a dot at the median (the numbers of score_distribution.csv)."""
    if scores.empty:
        return None
    plt = _pyplot()
    table = scores.iloc[::-1].reset_index(drop=True)  # the most detected species on top
    y = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(10, 0.3 * len(table) + 1.5))
    ax.hlines(y, table["min"], table["max"], color="0.6", linewidth=1, label="min to max")
    ax.hlines(y, table["q10"], table["q90"], color="tab:blue", linewidth=6, label="10 % to 90 %")
    ax.plot(table["median"], y, "o", color="black", markersize=4, label="median")
    ax.set_yticks(y, [f"{s} (n={c:,})" for s, c in zip(table["species"], table["count"])], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.7, len(table) - 0.3)
    ax.set_xlabel("score (probability of the top species)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _figure_png(fig)
