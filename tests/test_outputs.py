from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from click.testing import CliRunner

from conftest import RECORDER_SERIES, require_shared, write_wav
from fieldmon.cli import main
from fieldmon.outputs.export import RAVEN_COLUMNS, export, extract_clips
from fieldmon.outputs.report import daily_detections, diel_activity, effort, species_summary, write_report
from fieldmon.outputs.tables import Filters, apply_filters, read_scan
from fieldmon.scan.pipeline import scan


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, accepting_model):
    """Two sites over two days (AudioMoth UTC names), plus one broken file."""
    root = tmp_path_factory.mktemp("recordings")
    for site, names in {"north": ["20240501_220000.WAV", "20240502_053000.WAV"],
                        "south": ["20240502_053000.WAV", "20240502_120000.WAV"]}.items():
        for i, name in enumerate(names):
            write_wav(root / site / name, 6.0 + 2 * i, sr=32000, seed=hash((site, i)) % 1000)
    (root / "south" / "broken.wav").write_bytes(b"not audio at all")
    out = root.parent / "det.parquet"
    scan(root, out, accepting_model)
    return root, out


def test_tables_match_the_detections(scanned):
    _, out = scanned
    output = read_scan(out)
    d = output.detections
    assert output.time_column == "start_time" and len(d) == 3 + 4 + 3 + 4
    summary = species_summary(output).set_index("species")
    for species, group in d.groupby("label"):
        row = summary.loc[species]
        assert row.windows == len(group)
        assert row.files == group.path.nunique() and row.sites == group.site.nunique()
        assert row.days_detected == group.start_time.dt.date.nunique()
        assert row.first_detection == group.start_time.min().tz_convert(None)
        assert row.mean_score == pytest.approx(group.score.mean(), abs=1e-4)
    daily = daily_detections(output)
    assert daily.values.sum() == len(d)
    assert daily.loc[pd.Timestamp("2024-05-01").date()].sum() == 3
    diel = diel_activity(output)
    assert diel.shape[0] == 24 and diel.loc[22].sum() == 3 and diel.loc[5].sum() == 4 + 3 and diel.loc[12].sum() == 4
    eff = effort(output).set_index(["site", "date"])
    assert eff.loc[("north", pd.Timestamp("2024-05-01").date()), "hours_recorded"] == pytest.approx(6 / 3600, abs=1e-4)
    assert eff.files_failed.sum() == 1 and eff.files_ok.sum() == 4


def test_filters(scanned):
    _, out = scanned
    output = read_scan(out)
    some = output.detections.label.iloc[0]
    only = apply_filters(output, Filters(species=(some,), sites=("south",), start=pd.Timestamp("2024-05-02")))
    assert set(only.detections.label) == {some} and set(only.detections.site) == {"south"}
    assert (only.detections.start_time >= pd.Timestamp("2024-05-02", tz="UTC")).all()
    high = apply_filters(output, Filters(min_score=0.9))
    assert (high.detections.score >= 0.9).all()


