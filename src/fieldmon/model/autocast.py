"""GPU inference precisions: ``--precision bf16`` and ``--precision fp16``.

The convolutional trunk, where nearly all the arithmetic is, runs under
``torch.autocast`` in channels_last memory format (what tensor cores and cuDNN's
fastest convolution kernels want); its pooled output is cast back to float32, so the
dense head, the MLP and the open-set distances stay in fp32. The numbers differ
slightly from fp32, so the model id gains ``+bf16`` / ``+fp16`` and such rows are never
mixed with fp32 rows in one output.
"""

from __future__ import annotations

import torch
from torch import nn

from fieldmon.model.bundle import ModelBundle

AUTOCAST_PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


class AutocastTrunk(nn.Module):
    """Stands in for ``MultiscaleCNN.trunk``: the same weights, run in ``dtype``."""

    def __init__(self, trunk: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.trunk = trunk.to(memory_format=torch.channels_last)
        self.dtype = dtype

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.trunk(x).float()


def with_autocast_trunk(bundle: ModelBundle, precision: str) -> ModelBundle:
    bundle.network.trunk = AutocastTrunk(bundle.network.trunk, AUTOCAST_PRECISIONS[precision])
    bundle.model_id += f"+{precision}"
    return bundle
