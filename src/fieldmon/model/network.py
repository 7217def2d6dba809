"""The multiscale CNN (Thakur et al. 2019, section II.B) and the MLP classifier.

Reading of the paper implemented here (1,380,224 trainable parameters for the
embedding network; the paper states 1,286,410):

- conv1: 3x3, 64 filters, on the 3-channel [40 Mel x 200 frame] input.
- Four times: a multiscale analysis module (MAM) with four strands on its 64
  input maps -- 1x1x64; 1x1x32 -> 3x3x64; 1x1x32 -> 5x5x64; 1x1x32 -> 7x7x64 --
  zero-padded to keep the map size and concatenated to 256 maps; then a 3x3x64
  convolution strided along the Mel axis only (2, 2, 2, 5: 40 -> 20 -> 10 -> 5 -> 1).
  That is the paper's "five convolution layers having 64 filters of 3x3".
- ReLU after every convolution; global average pooling to 64-D; dropout 0.5
  before each of the dense layers 256 (ReLU), 128 (ReLU), 128; the output is
  L2-normalised onto the unit hypersphere.

Initialisation: the paper does not state one. PyTorch's default (uniform,
variance 1/(3 fan_in)) shrinks the signal at every one of the 13 plain
convolutions (there is no batch normalisation), so at initialisation every
input gives the same embedding to within 1e-6 and neither loss can start to
learn. He-normal weights with zero biases keep the variance through ReLU
layers; ``tests/test_network.py`` pins that embeddings of different windows
differ at initialisation.

Every layer has a bias. Counting the layers exactly as the text lists them
gives 1,380,224; no single plausible change (no biases, a shared 1x1 reduction,
a softmax head for one of the paper's class counts) lands on 1,286,410, so we
keep the reading that follows the text and record the discrepancy here and in
the tests rather than guess.

For the cross-entropy baseline (MS-CNN) the last dense layer becomes C logits
("the last layer of the architecture is replaced by a fully connected layer
having C units and softmax activation"); the trunk is identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fieldmon.settings import settings_from_dict, settings_to_dict

EMBEDDING_PARAMETERS = 1_380_224  # this reading; the paper states 1,286,410


@dataclass(frozen=True)
class NetworkSettings:
    in_channels: int = 3
    n_mels: int = 40
    channels: int = 64  # conv1, strided convs and each MAM strand's output
    reduce_channels: int = 32  # 1x1 reduction before the 3x3/5x5/7x7 strands
    strand_kernels: tuple[int, ...] = (3, 5, 7)
    mel_strides: tuple[int, ...] = (2, 2, 2, 5)
    dense_units: tuple[int, ...] = (256, 128, 128)
    dropout: float = 0.5

    def __post_init__(self) -> None:
        height = self.n_mels
        for stride in self.mel_strides:
            height = -(-height // stride)
        if height != 1:
            raise ValueError(
                f"mel_strides {self.mel_strides} reduce {self.n_mels} Mel bands to {height}, not 1"
            )

    @property
    def embedding_dim(self) -> int:
        return self.dense_units[-1]

    @property
    def trunk_dim(self) -> int:
        return self.channels

    def to_dict(self) -> dict:
        return settings_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NetworkSettings:
        return settings_from_dict(cls, data)


def _conv(cin: int, cout: int, kernel: int, stride: tuple[int, int] = (1, 1)) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


class MultiscaleModule(nn.Module):
    """Four parallel strands at 1x1, 3x3, 5x5 and 7x7, concatenated channel-wise."""

    def __init__(self, settings: NetworkSettings) -> None:
        super().__init__()
        c, r = settings.channels, settings.reduce_channels
        self.pointwise = _conv(c, c, 1)
        self.strands = nn.ModuleList(
            nn.Sequential(_conv(c, r, 1), nn.ReLU(inplace=True), _conv(r, c, k))
            for k in settings.strand_kernels
        )

    @property
    def out_channels(self) -> int:
        return self.pointwise.out_channels * (1 + len(self.strands))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.pointwise(x)] + [strand(x) for strand in self.strands]
        return F.relu(torch.cat(outs, dim=1))


class Trunk(nn.Module):
    """conv1 and four [MAM, Mel-strided conv] stages, then global average pooling."""

    def __init__(self, settings: NetworkSettings) -> None:
        super().__init__()
        c = settings.channels
        layers: list[nn.Module] = [_conv(settings.in_channels, c, 3), nn.ReLU(inplace=True)]
        for stride in settings.mel_strides:
            module = MultiscaleModule(settings)
            layers += [module, _conv(module.out_channels, c, 3, (stride, 1)), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).mean(dim=(2, 3))


class DenseHead(nn.Module):
    """Dropout before each dense layer, ReLU between them; L2-normalised when it embeds."""

    def __init__(self, settings: NetworkSettings, out_units: int, normalize: bool) -> None:
        super().__init__()
        units = (settings.trunk_dim, *settings.dense_units[:-1], out_units)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(units[:-1], units[1:])):
            if i:
                layers.append(nn.ReLU(inplace=True))
            layers += [nn.Dropout(settings.dropout), nn.Linear(cin, cout)]
        self.layers = nn.Sequential(*layers)
        self.normalize = normalize

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        out = self.layers(pooled)
        return F.normalize(out, dim=1) if self.normalize else out


class MultiscaleCNN(nn.Module):
    """Features ``[B, 3, 40, 200]`` -> 128-D unit embeddings, or C logits when
    ``n_classes`` is given (the cross-entropy baseline)."""

    def __init__(self, settings: NetworkSettings = NetworkSettings(), n_classes: int | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.n_classes = n_classes
        self.trunk = Trunk(settings)
        if n_classes is None:
            self.head = DenseHead(settings, settings.embedding_dim, normalize=True)
        else:
            self.head = DenseHead(settings, n_classes, normalize=False)
        self.apply(he_init)

    @property
    def is_embedding(self) -> bool:
        return self.n_classes is None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(features))


def he_init(module: nn.Module) -> None:
    """He-normal weights and zero biases for convolutions and dense layers (the paper's
    plain ReLU stack does not train from PyTorch's default initialisation)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class MLPClassifier(nn.Module):
    """The paper's MLP on embeddings: 128 -> 256 ReLU -> C logits (II.B.2)."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n_classes))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def count_flops(module: nn.Module, input_shape: tuple[int, ...] = (3, 40, 200)) -> int:
    """Floating-point operations of one forward pass of one window, counting a
    multiply-add as two, over the convolutions and dense layers (normalisation,
    activations and pooling are a fraction of a percent here)."""
    total = 0

    def count(layer: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            total += 2 * output.numel() * (layer.in_channels // layer.groups) * kh * kw
        else:
            total += 2 * output.numel() * layer.in_features

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, *input_shape))
    finally:
        module.train(training)
        for hook in hooks:
            hook.remove()
    return total
