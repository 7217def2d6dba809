"""The review loop: the stratified sample, the review page (in headless Chromium when
it is installed), the verdicts CSV, precision per species and score thresholds."""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from click.testing import CliRunner

from cdp import Browser, find_browser
from conftest import write_wav
from fieldmon import load_model
from fieldmon.cli import main
from fieldmon.outputs.review import VERDICT_COLUMNS, ReviewSettings, stratified_sample
from fieldmon.outputs.tables import read_scan
from fieldmon.outputs.verdicts import precision_table, wilson
from fieldmon.scan.pipeline import scan
from fieldmon.train.api import TrainCallbacks, train
from fieldmon.train.settings import TrainSettings
from test_training import TINY_COMPACT


def windows(scores: dict[str, list[float]]) -> pd.DataFrame:
    rows = [(species, score, f"{species}.wav", float(i)) for species, values in scores.items()
            for i, score in enumerate(values)]
    return pd.DataFrame(rows, columns=["label", "score", "path", "window_start_s"])


def test_the_sample_spreads_over_the_score_range_and_its_weights_add_up_to_the_detections():
    rng = np.random.default_rng(1)
    # most windows score low: a simple random sample would hardly see the high scores
    many = list(np.concatenate([rng.uniform(0.1, 0.4, 300), rng.uniform(0.4, 0.95, 20)]))
    detections = windows({"cricket": many, "katydid": [0.5, 0.6, 0.7]})
    sample = stratified_sample(detections, ReviewSettings(per_species=12, strata=4, seed=3))
    cricket = sample[sample.label == "cricket"]
    assert len(cricket) == 12 and cricket.stratum.nunique() == 4
    assert (cricket.score > 0.8).sum() >= 2  # the top stratum is sampled as often as the bottom
    for stratum, group in cricket.groupby("stratum"):
        low, high = group.stratum_low.iloc[0], group.stratum_high.iloc[0]
        inside = (detections.score >= low) & ((detections.score < high) if stratum < 3 else True)
        assert group.stratum_windows.iloc[0] == (inside & (detections.label == "cricket")).sum()
        assert group.score.isin(detections.score[inside]).all()
    # each stratum's size counted once per stratum is every window of the species
    assert cricket.drop_duplicates("stratum").stratum_windows.sum() == len(many)
    katydid = sample[sample.label == "katydid"]
    assert sorted(katydid.score) == [0.5, 0.6, 0.7]  # fewer windows than asked for: all of them
    again = stratified_sample(detections, ReviewSettings(per_species=12, strata=4, seed=3))
    assert again.equals(sample)
    other = stratified_sample(detections, ReviewSettings(per_species=12, strata=4, seed=4))
    assert not other[other.label == "cricket"].window_start_s.equals(cricket.window_start_s)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, accepting_model):
    """Song Meter names (local time) at one site: every window gets a species."""
    root = tmp_path_factory.mktemp("recordings")
    for i, name in enumerate(["S4A00001_20240501_053000.wav", "S4A00001_20240501_060000.wav",
                              "S4A00001_20240501_063000.wav"]):
        write_wav(root / name, 8.0, sr=16000, seed=i)
    out = tmp_path_factory.mktemp("review-scan") / "det.parquet"
    scan(root, out, accepting_model)
    return root, out


def review(scanned, out, *extra):
    root, detections = scanned
    return CliRunner().invoke(main, ["review", str(detections), "--out", str(out), "--audio-root", str(root),
                                     "--per-species", "4", "--context", "1", *extra])


def test_review_page_is_offline_with_media_beside_it(scanned, tmp_path):
    result = review(scanned, tmp_path / "review")
    assert result.exit_code == 0, result.output
    out = tmp_path / "review"
    sample = pd.read_csv(out / "sample.csv")
    page = (out / "index.html").read_text()
    assert "http://" not in page and "https://" not in page
    for item in sample.itertuples():
        stem = f"media/{item.item:04d}_{item.species}"
        assert f'"{stem}.flac"' in page and f'"{stem}.png"' in page
        assert (out / f"{stem}.flac").stat().st_size > 0 and (out / f"{stem}.png").stat().st_size > 0
    assert f"wrote {out / 'index.html'}: {len(sample)} windows" in result.output
    assert sample.groupby("species").size().max() <= 4
    assert (sample.weight == sample.stratum_windows / sample.stratum_sampled).all()


