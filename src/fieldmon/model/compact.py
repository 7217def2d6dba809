"""The compact multiscale CNN: the paper's layout made trainable on a CPU.

``fieldmon train --network compact`` (the default). It keeps what defines the
method -- multiscale analysis modules with parallel 1x1, 3x3, 5x5 and 7x7
strands, a strided 3x3 convolution after each, global average pooling, a dense
head ending in a 128-D L2-normalised embedding -- and departs from the paper's
network (``--network paper``, fieldmon.model.network) in how it gets there:

- **Time resolution is reduced early.** conv1 is strided 2 along both axes, and
  the first two strided convolutions halve time as well as Mel bands. The paper's
  network keeps all 200 frames to the end, which is where its 7.56 GFLOP per
  window go; this one costs about 0.5 GFLOP.
- **Widths grow with depth** (32, 48, 64 strand maps) instead of 64 throughout,
  and there are three multiscale modules instead of four: after the third the
  Mel axis is already down to one band.
- **The last strided convolution spans every remaining Mel row** (a 5x3 kernel over
  the last 5 rows, where the paper's 3x3 kernel with stride 5 reads only the lowest
  two of them). Convolutions are blind to where in frequency a pattern sits; a
  kernel with its own weights per row keeps the carrier frequency, which is what
  tells many congeneric cicadas apart.
- **Batch normalisation** after every convolution (before the ReLU). The paper's
  13 plain convolutions train only with tiny steps (README, "Training budget");
  with normalisation Adam's larger steps are stable.
- **Dense head without dropout by default**, 256 -> 128 -> 128 like the paper's
  (dropout 0.5 there dominated the embeddings of short runs; see the README).

Measured on the project's 2-core CPU (benchmarks/train_step.py): one 160-window
training step takes about a tenth of the paper network's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fieldmon.model.network import DenseHead, he_init
from fieldmon.settings import settings_from_dict, settings_to_dict


POOLINGS = ("mean", "mean-std")


@dataclass(frozen=True)
class CompactSettings:
    in_channels: int = 3
    n_mels: int = 40
    stem_channels: int = 32
    stem_stride: tuple[int, ...] = (2, 2)  # (Mel, time)
    stem_kernel: tuple[int, ...] = (3, 3)  # (Mel, time); at least the stride, so that no band is skipped
    # Per multiscale module: the maps of each of its four strands; the 1x1 reduction
    # before the 3x3/5x5/7x7 strands is half of that.
    strand_channels: tuple[int, ...] = (32, 48, 64)
    # The strided 3x3 convolution after each module: output maps and (Mel, time) strides.
    transition_channels: tuple[int, ...] = (48, 64, 64)
    transition_strides: tuple[tuple[int, int], ...] = ((2, 2), (2, 1), (5, 1))
    strand_kernels: tuple[int, ...] = (3, 5, 7)
    dense_units: tuple[int, ...] = (256, 128, 128)
    dropout: float = 0.0
    # How the last maps are summarised over time: "mean" (the paper's global average) or
    # "mean-std" (statistics pooling: each map's mean and standard deviation over time),
    # which keeps how a song's energy varies from frame to frame after the average.
    pooling: str = "mean"

    def __post_init__(self) -> None:
        n = len(self.strand_channels)
        if len(self.transition_channels) != n or len(self.transition_strides) != n:
            raise ValueError("strand_channels, transition_channels and transition_strides need one entry per module")
        height = -(-self.n_mels // self.stem_stride[0])
        for mel_stride, _ in self.transition_strides:
            height = -(-height // mel_stride)
        if height != 1:
            raise ValueError(f"the strides reduce {self.n_mels} Mel bands to {height}, not 1")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {self.pooling!r}")

    @property
    def embedding_dim(self) -> int:
        return self.dense_units[-1]

    @property
    def trunk_dim(self) -> int:
        return self.transition_channels[-1] * (2 if self.pooling == "mean-std" else 1)

    def to_dict(self) -> dict:
        out = settings_to_dict(self)
        out["transition_strides"] = [list(s) for s in self.transition_strides]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> CompactSettings:
        settings = settings_from_dict(cls, data)
        strides = tuple(tuple(s) for s in settings.transition_strides)
        return cls(**{**settings.__dict__, "transition_strides": strides})


def _conv_bn(cin: int, cout: int, kernel: int | tuple[int, ...], stride: tuple[int, ...] = (1, 1)) -> list[nn.Module]:
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    padding = tuple(k // 2 for k in kernel)
    return [nn.Conv2d(cin, cout, kernel, stride=tuple(stride), padding=padding, bias=False), nn.BatchNorm2d(cout)]


class CompactMultiscaleModule(nn.Module):
    """Four parallel strands -- 1x1, and a 1x1 reduction followed by 3x3, 5x5 or 7x7 --
    concatenated channel-wise, then normalised and rectified together."""

    def __init__(self, cin: int, width: int, kernels: tuple[int, ...]) -> None:
        super().__init__()
        reduce = width // 2
        self.pointwise = nn.Conv2d(cin, width, 1, bias=False)
        self.strands = nn.ModuleList(
            nn.Sequential(*_conv_bn(cin, reduce, 1), nn.ReLU(inplace=True),
                          nn.Conv2d(reduce, width, k, padding=k // 2, bias=False))
            for k in kernels
        )
        self.norm = nn.BatchNorm2d(width * (1 + len(kernels)))
        self.out_channels = width * (1 + len(kernels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.pointwise(x)] + [strand(x) for strand in self.strands]
        return torch.relu(self.norm(torch.cat(outs, dim=1)))


class CompactTrunk(nn.Module):
    def __init__(self, s: CompactSettings) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(s.in_channels, s.stem_channels, s.stem_kernel, s.stem_stride),
                                   nn.ReLU(inplace=True)]
        cin = s.stem_channels
        height = -(-s.n_mels // s.stem_stride[0])
        for width, cout, stride in zip(s.strand_channels, s.transition_channels, s.transition_strides):
            module = CompactMultiscaleModule(cin, width, s.strand_kernels)
            if stride[0] == height:  # the last Mel reduction: one weight per remaining row
                transition = [nn.Conv2d(module.out_channels, cout, (height, 3), stride=stride, padding=(0, 1),
                                        bias=False), nn.BatchNorm2d(cout)]
            else:
                transition = _conv_bn(module.out_channels, cout, 3, stride)
            layers += [module, *transition, nn.ReLU(inplace=True)]
            height = -(-height // stride[0])
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_channels = cin
        self.pooling = s.pooling

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = self.layers(features).flatten(2)  # one Mel row is left: [B, C, frames]
        mean = maps.mean(dim=2)
        if self.pooling == "mean":
            return mean
        # The floor keeps the gradient of a constant map's deviation finite.
        deviation = (maps.var(dim=2, unbiased=False) + 1e-5).sqrt()
        return torch.cat([mean, deviation], dim=1)


class CompactCNN(nn.Module):
    """Features ``[B, 3, 40, 200]`` -> 128-D unit embeddings, or C logits when
    ``n_classes`` is given (the cross-entropy baseline)."""

    def __init__(self, settings: CompactSettings = CompactSettings(), n_classes: int | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.n_classes = n_classes
        self.trunk = CompactTrunk(settings)
        out_units = settings.embedding_dim if n_classes is None else n_classes
        self.head = DenseHead(settings, out_units, normalize=n_classes is None)
        for module in self.modules():  # pre-order: the seeded initial weights stay as they were
            he_init(module)

    @property
    def is_embedding(self) -> bool:
        return self.n_classes is None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(features))
