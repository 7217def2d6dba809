"""--precision int8: the quantised trunk must agree with fp32 and be refused when stale."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import click_train, harmonic_tone, noise, tone, write_wav
from fieldmon import FeatureExtractor, load_model
from fieldmon.model.metadata import BundleError
from fieldmon.model.int8 import INT8_NAME, export_trunk, quantize_bundle
from fieldmon.outputs.store import StoreError
from fieldmon.scan.pipeline import RunOptions, ScanSettings, scan
from fieldmon.train.api import int8_threshold_rule
from fieldmon.train.classifier import calibrated_threshold

pytest.importorskip("onnxruntime", reason="int8 needs the int8 extra: pip install -e '.[int8]'")


def signals(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    makers = [lambda: tone(rng.uniform(500, 8000), 2.0), lambda: harmonic_tone(rng.uniform(200, 2000), 2.0),
              lambda: click_train(rng.uniform(5, 60), 2.0), lambda: noise(2.0, seed=int(rng.integers(1000)))]
    return np.stack([makers[i % 4]() + noise(2.0, seed=i, amplitude=0.01) for i in range(n)]).astype(np.float32)


@pytest.fixture(params=["paper", "compact"])
def quantised(request, tmp_path, tiny_model, tiny_compact_model):
    model = tmp_path / "model"
    shutil.copytree(tiny_model if request.param == "paper" else tiny_compact_model, model)
    bundle = load_model(model)
    features = FeatureExtractor(bundle.feature_settings)(signals(48, seed=1)).numpy()
    quantize_bundle(model, features)
    return model


def test_int8_embeddings_agree_with_fp32(quantised):
    fp32, int8 = load_model(quantised), load_model(quantised, "int8")
    assert int8.model_id == fp32.model_id + "+int8"
    features = FeatureExtractor(fp32.feature_settings)(signals(32, seed=2))  # not the calibration windows
    a = fp32.predict(features, fp32.feature_settings)
    b = int8.predict(features, int8.feature_settings)
    cosine = torch.nn.functional.cosine_similarity(a.embeddings, b.embeddings, dim=1)
    assert cosine.min() > 0.98  # full-range int8 weights overflow on AVX2 and give ~0.6
    assert (a.predicted == b.predicted).float().mean() >= 0.9


def test_open_set_is_fitted_again_on_int8_embeddings(tiny_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    fp32 = load_model(model)
    extractor = FeatureExtractor(fp32.feature_settings)
    validation = extractor(signals(24, seed=4))
    labels = np.arange(24) % 3
    quantize_bundle(model, extractor(signals(48, seed=1)).numpy(), (validation.numpy(), labels))

    int8 = load_model(model, "int8")
    embeddings = int8.predict(validation, int8.feature_settings).embeddings
    distances = [torch.linalg.vector_norm(embeddings[labels == c] - int8.open_set.class_means[c], dim=1)
                 for c in range(3)]
    pooled = float(np.sqrt(np.mean([float(d.std(unbiased=False)) ** 2 for d in distances])))
    for c, d in enumerate(distances):
        assert float(int8.open_set.distance_mean[c]) == pytest.approx(float(d.mean()), rel=1e-5)
        # each spread at least the pooled one, as fp32 fits it (fieldmon.model.openset)
        expected = max(float(d.std(unbiased=False)), pooled)
        assert float(int8.open_set.distance_std[c]) == pytest.approx(expected, rel=1e-4)
    # fp32 keeps its own calibration; the class means and the threshold are shared
    reloaded = load_model(model)
    assert torch.equal(reloaded.open_set.distance_mean, fp32.open_set.distance_mean)
    assert not torch.equal(int8.open_set.distance_mean, fp32.open_set.distance_mean)
    assert torch.equal(int8.open_set.class_means, fp32.open_set.class_means)
    assert int8.open_set.threshold == fp32.open_set.threshold


def test_int8_threshold_is_chosen_again_on_int8_scores_when_a_rule_is_given(tiny_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    fp32 = load_model(model)
    extractor = FeatureExtractor(fp32.feature_settings)
    validation, labels = extractor(signals(24, seed=4)), np.arange(24) % 3
    given = []

    def rule(open_set, embeddings, truth):
        given.append((open_set, embeddings, truth))
        return 0.123, {"rule": "test"}

    quantize_bundle(model, extractor(signals(48, seed=1)).numpy(), (validation.numpy(), labels), calibrate=rule)
    int8 = load_model(model, "int8")
    assert int8.open_set.threshold == 0.123
    assert load_model(model).open_set.threshold == fp32.open_set.threshold
    open_set, embeddings, truth = given[0]
    assert torch.equal(open_set.distance_mean, int8.open_set.distance_mean)  # the refitted open set
    torch.testing.assert_close(embeddings, int8.predict(validation, int8.feature_settings).embeddings)
    assert truth.tolist() == labels.tolist()


def test_int8_recalibrates_only_a_threshold_that_calibration_chose(tiny_model):
    bundle = load_model(tiny_model)
    assert int8_threshold_rule(bundle) is None  # no calibration recorded: kept as given
    bundle.metrics["open_set_calibration"] = {"threshold": bundle.open_set.threshold}
    embeddings = torch.nn.functional.normalize(torch.randn(12, 8, generator=torch.Generator().manual_seed(3)), dim=1)
    labels = torch.arange(12) % 3
    expected = calibrated_threshold(bundle.open_set, bundle.classifier, embeddings, labels, bundle.class_names)
    assert int8_threshold_rule(bundle)(bundle.open_set, embeddings, labels) == expected
    bundle.metrics["open_set_calibration"] = {"threshold": bundle.open_set.threshold - 0.005}  # raised since, by review
    assert int8_threshold_rule(bundle) is None


def test_missing_stale_or_modified_int8_file_is_refused(quantised, tiny_model, tmp_path):
    with pytest.raises(BundleError, match="fieldmon quantize"):
        load_model(tiny_model, "int8")
    data = bytearray((quantised / INT8_NAME).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (quantised / INT8_NAME).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        load_model(quantised, "int8")


def test_int8_scan_rows_name_the_int8_model_and_are_not_mixed_with_fp32(quantised, tmp_path):
    rec = tmp_path / "rec"
    write_wav(rec / "a.wav", 6.0)
    out = tmp_path / "det.parquet"
    summary = scan(rec, out, quantised, ScanSettings(), RunOptions(device="cpu", precision="int8"))
    assert summary.exit_code == 0 and summary.rows == 3
    assert set(pd.read_parquet(out).model_id) == {load_model(quantised).model_id + "+int8"}
    with pytest.raises(StoreError, match="another model"):
        scan(rec, out, quantised, ScanSettings(), RunOptions(device="cpu"))


def test_fp32_onnx_gives_the_numbers_of_fp32_and_reexports_a_tampered_graph(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fp32, onnx = load_model(tiny_model), load_model(tiny_model, "fp32-onnx")
    assert onnx.model_id == fp32.model_id  # same numbers, so one scan may continue the other
    features = FeatureExtractor(fp32.feature_settings)(signals(16, seed=3))
    a, b = fp32.predict(features, fp32.feature_settings), onnx.predict(features, onnx.feature_settings)
    torch.testing.assert_close(b.probabilities, a.probabilities, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.open_set_scores, a.open_set_scores, atol=1e-5, rtol=1e-4)

    graph = tmp_path / "cache" / "fieldmon" / "onnx" / f"{fp32.model_id}.trunk.fp32.onnx"
    bundle = load_model(tiny_model)  # a graph of other weights, left under this model's name
    next(bundle.network.trunk.parameters()).data.mul_(3.0)
    export_trunk(bundle.network.trunk, torch.rand(2, *features.shape[1:]), graph)
    with pytest.raises(BundleError, match="delete it"):
        load_model(tiny_model, "fp32-onnx")