def test_a_missing_recording_skips_its_windows_with_a_warning(scanned, tmp_path):
    root, _ = scanned
    moved = tmp_path / "moved"
    moved.mkdir()
    for wav in root.iterdir():
        (moved / wav.name).write_bytes(wav.read_bytes())
    (moved / "S4A00001_20240501_060000.wav").unlink()
    (moved / "S4A00001_20240501_063000.wav").write_bytes(b"RIFF broken")
    result = review((moved, scanned[1]), tmp_path / "review")
    assert result.exit_code == 0, result.output
    assert "S4A00001_20240501_060000.wav: cannot read the audio" in result.output
    assert "S4A00001_20240501_063000.wav: cannot read the audio" in result.output
    sample = pd.read_csv(tmp_path / "review" / "sample.csv")
    assert set(sample.path) == {"S4A00001_20240501_053000.wav"}
    assert "left out: audio not readable" in result.output


@pytest.fixture
def browser():
    executable = find_browser()
    if executable is None:
        pytest.skip("needs Chromium for the browser test (apt-get install chromium); not installed here")
    with Browser(executable) as opened:
        yield opened


MEDIA_STATE = """(() => {
  const audio = [...document.querySelectorAll("audio")], images = [...document.images];
  if (!audio.every(a => a.readyState >= 1 || a.error) || !images.every(i => i.complete)) return null;
  return {audio: audio.map(a => ({ok: !a.error && a.duration > 0, src: a.getAttribute("src")})),
          images: images.map(i => ({ok: i.naturalWidth > 0, src: i.getAttribute("src")}))};
})()"""

PAGE_VERDICTS = """[...document.querySelectorAll(".item")].map(card => [card.dataset.item, card.dataset.verdict,
  card.querySelector("select").value])"""


def click(browser, item: int, verdict: str) -> None:
    browser.evaluate(f'document.querySelector("#item-{item} button[data-verdict={verdict}]").click()')


def choose_species(browser, item: int, species: str) -> None:
    browser.evaluate(f'(() => {{ const s = document.querySelector("#item-{item} select"); s.value = {species!r};'
                     's.dispatchEvent(new Event("change")); })()')


