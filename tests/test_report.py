"""Survey reports read the data correctly: effort by hour of day and detections per
recorded hour, score distributions, the model's quality, and why a table is empty.

The tables here are built by hand, so every expected number can be worked out."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd
import pytest

from fieldmon.outputs import model_quality as quality_module
from fieldmon.outputs.effort import effort_by_hour, recorded_hours
from fieldmon.outputs.model_quality import model_quality
from fieldmon.outputs.report import (diel_activity, diel_rate, effort, score_distribution, species_summary,
                                     write_report)
from fieldmon.outputs.tables import Filters, ScanOutput, apply_filters

MODEL_ID = "site-model-0123456789ab"


def detections(rows: list[tuple], local: bool = True) -> pd.DataFrame:
    """rows: (path, time or None, label, score); times are local (or UTC with local=False)."""
    d = pd.DataFrame(rows, columns=["path", "time", "label", "score"])
    times = pd.to_datetime(d.pop("time"))
    nat_local = pd.Series(pd.NaT, index=d.index, dtype="datetime64[ms]")
    nat_utc = pd.Series(pd.NaT, index=d.index, dtype="datetime64[ms, UTC]")
    d["local_time"] = times.astype("datetime64[ms]") if local else nat_local
    d["start_time"] = times.dt.tz_localize("UTC").astype("datetime64[ms, UTC]") if not local else nat_utc
    d["site"] = "s1"
    d["window_start_s"] = 0.0
    d["score"] = d["score"].astype(np.float32)
    d["model_id"] = MODEL_ID
    return d


def files(rows: list[tuple], local: bool = True) -> pd.DataFrame:
    """rows: (path, status, start or None, duration_s)."""
    f = pd.DataFrame(rows, columns=["path", "status", "start", "duration_s"])
    start = pd.to_datetime(f.pop("start"))
    f["recorder_start_local"] = (start if local else pd.Series(pd.NaT, index=f.index)).astype("datetime64[ms]")
    f["recorder_start_utc"] = (start.dt.tz_localize("UTC") if not local
                               else pd.Series(pd.NaT, index=f.index).dt.tz_localize("UTC")).astype("datetime64[ms, UTC]")
    f["site"] = "s1"
    f["duration_s"] = f["duration_s"].astype(float)
    return f


# a.wav: 05:30 for an hour (half in 05, half in 06); b.wav: 05:00 for half an hour the
# next day; d.wav: 23:30 for an hour, over midnight; c.wav failed.
FILES = [("a.wav", "ok", "2024-05-01 05:30", 3600), ("b.wav", "ok", "2024-05-02 05:00", 1800),
         ("c.wav", "failed", None, None), ("d.wav", "ok", "2024-05-02 23:30", 3600)]
WINDOWS = ([("a.wav", "2024-05-01 05:40", "cricket", 0.9)] * 10 + [("a.wav", "2024-05-01 06:10", "cricket", 0.5)] * 5
           + [("b.wav", "2024-05-02 05:10", "cricket", 0.7)] * 3 + [("b.wav", "2024-05-02 05:12", "katydid", 0.3)] * 2
           + [("d.wav", "2024-05-03 00:10", "unknown", 0.2)])


def survey(local: bool = True) -> ScanOutput:
    return ScanOutput(detections(WINDOWS, local), files(FILES, local), {"model_id": MODEL_ID})


@pytest.mark.parametrize("local", [True, False])
def test_effort_by_hour_splits_files_at_hour_boundaries(local):
    output = survey(local)
    eff = effort_by_hour(output)
    assert list(eff.index) == list(range(24))
    assert eff.loc[5, "hours_recorded"] == pytest.approx(0.5 + 0.5) and eff.loc[5, "days_recorded"] == 2
    assert eff.loc[6, "hours_recorded"] == pytest.approx(0.5) and eff.loc[6, "days_recorded"] == 1
    assert eff.loc[23, "hours_recorded"] == pytest.approx(0.5) and eff.loc[0, "hours_recorded"] == pytest.approx(0.5)
    assert eff["hours_recorded"].sum() == pytest.approx(2.5)  # the failed file adds nothing
    assert (eff.drop([0, 5, 6, 23])["hours_recorded"] == 0).all()
    # a date filter cuts the recordings to its dates: only b.wav and the first half of d.wav
    dates = Filters(start=pd.Timestamp("2024-05-02"), end=pd.Timestamp("2024-05-02"))
    cut = effort_by_hour(apply_filters(output, dates), dates)
    assert cut.loc[5, "hours_recorded"] == pytest.approx(0.5) and cut.loc[23, "hours_recorded"] == pytest.approx(0.5)
    assert cut.loc[6, "hours_recorded"] == 0 and cut.loc[0, "hours_recorded"] == 0


def test_digital_silence_is_not_recording_effort():
    # b.wav's microphone cut out for 20 of its 30 minutes; e.wav (05:00 on 3 May) heard
    # nothing at all; an older output has no silent_s column and counts every file whole
    table = files(FILES + [("e.wav", "ok", "2024-05-03 05:00", 600)])
    table["silent_s"] = [0.0, 1200.0, None, 0.0, 600.0]
    output = ScanOutput(detections(WINDOWS), table, {"model_id": MODEL_ID})
    eff = effort_by_hour(output)
    assert eff.loc[5, "hours_recorded"] == pytest.approx(0.5 + 10 / 60) and eff.loc[5, "days_recorded"] == 2
    assert eff["hours_recorded"].sum() == pytest.approx(2.5 - 20 / 60)
    assert recorded_hours(output) == pytest.approx(2.5 - 20 / 60)
    dates = Filters(start=pd.Timestamp("2024-05-02"), end=pd.Timestamp("2024-05-02"))
    assert recorded_hours(apply_filters(output, dates), dates) == pytest.approx(10 / 60 + 0.5)
    by_day = effort(output).dropna(subset=["date"]).set_index("date")  # c.wav failed, without a date
    assert by_day["hours_recorded"].to_dict() == {dt.date(2024, 5, 1): 1.0, dt.date(2024, 5, 2): 1.1667,
                                                  dt.date(2024, 5, 3): 0.0}
    assert by_day["hours_silent"].to_dict() == {dt.date(2024, 5, 1): 0.0, dt.date(2024, 5, 2): 0.3333,
                                                dt.date(2024, 5, 3): 0.1667}
    older = survey()
    assert "silent_s" not in older.files and recorded_hours(older) == pytest.approx(2.5)


def test_detections_per_recorded_hour_and_not_recorded_hours(tmp_path):
    output = survey()
    counts = diel_activity(output)
    assert counts.loc[5, "cricket"] == 13 and counts.loc[6, "cricket"] == 5 and counts.loc[6, "katydid"] == 0
    assert counts.loc[0, "cricket"] == 0  # recorded (d.wav) but no detection: a real zero
    assert counts.loc[3].isna().all() and counts.loc[12].isna().all()  # never recorded: not a zero
    rate = diel_rate(counts, effort_by_hour(output))
    assert rate.loc[5, "cricket"] == pytest.approx(13 / 1.0) and rate.loc[6, "cricket"] == pytest.approx(5 / 0.5)
    assert rate.loc[5, "katydid"] == pytest.approx(2.0) and rate.loc[6, "katydid"] == 0
    assert np.isnan(rate.loc[3, "cricket"])
    summary = species_summary(output).set_index("species")
    assert summary.loc["cricket", "windows"] == 18 and summary.loc["cricket", "hours_recorded"] == pytest.approx(2.5)
    assert summary.loc["cricket", "detections_per_recorded_hour"] == pytest.approx(18 / 2.5)
    assert summary.loc["katydid", "detections_per_recorded_hour"] == pytest.approx(2 / 2.5)
    assert summary.loc["cricket", "peak_hour_per_recorded_hour"] == 5

    page = write_report(output, tmp_path).read_text()
    csv = pd.read_csv(tmp_path / "diel_rate.csv", index_col="hour")
    assert csv.loc[6, "cricket"] == pytest.approx(10.0) and np.isnan(csv.loc[3, "cricket"])
    csv = pd.read_csv(tmp_path / "diel_activity.csv", index_col="hour")
    assert csv.loc[5, "cricket"] == 13 and np.isnan(csv.loc[3, "cricket"]) and csv.loc[0, "cricket"] == 0
    csv = pd.read_csv(tmp_path / "effort_by_hour.csv", index_col="hour")
    assert csv.loc[5, "hours_recorded"] == pytest.approx(1.0) and csv.loc[3, "hours_recorded"] == 0
    diel = page.split("<h2>Diel activity (recorder local time)</h2>")[1].split("<h2>")[0]
    assert diel.count("data:image/png;base64,") == 1
    rows = re.findall(r"<tr>\s*<td>(\d+)</td>(.*?)</tr>", diel, re.S)
    by_hour = {int(hour): re.findall(r"<td>(.*?)</td>", cells) for hour, cells in rows}
    assert by_hour[3] == ["0.0", "0", "not recorded", "not recorded"]
    assert by_hour[6] == ["0.5", "1", "10.0", "0.0"]


def test_effort_unknown_without_the_per_file_table(tmp_path):
    output = ScanOutput(detections(WINDOWS), pd.DataFrame(), {"model_id": MODEL_ID})
    assert effort_by_hour(output)["hours_recorded"].isna().all()
    counts = diel_activity(output)
    assert counts.loc[3, "cricket"] == 0  # nothing known about effort: counts stay counts
    assert diel_rate(counts, effort_by_hour(output)).isna().all().all()
    assert species_summary(output)["detections_per_recorded_hour"].isna().all()
    page = write_report(output, tmp_path).read_text()
    assert "effort by hour of day is unknown" in page and "not recorded</td>" not in page


def test_score_distribution_table_and_chart(tmp_path):
    rng = np.random.default_rng(0)
    scores = {"cricket": rng.uniform(0.2, 1.0, 50), "katydid": rng.uniform(0.05, 0.6, 7)}
    rows = [("a.wav", "2024-05-01 05:40", label, float(s)) for label, values in scores.items() for s in values]
    rows.append(("a.wav", "2024-05-01 05:41", "unknown", 0.01))
    output = ScanOutput(detections(rows), files(FILES), {"model_id": MODEL_ID})
    table = score_distribution(output)
    assert list(table.columns) == ["species", "min", "q10", "median", "q90", "max", "count"]
    assert table["species"].tolist() == ["cricket", "katydid"]  # most windows first; no "unknown"
    for row in table.itertuples():
        values = np.asarray(scores[row.species], dtype=np.float32).astype(float)
        expected = np.quantile(values, [0, 0.1, 0.5, 0.9, 1.0])
        np.testing.assert_allclose([row.min, row.q10, row.median, row.q90, row.max], expected, atol=1e-4)
        assert row.count == len(values)
    page = write_report(output, tmp_path).read_text()
    section = page.split("<h2>Score distributions</h2>")[1].split("<h2>")[0]
    assert section.count("data:image/png;base64,") == 1 and "<th>q90</th>" in section
    csv = pd.read_csv(tmp_path / "score_distribution.csv")
    assert csv["count"].tolist() == [50, 7]


def _banner(page: str) -> str:
    head = page.split("<h1>")[0]  # the banner comes before the title
    match = re.search(r"<div class='banner (\w+)'[^>]*>(.*?)</div>", head, re.S)
    return f"{match.group(1)}: {match.group(2)}" if match else ""


def test_banner_for_the_shipped_default_model(tmp_path):
    from fieldmon.model.metadata import read_metadata, resolve_model_path

    card = read_metadata(resolve_model_path("default"))
    output = survey()
    output.metadata["model_id"] = card["model_id"]
    f1 = card["metrics"]["validation"]["file_macro_f1"]
    quality = model_quality(output)
    assert quality.status == "preliminary" and quality.file_macro_f1 == pytest.approx(f1)
    banner = _banner(write_report(output, tmp_path).read_text())
    assert banner.startswith("preliminary:") and "Preliminary model" in banner and f"{f1:.3f}" in banner


def _bundle_with_f1(source, target, f1):
    from fieldmon.model.loading import load_model

    bundle = load_model(source)
    bundle.metrics = {} if f1 is None else {"validation": {"file_macro_f1": f1}}
    bundle.save(target)
    return bundle.model_id


@pytest.mark.parametrize("f1, status", [(0.9, "ok"), (0.5, "preliminary"), (None, "unknown")])
def test_banner_from_the_bundles_validation_f1(tmp_path, accepting_model, f1, status):
    model_id = _bundle_with_f1(accepting_model, tmp_path / "model", f1)
    output = survey()
    output.metadata["model_id"] = model_id
    assert model_quality(output, tmp_path / "model").status == status
    page = write_report(output, tmp_path / "r", model=tmp_path / "model").read_text()
    banner = _banner(page)
    if status == "ok":
        assert banner == "" and "validation macro-F1 per file 0.900" in page
    else:
        assert banner.startswith(f"{status}:")
        assert ("0.500" in banner) if status == "preliminary" else ("quality is unknown" in banner)


@pytest.mark.parametrize("readme, status", [("Status: **preliminary**.", "preliminary"), ("Status: final.", "ok")])
def test_default_model_card_saying_preliminary_shows_the_banner(tmp_path, accepting_model, monkeypatch, readme,
                                                                 status):
    # a repository layout: models/default holds the bundle, models/README.md its card
    model_id = _bundle_with_f1(accepting_model, tmp_path / "models" / "default", 0.9)
    (tmp_path / "models" / "README.md").write_text(f"# The default model\n\n{readme}\n")
    monkeypatch.setattr(quality_module, "_shipped_default_dir", lambda: tmp_path / "models" / "default")
    output = survey()
    output.metadata["model_id"] = model_id
    quality = model_quality(output)
    assert quality.status == status
    assert ("models/README.md" in quality.text) == (status == "preliminary")


def test_model_not_found_says_its_quality_is_unknown(tmp_path):
    output = survey()  # MODEL_ID is neither the shipped default nor given
    quality = model_quality(output)
    assert quality.status == "unknown" and MODEL_ID in quality.text
    banner = _banner(write_report(output, tmp_path).read_text())
    assert banner.startswith("unknown:") and "Model quality unknown" in banner and "quality is unknown" in banner


NO_TIME = "no detections with a known time"


def test_no_detections_with_a_known_time_only_when_times_are_unknown(tmp_path):
    # all windows unknown, times known
    rejected = ScanOutput(detections([("a.wav", "2024-05-01 05:40", "unknown", 0.1)] * 4), files(FILES),
                          {"model_id": MODEL_ID})
    page = write_report(rejected, tmp_path / "rejected").read_text()
    assert NO_TIME not in page.lower() and "all 4 windows are &#x27;unknown&#x27;" in page
    assert "not recorded" in page  # the effort by hour is still shown
    # filters removed every window, times known
    filters = Filters(min_score=0.95)
    filtered = apply_filters(survey(), filters)
    assert filtered.detections.empty
    page = write_report(filtered, tmp_path / "filtered", filters).read_text()
    assert NO_TIME not in page.lower() and "No detections after the filters (score &gt;= 0.95)" in page
    # detections, but no time at all: only now is the time the reason
    untimed = ScanOutput(detections([("a.wav", None, "cricket", 0.9)] * 3),
                         files([("a.wav", "ok", None, 60)]), {"model_id": MODEL_ID})
    page = write_report(untimed, tmp_path / "untimed").read_text()
    assert NO_TIME in page.lower()
    assert "cricket" in page.split("<h2>Species summary</h2>")[1].split("<h2>")[0]  # still counted
