from __future__ import annotations

import pytest
import torch

from fieldmon.model.compact import CompactCNN, CompactMultiscaleModule, CompactSettings
from fieldmon.model.network import (
    EMBEDDING_PARAMETERS,
    MLPClassifier,
    MultiscaleCNN,
    NetworkSettings,
    count_flops,
    count_parameters,
)
from fieldmon.model.networks import NETWORKS, build_network, network_kind

COMPACT_PARAMETERS = 807_216


def test_parameter_count_of_our_reading_of_the_paper():
    # conv1 1,792 + 4 x (MAM 180,576 + strided conv 147,520) + dense 16,640 + 32,896 + 16,512
    assert count_parameters(MultiscaleCNN()) == EMBEDDING_PARAMETERS == 1_380_224


def test_embeddings_are_unit_vectors_of_128_dimensions():
    net = MultiscaleCNN().eval()
    out = net(torch.rand(4, 3, 40, 200))
    assert out.shape == (4, 128)
    assert torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-5)


def test_mel_axis_is_strided_to_one_and_time_axis_kept():
    net = MultiscaleCNN()
    shapes = []
    x = torch.rand(1, 3, 40, 200)
    for layer in net.trunk.layers:
        x = layer(x)
        if isinstance(layer, torch.nn.Conv2d):
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(64, 40, 200), (64, 20, 200), (64, 10, 200), (64, 5, 200), (64, 1, 200)]
    assert net.trunk(torch.rand(2, 3, 40, 200)).shape == (2, 64)


def test_multiscale_module_has_four_strands_of_64():
    module = MultiscaleCNN().trunk.layers[2]
    kernels = [module.pointwise.kernel_size] + [strand[-1].kernel_size for strand in module.strands]
    assert kernels == [(1, 1), (3, 3), (5, 5), (7, 7)]
    assert [strand[0].out_channels for strand in module.strands] == [32, 32, 32]
    assert module(torch.rand(1, 64, 10, 20)).shape == (1, 256, 10, 20)


