from __future__ import annotations

import json
import pickle

import pytest
import torch
from click.testing import CliRunner

from fieldmon import BundleError, FeatureSettings, ModelBundle, load_model
from fieldmon.cli import main
from fieldmon.features import FeatureSettingsMismatch
from fieldmon.model.metadata import JSON_NAME, WEIGHTS_NAME
from fieldmon.model.compact import CompactCNN
from fieldmon.model.network import MLPClassifier, MultiscaleCNN
from fieldmon.model.networks import network_kind
from fieldmon.model.openset import fit_open_set
from fieldmon.train.settings import TrainSettings

CLASSES = ["cricket", "katydid", "cicada"]


def make_bundle(crossentropy: bool = False) -> ModelBundle:
    torch.manual_seed(0)
    if crossentropy:
        return ModelBundle(MultiscaleCNN(n_classes=3), CLASSES, name="ce").eval()
    network = MultiscaleCNN()
    emb = torch.nn.functional.normalize(torch.randn(12, 128), dim=1)
    labels = torch.arange(12) % 3
    open_set = fit_open_set(emb, labels, emb, labels, 3, threshold=0.01)
    return ModelBundle(network, CLASSES, classifier=MLPClassifier(128, 3), open_set=open_set, name="test",
                       metrics={"macro_f1": 0.5}, provenance={"command": "test"}).eval()


@pytest.fixture
def saved(tmp_path):
    bundle = make_bundle()
    bundle.save(tmp_path / "m")
    return bundle, tmp_path / "m"


@pytest.mark.parametrize("crossentropy", [False, True])
def test_round_trip_gives_identical_outputs(tmp_path, crossentropy):
    bundle = make_bundle(crossentropy)
    bundle.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    features = torch.rand(5, 3, 40, 200)
    a, b = bundle.predict(features, FeatureSettings()), loaded.predict(features, FeatureSettings())
    assert torch.equal(a.probabilities, b.probabilities)
    if crossentropy:
        assert b.embeddings is None and b.open_set_scores is None
    else:
        assert torch.equal(a.embeddings, b.embeddings)
        assert torch.equal(a.open_set_scores, b.open_set_scores)
    assert loaded.model_id == bundle.model_id and loaded.model_id.startswith(bundle.name + "-")
    assert loaded.class_names == CLASSES and loaded.loss == bundle.loss
    assert loaded.metrics == bundle.metrics and loaded.provenance == bundle.provenance


def test_cpu_prediction_in_channels_last_matches_the_network_in_nchw():
    bundle = make_bundle()
    features = torch.rand(4, 3, 40, 200)
    with torch.inference_mode():
        nchw = bundle.network(features.contiguous())
    prediction = bundle.predict(features, FeatureSettings())
    torch.testing.assert_close(prediction.embeddings, nchw, rtol=0, atol=1e-5)
    with torch.inference_mode():
        probabilities = torch.softmax(bundle.classifier(prediction.embeddings), dim=1)
    assert torch.equal(prediction.probabilities, probabilities)


def test_model_id_follows_the_weights(tmp_path):
    a, b = make_bundle(), make_bundle()
    a.save(tmp_path / "a")
    with torch.no_grad():
        b.network.trunk.layers[0].weight[0, 0, 0, 0] += 1
    b.save(tmp_path / "b")
    assert a.model_id != b.model_id


def test_model_id_follows_the_open_set_threshold_not_the_history(tmp_path):
    a, b, c = make_bundle(), make_bundle(), make_bundle()
    b.open_set.threshold += 0.1
    c.metrics = {"macro_f1": 0.9}
    c.provenance = {"command": "another"}
    for name, bundle in zip("abc", (a, b, c)):
        bundle.save(tmp_path / name)
    assert (tmp_path / "a" / WEIGHTS_NAME).read_bytes() == (tmp_path / "b" / WEIGHTS_NAME).read_bytes()
    assert a.model_id != b.model_id  # a scan resumed with either must not mix their rows
    assert a.model_id == c.model_id  # what was measured about a model does not rename it


def test_refuses_features_from_other_settings(saved):
    bundle, _ = saved
    with pytest.raises(FeatureSettingsMismatch, match="sample_rate"):
        bundle.predict(torch.rand(1, 3, 40, 200), FeatureSettings(sample_rate=48000))


def test_truncated_weights(saved):
    _, path = saved
    data = (path / WEIGHTS_NAME).read_bytes()
    (path / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="truncated, corrupted or was modified"):
        load_model(path)