def test_report_html_is_self_contained(scanned, accepting_model, tmp_path):
    _, out = scanned
    result = CliRunner().invoke(main, ["report", str(out), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # score distributions, daily, diel
    assert "src='http" not in page and "<script" not in page
    assert "unknown windows" in page and "accepting-" in page  # the model id
    for name in ("species_summary", "score_distribution", "daily_detections", "diel_activity", "effort_by_hour",
                 "diel_rate", "effort"):
        assert (tmp_path / "r" / f"{name}.csv").stat().st_size > 0
    # the scan's model is not the shipped default: without --model its quality is unknown
    assert "was not found" in " ".join(page.split())
    result = CliRunner().invoke(main, ["report", str(out), "--out", str(tmp_path / "r2"), "--model", str(accepting_model)])
    assert result.exit_code == 0, result.output
    assert "was not found" not in " ".join((tmp_path / "r2" / "report.html").read_text().split())


def test_raven_tables_one_per_audio_file(scanned, tmp_path):
    _, out = scanned
    written = export(read_scan(out), "raven", tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "north/20240501_220000.Table.1.selections.txt", "north/20240502_053000.Table.1.selections.txt",
        "south/20240502_053000.Table.1.selections.txt", "south/20240502_120000.Table.1.selections.txt"]
    table = pd.read_csv(written[0], sep="\t")
    assert list(table.columns) == RAVEN_COLUMNS
    assert table["Selection"].tolist() == [1, 2, 3]
    assert table["Begin Time (s)"].tolist() == [0.0, 2.0, 4.0]
    assert (table["View"] == "Spectrogram 1").all() and (table["Channel"] == 1).all()
    assert (table["High Freq (Hz)"] == 16000).all()


def test_audacity_and_csv(scanned, tmp_path):
    _, out = scanned
    [label_file] = [p for p in export(read_scan(out), "audacity", tmp_path) if p.name == "20240501_220000.labels.txt"]
    lines = label_file.read_text().splitlines()
    assert len(lines) == 3 and lines[1].split("\t")[:2] == ["2.000000", "4.000000"]
    [flat] = export(read_scan(out), "csv", tmp_path)
    assert len(pd.read_csv(flat)) == 14


def test_clips_match_their_windows_sample_for_sample(scanned, tmp_path):
    root, out = scanned
    output = read_scan(out)
    index = extract_clips(output, root, tmp_path / "clips", per_species=2)
    assert (index.groupby("species").size() <= 2).all() and len(index) >= 2
    for row in index.itertuples():
        clip, sr = sf.read(tmp_path / "clips" / row.clip, dtype="float32")
        source, source_sr = sf.read(root / row.path, dtype="float32")
        start = int(round(row.window_start_s * sr))
        assert sr == source_sr == 32000
        np.testing.assert_array_equal(clip, source[start : start + len(clip)])
        assert len(clip) == min(2 * sr, len(source) - start)
        assert (tmp_path / "clips" / row.spectrogram).stat().st_size > 1000
    best = output.detections.sort_values("score", ascending=False)
    top = best[best.label == index.species.iloc[0]].score.iloc[0]
    assert index.score.iloc[0] == pytest.approx(top)
    random = extract_clips(output, root, tmp_path / "random", per_species=1, mode="random", seed=3)
    assert len(random) == index.species.nunique()


def test_report_on_the_recorder_series_day(tmp_path, accepting_model):
    series = require_shared(RECORDER_SERIES)
    out = tmp_path / "day.parquet"
    scan(series, out, accepting_model)
    write_report(read_scan(out), tmp_path / "report")
    diel = pd.read_csv(tmp_path / "report" / "diel_activity.csv", index_col="hour")
    assert diel.values.sum() == 480 and (diel.sum(axis=1) == 20).all()  # 4 files x 5 windows every hour
    eff = pd.read_csv(tmp_path / "report" / "effort.csv")
    assert eff.hours_recorded.sum() == pytest.approx(96 * 10 / 3600, abs=1e-3)


def test_user_mistakes_on_reports_and_exports_are_clear(scanned, tmp_path):
    _, out = scanned
    runner = CliRunner()
    # the per-file table instead of the detections
    files_table = out.parent / (out.name.replace(".parquet", "") + ".files.parquet")
    result = runner.invoke(main, ["report", str(files_table), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "per-file table" in result.output and result.exception.__class__ is SystemExit
    # dates only as YYYY-MM-DD, and in order
    for bad in ("2019-13-45", "05/06/2019"):
        result = runner.invoke(main, ["report", str(out), "--out", str(tmp_path / "r"), "--to", bad])
        assert result.exit_code == 2 and "--to" in result.output and "YYYY-MM-DD" in result.output
    result = runner.invoke(main, ["report", str(out), "--out", str(tmp_path / "r"), "--from", "2024-06-01",
                                  "--to", "2024-05-01"])
    assert result.exit_code == 2 and "after --to" in result.output
    # filters that match nothing say so
    result = runner.invoke(main, ["export", str(out), "--format", "csv", "--out", str(tmp_path / "e"),
                                  "--species", "Bufo bufo", "--site", "east"])
    assert result.exit_code == 0
    assert "--species 'Bufo bufo' matches no species" in result.output and "--site 'east' matches no site" in result.output
    assert "no detections are left after the filters" in result.output


def test_species_filter_ignores_case_and_spaces(scanned):
    _, out = scanned
    output = read_scan(out)
    label = sorted(set(output.detections.label) - {"unknown"})[0]  # e.g. "katydid"
    spaced = " ".join(label.upper())  # "K A T Y D I D"
    known = apply_filters(output, Filters(species=(spaced,))).detections
    assert set(known.label) - {"unknown"} == {label}


@pytest.mark.parametrize("command", ["report", "export", "clips", "train"])
def test_read_only_output_folder_is_a_one_line_error(scanned, tmp_path, command):
    import shutil
    import subprocess
    import sys

    _, out = scanned
    locked = tmp_path / "locked"
    locked.mkdir()
    args = {"report": ["report", str(out)], "export": ["export", str(out), "--format", "csv"],
            "clips": ["clips", str(out)], "train": ["train", str(tmp_path / "clips"), "--steps", "1"]}[command]
    if command == "train":
        for species in ("a", "b"):
            for i in range(2):
                write_wav(tmp_path / "clips" / species / f"{i}.wav", 2.0, seed=i + 10 * (species == "b"))
    run = [sys.executable, "-m", "fieldmon", *args, "--out", str(locked / "sub")]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without util-linux setpriv, so no folder can be made read-only")
        run = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *run]
    locked.chmod(0o555)
    try:
        result = subprocess.run(run, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        locked.chmod(0o755)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "ermission denied" in result.stderr, result.stderr
    assert str(locked / "sub") in result.stderr


def test_report_effort_by_hour_of_a_scan(scanned, tmp_path):
    """Files of 6 s at 22:00, 8 s + 6 s at 05:30 and 8 s at 12:00 (UTC): effort and
    detections per recorded hour, every other hour not recorded."""
    _, out = scanned
    result = CliRunner().invoke(main, ["report", str(out), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    eff = pd.read_csv(tmp_path / "r" / "effort_by_hour.csv", index_col="hour")
    assert eff.hours_recorded[22] * 3600 == pytest.approx(6, abs=0.01)
    assert eff.hours_recorded[5] * 3600 == pytest.approx(14, abs=0.01)
    assert eff.hours_recorded[12] * 3600 == pytest.approx(8, abs=0.01)
    assert (eff.drop([5, 12, 22]).hours_recorded == 0).all()
    rate = pd.read_csv(tmp_path / "r" / "diel_rate.csv", index_col="hour")
    assert rate.loc[22].sum() == pytest.approx(3 / (6 / 3600), rel=1e-3)
    assert rate.drop([5, 12, 22]).isna().all().all()
    summary = pd.read_csv(tmp_path / "r" / "species_summary.csv")
    assert summary.hours_recorded.tolist() == pytest.approx([28 / 3600] * len(summary), rel=1e-3)
    assert summary.detections_per_recorded_hour.tolist() == pytest.approx(summary.windows / (28 / 3600), rel=1e-3)
    page = (tmp_path / "r" / "report.html").read_text()
    assert "not recorded</td>" in page and "no detections with a known time" not in page.lower()
    # dates without any window: no detections, said as such (the times are known)
    result = CliRunner().invoke(main, ["report", str(out), "--out", str(tmp_path / "later"), "--from", "2024-06-01"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "later" / "report.html").read_text()
    assert "No detections after the filters" in page and "no detections with a known time" not in page.lower()
