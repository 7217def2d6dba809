"""--precision bf16 / fp16: the trunk under torch.autocast, for GPUs."""

from __future__ import annotations

import pytest
import torch

from conftest import write_wav
from fieldmon import FeatureExtractor, load_model
from fieldmon.model.autocast import AUTOCAST_PRECISIONS
from fieldmon.scan.pipeline import RayOptions, RunOptions, ScanSettings, scan
from fieldmon.scan.ray_engine import plan_placement
from test_int8 import signals

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", sorted(AUTOCAST_PRECISIONS))
def test_autocast_trunk_agrees_with_fp32_and_names_itself(precision, device, tiny_model):
    # the full network in low precision is slow on a CPU: there, the tiny one
    model = tiny_model if device == "cpu" else "default"
    fp32 = load_model(model).to(device).eval()
    low = load_model(model, precision).to(device).eval()
    assert low.model_id == fp32.model_id + f"+{precision}"
    features = FeatureExtractor(fp32.feature_settings)(signals(8, seed=3)).to(device)
    pooled = low.network.trunk(features)
    assert pooled.dtype == torch.float32  # the head, MLP and open set stay in fp32
    a, b = fp32.predict(features, fp32.feature_settings), low.predict(features, low.feature_settings)
    cosine = torch.nn.functional.cosine_similarity(a.embeddings, b.embeddings, dim=1)
    assert cosine.min() > 0.99
    # and it really computed in low precision: not bit-identical to fp32
    assert not torch.equal(pooled, fp32.network.trunk(features))


def test_autocast_precisions_are_refused_for_cpu_scans(tiny_model, tmp_path):
    write_wav(tmp_path / "rec" / "a.wav", 4.0)
    with pytest.raises(ValueError, match="is for GPUs"):
        scan(tmp_path / "rec", tmp_path / "det.parquet", tiny_model, ScanSettings(),
             RunOptions(device="cpu", precision="bf16"))
    assert not (tmp_path / "det.parquet").exists()


def test_ray_places_autocast_actors_on_gpus_only():
    options = RunOptions(precision="fp16", ray=RayOptions())
    assert plan_placement({"CPU": 16, "GPU": 2}, options).device == "cuda"
    with pytest.raises(ValueError, match="runs on GPUs"):
        plan_placement({"CPU": 16}, options)