def test_tampered_weights(saved):
    _, path = saved
    data = bytearray((path / WEIGHTS_NAME).read_bytes())
    data[-10] ^= 0xFF
    (path / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        load_model(path)


def edit_json(path, change):
    meta = json.loads((path / JSON_NAME).read_text())
    change(meta)
    (path / JSON_NAME).write_text(json.dumps(meta))


def test_wrong_format_version(saved):
    _, path = saved
    edit_json(path, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="format version 99"):
        load_model(path)


def test_edited_class_list_does_not_fit_weights(saved):
    _, path = saved
    edit_json(path, lambda m: m["class_names"].append("bee"))
    with pytest.raises(BundleError, match="do not fit together"):
        load_model(path)


def test_edited_network_settings_do_not_fit_weights(saved):
    _, path = saved
    edit_json(path, lambda m: m["network_settings"].update(channels=32))
    with pytest.raises(BundleError, match="do not fit together"):
        load_model(path)


def test_broken_json(saved):
    _, path = saved
    (path / JSON_NAME).write_text('{"format": "fieldmon-model", ')
    with pytest.raises(BundleError, match="not valid JSON"):
        load_model(path)


def test_missing_pieces(tmp_path, saved):
    _, path = saved
    with pytest.raises(BundleError, match="no such model directory"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="model.json is missing"):
        load_model(tmp_path)
    (path / WEIGHTS_NAME).unlink()
    with pytest.raises(BundleError, match="model.safetensors is missing"):
        load_model(path)


class Exploit:
    def __reduce__(self):
        return (open, ("/tmp/fieldmon-pwned", "w"))


def test_pickle_is_never_executed(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(pickle.dumps(Exploit(), protocol=4))
    with pytest.raises(BundleError, match="never unpickles"):
        load_model(target)
    # a pickle hidden under the bundle's weights name is not unpickled either
    bundle_dir = tmp_path / "b"
    make_bundle().save(bundle_dir)
    (bundle_dir / WEIGHTS_NAME).write_bytes(pickle.dumps(Exploit(), protocol=4))
    with pytest.raises(BundleError):
        load_model(bundle_dir)
    import os
    assert not os.path.exists("/tmp/fieldmon-pwned")


def test_cli_info_and_version(saved):
    bundle, path = saved
    runner = CliRunner()
    result = runner.invoke(main, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert bundle.model_id in result.output and "katydid" in result.output
    assert "upper_tail_gaussian" in result.output
    raw = runner.invoke(main, ["info", str(path), "--json"])
    assert raw.exit_code == 0 and json.loads(raw.output)["metrics"] == {"macro_f1": 0.5}
    bad = runner.invoke(main, ["info", str(path.parent / "missing")])
    assert bad.exit_code == 1 and "no such model directory" in bad.output
    version = runner.invoke(main, ["--version"])
    assert version.exit_code == 0 and "fieldmon, version" in version.output


def test_missing_default_model_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("fieldmon.model.metadata.resources.files", lambda package: tmp_path / "no-package-data")
    with pytest.raises(BundleError, match="default model is not installed"):
        load_model("default")


def test_saved_files_follow_the_umask_not_owner_only(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        make_bundle().save(tmp_path / "shared")
    finally:
        os.umask(old)
    for path in (tmp_path / "shared").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name  # others on a field server can read the model
    assert not list((tmp_path / "shared").glob(".*.tmp"))


def test_bundles_from_before_the_choice_of_network_load_as_the_paper_network(saved):
    # model.json written before fieldmon had a compact network names no network, and
    # its training settings no optimizer: they are the paper's network and recipe.
    bundle, path = saved
    old_training = {"loss": "triplet", "learning_rate": 0.001, "steps": 40, "hop_seconds": 0.5}

    def make_old(meta):
        del meta["network"]
        meta["training"] = {"settings": old_training}

    edit_json(path, make_old)
    loaded = load_model(path)
    assert network_kind(loaded.network) == "paper"
    features = torch.rand(2, 3, 40, 200)
    assert torch.equal(loaded.predict(features, FeatureSettings()).embeddings,
                       bundle.predict(features, FeatureSettings()).embeddings)
    settings = TrainSettings.from_dict(loaded.training["settings"])
    assert (settings.network, settings.optimizer, settings.schedule, settings.augment) == (
        "paper", "adagrad", "constant", ())


def test_compact_bundle_round_trip(tmp_path):
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(12, 128), dim=1)
    labels = torch.arange(12) % 3
    bundle = ModelBundle(CompactCNN(), CLASSES, classifier=MLPClassifier(128, 3),
                         open_set=fit_open_set(emb, labels, emb, labels, 3, threshold=0.01), name="c").eval()
    bundle.save(tmp_path / "c")
    assert json.loads((tmp_path / "c" / JSON_NAME).read_text())["network"] == "compact"
    loaded = load_model(tmp_path / "c")
    features = torch.rand(3, 3, 40, 200)
    assert isinstance(loaded.network, CompactCNN)
    assert torch.equal(loaded.predict(features, FeatureSettings()).probabilities,
                       bundle.predict(features, FeatureSettings()).probabilities)