def test_dropout_only_in_training_mode():
    net = MultiscaleCNN()
    x = torch.rand(2, 3, 40, 200)
    net.eval()
    assert torch.equal(net(x), net(x))
    dropouts = [m for m in net.head.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 3 and all(d.p == 0.5 for d in dropouts)


def test_crossentropy_variant_ends_in_class_logits():
    net = MultiscaleCNN(n_classes=7)
    assert net(torch.rand(2, 3, 40, 200)).shape == (2, 7)
    assert not net.is_embedding
    assert count_parameters(net) == EMBEDDING_PARAMETERS - 128 * 129 + 128 * 7 + 7


def test_mlp_classifier_shape():
    mlp = MLPClassifier(128, 5)
    assert mlp(torch.rand(3, 128)).shape == (3, 5)
    assert count_parameters(mlp) == 128 * 256 + 256 + 256 * 5 + 5


def test_strides_must_reduce_mel_axis_to_one():
    with pytest.raises(ValueError, match="reduce 40 Mel bands to 3"):
        NetworkSettings(mel_strides=(2, 2, 2, 2))
    assert NetworkSettings.from_dict(NetworkSettings().to_dict()) == NetworkSettings()


def test_different_windows_give_different_embeddings_at_initialisation():
    # With PyTorch's default init the 13 plain convolutions shrink the signal until
    # every input maps to the same embedding (spread ~5e-7) and training cannot start.
    torch.manual_seed(0)
    net = MultiscaleCNN().eval()
    generator = torch.Generator().manual_seed(1)
    windows = torch.rand(8, 3, 40, 200, generator=generator)
    windows[:4, :, :20] = 0.0  # half the windows have nothing in the low bands
    with torch.no_grad():
        spread = net(windows).std(dim=0).mean().item()
    assert spread > 1e-3


def test_paper_network_costs_7_56_gflop_per_window():
    assert count_flops(MultiscaleCNN()) == 7_557_865_472


def test_compact_network_shapes_parameters_and_flops_are_pinned():
    net = CompactCNN().eval()
    assert count_parameters(net) == COMPACT_PARAMETERS == 807_216
    assert count_flops(net) == 510_467_072  # 1/15 of the paper network's
    x = torch.rand(2, 3, 40, 200)
    shapes = []
    h = x
    for layer in net.trunk.layers:
        h = layer(h)
        if isinstance(layer, (torch.nn.ReLU, CompactMultiscaleModule)):
            shapes.append(tuple(h.shape[1:]))
    # stem; then per stage the multiscale module (4 strands) and its strided conv
    assert shapes == [(32, 20, 100), (128, 20, 100), (48, 10, 50), (192, 10, 50), (64, 5, 50),
                      (256, 5, 50), (64, 1, 50)]
    out = net(x)
    assert out.shape == (2, 128)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    module = net.trunk.layers[3]
    kernels = [module.pointwise.kernel_size] + [strand[-1].kernel_size for strand in module.strands]
    assert kernels == [(1, 1), (3, 3), (5, 5), (7, 7)]


def test_compact_stem_can_fold_finer_mel_bands_into_the_same_rows():
    # 160 Mel bands, a 9x3 stem with stride 8x2: the same 20 rows after the stem, so the
    # same cost as the 40-band layout beyond the stem (README, "The compact recipe")
    wide = CompactSettings(n_mels=160, stem_kernel=(9, 3), stem_stride=(8, 2))
    net = CompactCNN(wide).eval()
    assert net.trunk.layers[0].kernel_size == (9, 3)
    assert net.trunk.layers[:3](torch.rand(2, 3, 160, 200)).shape == (2, 32, 20, 100)
    assert count_flops(net, (3, 160, 200)) == 517_379_072
    assert CompactSettings.from_dict(wide.to_dict()) == wide
    legacy = CompactSettings().to_dict()
    del legacy["stem_kernel"]  # compact bundles written before the setting existed
    assert CompactSettings.from_dict(legacy).stem_kernel == (3, 3)


def test_compact_statistics_pooling_adds_each_maps_deviation_over_time():
    pooled = CompactSettings(pooling="mean-std")
    assert pooled.trunk_dim == 128 and CompactSettings().trunk_dim == 64
    net = CompactCNN(pooled).eval()
    assert count_parameters(net) == COMPACT_PARAMETERS + 64 * 256  # only the first dense layer grows
    x = torch.rand(3, 3, 40, 200)
    maps = net.trunk.layers(x).flatten(2)
    trunk = net.trunk(x)
    assert torch.allclose(trunk[:, :64], maps.mean(dim=2), atol=1e-6)
    assert torch.allclose(trunk[:, 64:], maps.std(dim=2, unbiased=False), atol=4e-3)  # floored at 0.003
    assert net(x).shape == (3, 128)
    assert CompactSettings.from_dict(pooled.to_dict()) == pooled
    legacy = CompactSettings().to_dict()
    del legacy["pooling"]  # compact bundles written before the setting existed
    assert CompactSettings.from_dict(legacy).pooling == "mean"
    with pytest.raises(ValueError, match="pooling must be one of mean, mean-std"):
        CompactSettings(pooling="max")


def test_compact_crossentropy_variant_and_settings_round_trip():
    net = CompactCNN(n_classes=5)
    assert net(torch.rand(2, 3, 40, 200)).shape == (2, 5) and not net.is_embedding
    settings = CompactSettings(strand_channels=(8, 8, 8), transition_channels=(8, 8, 8))
    assert CompactSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match="reduce 40 Mel bands to 3"):
        CompactSettings(transition_strides=((2, 2), (2, 1), (2, 1)))


def test_registry_builds_each_network_by_name():
    for kind in NETWORKS:
        net = build_network(kind)
        assert network_kind(net) == kind
        assert build_network(kind, net.settings.to_dict()).settings == net.settings
    with pytest.raises(ValueError, match="unknown network 'resnet'"):
        build_network("resnet")