def save_csv(browser, folder) -> list[dict]:
    folder.mkdir(exist_ok=True)
    browser.send("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(folder))
    browser.evaluate('document.getElementById("save").click()')
    deadline = time.monotonic() + 20
    while not (saved := [p for p in folder.glob("verdicts-*.csv")]):
        assert time.monotonic() < deadline, "the page saved no CSV"
        time.sleep(0.1)
    with open(saved[0], newline="") as fh:
        return list(csv.DictReader(fh))


def test_review_page_in_chromium_loads_its_media_and_round_trips_the_verdicts(scanned, tmp_path, browser):
    out = tmp_path / "review"
    assert review(scanned, out, "--per-species", "12").exit_code == 0
    sample = pd.read_csv(out / "sample.csv")
    assert len(sample) >= 5, sample
    browser.open((out / "index.html").as_uri())
    media = browser.wait_for(MEDIA_STATE)
    assert len(media["audio"]) == len(media["images"]) == len(sample)
    assert all(m["ok"] for m in media["audio"] + media["images"]), media

    other = next(s for s in browser.evaluate("DATA.species") if s != sample.species[1])
    click(browser, 1, "correct")
    click(browser, 2, "wrong")
    choose_species(browser, 2, other)
    click(browser, 3, "wrong")  # wrong, and none of the listed species
    click(browser, 4, "unsure")
    assert browser.evaluate(PAGE_VERDICTS)[:4] == [["1", "correct", ""], ["2", "wrong", other], ["3", "wrong", ""],
                                                   ["4", "unsure", ""]]
    rows = save_csv(browser, tmp_path / "downloads")
    assert list(rows[0]) == VERDICT_COLUMNS and len(rows) == len(sample)
    assert [(r["verdict"], r["correct_species"]) for r in rows[:5]] == [
        ("correct", ""), ("wrong", other), ("wrong", ""), ("unsure", ""), ("", "")]
    for row, expected in zip(rows, sample.itertuples(), strict=True):
        assert (row["species"], row["path"], float(row["score"])) == (expected.species, expected.path, expected.score)

    # the browser keeps the verdicts over a reload...
    browser.open((out / "index.html").as_uri())
    assert browser.evaluate(PAGE_VERDICTS)[1] == ["2", "wrong", other]
    # ...and a page without them gets them back from the saved CSV
    browser.evaluate("localStorage.clear()")
    browser.open((out / "index.html").as_uri())
    assert browser.evaluate(PAGE_VERDICTS)[0] == ["1", "", ""]
    document = browser.send("DOM.getDocument")
    node = browser.send("DOM.querySelector", nodeId=document["root"]["nodeId"], selector="#load")
    saved = next((tmp_path / "downloads").glob("verdicts-*.csv"))
    browser.send("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(saved)])
    assert "restored 4 windows" in browser.wait_for('document.getElementById("status").textContent')
    assert browser.evaluate(PAGE_VERDICTS)[:5] == [["1", "correct", ""], ["2", "wrong", other], ["3", "wrong", ""],
                                                   ["4", "unsure", ""], ["5", "", ""]]
    # the saved CSV is what review-summary reads
    result = CliRunner().invoke(main, ["review-summary", str(saved), "--out", str(tmp_path / "thresholds.json")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "thresholds.csv")
    assert table.correct.sum() == 1 and table.wrong.sum() == 2 and table.unsure.sum() == 1


def verdict_rows(strata: list[tuple[int, list[tuple[float, str]]]], species: str = "cricket") -> pd.DataFrame:
    """strata: (windows in the stratum, [(score, verdict), ...] reviewed from it)."""
    rows = []
    for s, (size, reviewed) in enumerate(strata):
        for score, verdict in reviewed:
            rows.append({"species": species, "stratum": s, "stratum_windows": size, "score": score,
                         "verdict": verdict, "correct_species": ""})
    return pd.DataFrame(rows)


def test_wilson_interval_matches_the_textbook_values():
    assert wilson(0.5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(1.0, 20) == pytest.approx((0.8389, 1.0), abs=1e-4)


def test_precision_is_weighted_back_to_all_detections_and_the_threshold_reaches_the_target():
    low = [(0.30, "correct"), (0.32, "wrong"), (0.35, "wrong"), (0.38, "wrong"), (0.31, "unsure")]
    high = [(0.80, "correct"), (0.85, "correct"), (0.90, "correct"), (0.95, "correct")]
    table = precision_table(verdict_rows([(100, low), (10, high)]), target=0.9).iloc[0]
    # 100 windows at 1/4 correct and 10 at 4/4 (the unsure window counts in neither)
    assert table.precision == pytest.approx((100 * 0.25 + 10 * 1.0) / 110)
    weights = np.array([25.0] * 4 + [2.5] * 4)
    n_eff = weights.sum() ** 2 / (weights**2).sum()
    assert table.effective_n == pytest.approx(n_eff)
    assert (table.low, table.high) == pytest.approx(wilson(table.precision, n_eff))
    assert (table.correct, table.wrong, table.unsure) == (5, 3, 1)
    assert table.threshold == 0.80 and table.precision_at_threshold == 1.0 and table.reviewed_at_threshold == 4
    # a wrong window at the top: the lowest score where the windows above it reach 0.75
    high[3] = (0.95, "wrong")
    table = precision_table(verdict_rows([(100, low), (10, high)]), target=0.75).iloc[0]
    assert table.threshold == 0.80 and table.precision_at_threshold == pytest.approx(0.75)
    assert np.isnan(precision_table(verdict_rows([(100, low), (10, high)]), target=0.99).iloc[0].threshold)


def mark(sample: pd.DataFrame, rule) -> pd.DataFrame:
    """A verdicts table as the page saves it, with ``rule(row) -> (verdict, correct_species)``."""
    marked = sample.copy()
    marked[["verdict", "correct_species"]] = [rule(row) for row in sample.itertuples()]
    return marked[VERDICT_COLUMNS]


def test_review_summary_thresholds_are_applied_by_export_and_report(scanned, tmp_path):
    root, detections = scanned
    assert review(scanned, tmp_path / "review", "--per-species", "12").exit_code == 0
    sample = pd.read_csv(tmp_path / "review" / "sample.csv")
    cut = {species: group.score.median() for species, group in sample.groupby("species")}
    verdicts = tmp_path / "verdicts.csv"
    mark(sample, lambda r: ("correct" if r.score >= cut[r.species] else "wrong", "")).to_csv(verdicts, index=False)
    result = CliRunner().invoke(main, ["review-summary", str(verdicts), "--target-precision", "1",
                                       "--out", str(tmp_path / "thresholds.json")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "thresholds.csv").set_index("species")
    thresholds = json.loads((tmp_path / "thresholds.json").read_text())
    for species, group in sample.groupby("species"):
        lowest_correct = group.score[group.score >= cut[species]].min()
        assert table.loc[species, "threshold"] == thresholds["species"][species]["threshold"] == lowest_correct
        assert f"{species:<30}" in result.output
    assert thresholds["target_precision"] == 1 and "Wilson" in thresholds["interval"]
    assert thresholds["provenance"]["verdicts"] == str(verdicts)

    result = CliRunner().invoke(main, ["export", str(detections), "--format", "csv", "--out", str(tmp_path / "e"),
                                       "--thresholds", str(tmp_path / "thresholds.json")])
    assert result.exit_code == 0, result.output
    kept = pd.read_csv(tmp_path / "e" / "detections.csv")
    everything = read_scan(detections).detections
    at_least = everything.label.map(lambda label: thresholds["species"][label]["threshold"])
    expected = everything[everything.score >= at_least]
    assert len(kept) == len(expected) < len(everything)
    result = CliRunner().invoke(main, ["report", str(detections), "--out", str(tmp_path / "r"),
                                       "--thresholds", str(tmp_path / "thresholds.json")])
    assert result.exit_code == 0, result.output
    assert "review thresholds of" in (tmp_path / "r" / "report.html").read_text()
    summary = pd.read_csv(tmp_path / "r" / "species_summary.csv")
    assert summary.windows.sum() == len(expected)


def test_bad_verdicts_and_thresholds_files_are_named(scanned, tmp_path):
    _, detections = scanned
    bad = tmp_path / "notes.csv"
    bad.write_text("a,b\n1,2\n")
    result = CliRunner().invoke(main, ["review-summary", str(bad)])
    assert result.exit_code == 1 and f"{bad}: not a verdicts CSV" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["export", str(detections), "--format", "csv", "--out", str(tmp_path / "e"),
                                       "--thresholds", str(bad)])
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "--thresholds" in errors[0] and str(bad) in result.output
    result = CliRunner().invoke(main, ["review-summary", str(bad), "--target-precision", "0"])
    assert result.exit_code == 2 and "--target-precision" in result.output


def test_verified_windows_become_training_clips_of_their_right_species(scanned, tmp_path):
    root, _ = scanned
    assert review(scanned, tmp_path / "review", "--per-species", "12").exit_code == 0
    sample = pd.read_csv(tmp_path / "review" / "sample.csv")
    assert len(sample) >= 5
    first, second = sample.species.iloc[0], next(s for s in ["cricket", "katydid", "cicada"] if s != sample.species.iloc[1])
    marks = {1: ("correct", ""), 2: ("wrong", second), 3: ("wrong", ""), 4: ("wrong", "Tettigonia viridissima"),
             5: ("unsure", "")}
    verdicts = tmp_path / "verdicts.csv"
    mark(sample, lambda r: marks.get(r.item, ("", ""))).to_csv(verdicts, index=False)
    clips = tmp_path / "clips"
    for i, species in enumerate(["cricket", "katydid", "cicada"] * 2):
        write_wav(clips / species / f"{i}.wav", 3.0, sr=16000, seed=10 + i)
    messages = []
    settings = TrainSettings(steps=1, windows_per_class=2, eval_every=1, hop_seconds=1.0, baseline=False,
                             mlp_max_epochs=20)
    bundle = train(clips, tmp_path / "model", settings,
                   cache_dir=tmp_path / "cache", network_settings=TINY_COMPACT, verified=verdicts,
                   callbacks=TrainCallbacks(message=messages.append))
    review_counts = bundle.training["from_review"]
    assert {k: review_counts[k] for k in ("correct", "relabelled", "wrong_without_species", "species_not_trained",
                                          "clips_added", "to_reject")} == {
        "correct": 1, "relabelled": 1, "wrong_without_species": 1, "species_not_trained": 1, "clips_added": 2,
        "to_reject": 2}
    # the two windows the model must call unknown calibrate its open-set threshold
    calibration = review_counts["open_set"]
    assert calibration["reject_windows"] >= 2 and calibration["validation_macro_f1_drop"] <= 0.03
    assert bundle.open_set.threshold == calibration["threshold"] >= calibration["from_threshold"]
    assert calibration["from_threshold"] == bundle.metrics["open_set_calibration"]["threshold"]  # calibrated first
    assert any("'Tettigonia viridissima', which the training clips do not have" in m for m in messages)
    assert load_model(tmp_path / "model").training["from_review"] == review_counts  # written to model.json
    info = CliRunner().invoke(main, ["info", str(tmp_path / "model")])
    assert "2 verified windows trained on (1 correct, 1 relabelled), 2 to reject" in info.output, info.output
    split = pd.read_csv(tmp_path / "model" / "split.csv")
    added = split[split.path.str.contains("verified_clips")].sort_values("path")
    assert list(added.label) == [first, second] and set(added.split) == {"train"}
    # the clip is the window itself, cut from the original recording
    for clip, item in zip(added.path, sample.iloc[:2].itertuples(), strict=True):
        got, sr = sf.read(clip, dtype="float32")
        source, _ = sf.read(root / item.path, dtype="float32")
        start = int(round(item.window_start_s * sr))
        np.testing.assert_allclose(got, source[start:start + len(got)], atol=1e-6)
        assert len(got) == round((item.window_end_s - item.window_start_s) * sr)


@pytest.mark.slow
def test_the_review_loop_on_the_song_meter_series(tmp_path):
    # scan -> review page -> verdicts clicked in Chromium -> precision -> site model with
    # the verified windows -> rescan, on 12 files of the real series and 3 species of
    # InsectSet32 (the verdicts follow a fixed rule, tests/review_by_rule.py: no one listens)
    from conftest import INSECTSET, RECORDER_SERIES, require_shared
    from review_by_rule import mark_page

    if find_browser() is None:
        pytest.skip("needs Chromium for the browser step (apt-get install chromium); not installed here")
    series = tmp_path / "series"
    series.mkdir()
    for recording in sorted(require_shared(RECORDER_SERIES).glob("*.wav"))[::8]:
        (series / recording.name).symlink_to(recording)
    runner = CliRunner()
    assert runner.invoke(main, ["scan", str(series), "--out", str(tmp_path / "det.parquet"), "--quiet"]).exit_code == 0
    result = runner.invoke(main, ["review", str(tmp_path / "det.parquet"), "--out", str(tmp_path / "review"),
                                  "--per-species", "6"])
    assert result.exit_code == 0, result.output
    verdicts = mark_page(tmp_path / "review" / "index.html", tmp_path, correct_from=0.6)
    result = runner.invoke(main, ["review-summary", str(verdicts), "--out", str(tmp_path / "thresholds.json")])
    assert result.exit_code == 0, result.output
    marked = pd.read_csv(verdicts)
    correct = marked[marked.verdict == "correct"]
    assert len(correct) and (correct.score >= 0.6).all()
    manifest = pd.read_csv(require_shared(INSECTSET) / "manifest.csv")
    chosen = manifest[manifest.species.isin(set(correct.species) | {"Grylluscampestris", "Kikihiamuta"})]
    chosen.assign(path=[str(INSECTSET / p) for p in chosen.path]).to_csv(tmp_path / "clips.csv", index=False)
    result = runner.invoke(main, ["train", str(tmp_path / "clips.csv"), "--base", "default", "--add-verified",
                                  str(verdicts), "--steps", "2", "--no-baseline", "--out", str(tmp_path / "site"),
                                  "--cache", str(tmp_path / "cache"), "--quiet"])
    assert result.exit_code == 0, result.output
    site = load_model(tmp_path / "site")
    assert site.training["from_review"]["clips_added"] == site.training["from_review"]["correct"] == len(correct)
    result = runner.invoke(main, ["scan", str(series), "--model", str(tmp_path / "site"), "--out",
                                  str(tmp_path / "det-site.parquet"), "--quiet"])
    assert result.exit_code == 0, result.output
    rescanned = read_scan(tmp_path / "det-site.parquet")
    assert len(rescanned.detections) == len(read_scan(tmp_path / "det.parquet").detections)
    assert rescanned.metadata["model_id"] == site.model_id
