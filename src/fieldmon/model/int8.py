"""Opt-in inference of the convolutional trunk on ONNX Runtime, CPU only:

- ``--precision int8``: the trunk quantised, stored in the bundle as ``model.int8.onnx``;
- ``--precision fp32-onnx``: the fp32 trunk as it is, exported on first use into the
  user's cache and checked against torch on every load, so it gives the same numbers
  (within 1e-4) as ``fp32``, only faster (1.6-2x on the 2-core dev CPU).

Why ONNX Runtime: on the 2-core dev CPU (AVX2, no VNNI) it ran this trunk about
4x faster in int8 than PyTorch in fp32, where PyTorch's own int8 (FX, x86) reached
about 2x with deprecated APIs (``benchmarks/scan.py``, ../shared/design.md).

What is quantised: the convolutions but the first (static, QDQ, per-channel
weights, MinMax calibration on real feature windows). The first convolution reads
the features themselves and costs under 1 % of the arithmetic; quantising it too
doubled the loss of validation macro-F1 on InsectSet32 (0.019 against 0.004 with
it in fp32). The dense embedding head, the MLP and open-set rejection stay fp32 in
torch: they are a rounding error of the cost. The open-set distance Gaussians are
fitted again on int8 embeddings of the validation windows: int8 noise moves every
window a little further from its class mean, and with fp32's Gaussians the same
threshold rejected twice as many known windows (10.6 % against 4.9 % on InsectSet32).
Weights use 7 of their 8 bits (``reduce_range``): with full-range U8S8 weights the
int16 intermediate sums of AVX2 kernels overflow and the embeddings turn to noise
(cosine 0.58 to fp32 in the design measurements); the tests check the agreement.

An ONNX file is a protobuf graph of operators, not code, so loading one executes
nothing; its sha256 is kept in model.json and checked like the weights'.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fieldmon.fileio import atomic_write
from fieldmon.model.bundle import ModelBundle
from fieldmon.model.metadata import INT8_SUFFIX, JSON_NAME, BundleError, read_metadata
from fieldmon.model.openset import OpenSetParams

INT8_NAME = "model.int8.onnx"
# (open set refitted on int8 embeddings, those embeddings, their labels) -> (threshold, how)
ThresholdRule = Callable[[OpenSetParams, torch.Tensor, torch.Tensor], tuple[float, dict]]
EXACT_TOLERANCE = 1e-4  # fp32-onnx against torch, on pooled maps of order 1


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BundleError(
            "--precision int8 needs ONNX Runtime: pip install 'fieldmon[int8]'"
        ) from exc
    return onnxruntime


def quantize_bundle(
    directory: str | os.PathLike,
    calibration: np.ndarray,
    open_set_windows: tuple[np.ndarray, np.ndarray] | None = None,
    calibrate: ThresholdRule | None = None,
    batch: int = 8,
) -> dict:
    """Write ``model.int8.onnx`` into the bundle at ``directory`` from ``calibration``
    feature windows ``[N, 3, n_mels, frames]`` and record it in model.json.

    ``open_set_windows``: labelled validation windows (features, class indices) on
    which the open-set distances are fitted again for int8, and with ``calibrate``
    the threshold chosen again (see :func:`int8_open_set`)."""
    onnxruntime = _onnxruntime()
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    directory = Path(directory)
    bundle = ModelBundle.load(directory)
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    batches = [{"features": calibration[i : i + batch]} for i in range(0, len(calibration), batch)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        fp32, prepared, int8 = (Path(tmp) / name for name in ("trunk.onnx", "trunk.pre.onnx", "trunk.int8.onnx"))
        export_trunk(bundle.network.trunk, torch.from_numpy(calibration[:2]), fp32)
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        first_conv = next(n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv")
        quantize_static(
            str(prepared), str(int8), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
            reduce_range=True, calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv"],
            nodes_to_exclude=[first_conv],
        )
        data = int8.read_bytes()
        open_set = None
        if open_set_windows is not None and bundle.open_set is not None:
            open_set = int8_open_set(bundle, OnnxTrunk(int8, torch.get_num_threads()), *open_set_windows,
                                     calibrate=calibrate)
    section = {
        "file": INT8_NAME,
        "sha256": hashlib.sha256(data).hexdigest(),
        "quantised": "Conv layers of the trunk but the first: static QDQ, QUInt8 activations, "
                     "per-channel QInt8 weights with reduce_range, MinMax calibration",
        "calibration_windows": len(calibration),
        "weights_sha256": read_metadata(directory)["weights_sha256"],
        "onnxruntime": onnxruntime.__version__,
    }
    if open_set is not None:
        section["open_set"] = open_set
    atomic_write(directory / INT8_NAME, data)
    meta = json.loads((directory / JSON_NAME).read_text())
    meta["int8"] = section
    atomic_write(directory / JSON_NAME, (json.dumps(meta, indent=2) + "\n").encode())
    return section


@torch.inference_mode()
def int8_open_set(bundle: ModelBundle, trunk: nn.Module, features: np.ndarray, labels: np.ndarray,
                  calibrate: ThresholdRule | None = None) -> dict:
    """The int8 section's open set: the distance Gaussians fitted on int8 embeddings of
    the validation windows and, with ``calibrate`` (the rule that chose the fp32
    threshold, given the refitted open set and those embeddings and labels), the threshold
    chosen on int8's own scores. With fp32's threshold, int8's noisier scores rejected
    0.4 % more known windows of the default and cost 0.032 of macro-F1, over the 0.03
    the rule allows."""
    head = bundle.network.head.eval()
    embeddings = torch.cat([head(trunk(torch.from_numpy(features[i : i + 64]))) for i in range(0, len(features), 64)])
    refitted = bundle.open_set.refit(embeddings, torch.from_numpy(labels))
    section = {
        "distance_mean": [float(v) for v in refitted.distance_mean],
        "distance_std": [float(v) for v in refitted.distance_std],
        "fitted_on_windows": len(labels),
    }
    if calibrate is not None:
        section["threshold"], section["calibration"] = calibrate(refitted, embeddings, torch.from_numpy(labels))
    return section


def export_trunk(trunk: nn.Module, example: torch.Tensor, path: Path) -> None:
    """The fp32 trunk as an ONNX graph with a free batch size."""
    # The exporter's progress lines, its notes about operators we do not use and torch's
    # own deprecation warnings would only confuse a user on their first fp32-onnx scan.
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                trunk.eval(), (example,), str(path), dynamo=True, external_data=False, opset_version=18,
                verbose=False, input_names=["features"], output_names=["pooled"],
                dynamic_shapes={"features": {0: torch.export.Dim("batch")}},
            )
    finally:
        exporter_log.setLevel(level)


class OnnxTrunk(nn.Module):
    """Stands in for ``MultiscaleCNN.trunk``: features in, pooled 64-D maps out."""

    def __init__(self, path: Path, threads: int) -> None:
        super().__init__()
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(features.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {"features": array})[0])


def with_int8_trunk(bundle: ModelBundle, directory: str | os.PathLike, threads: int | None = None) -> ModelBundle:
    """The bundle with its trunk replaced by the quantised one; its model id gains
    ``+int8`` so int8 rows are never mixed with fp32 rows in one output."""
    directory = Path(directory)
    meta = read_metadata(directory)
    section = meta.get("int8")
    path = directory / INT8_NAME
    if section is None or not path.is_file():
        raise BundleError(
            f"{directory}: has no int8 version; create it with `fieldmon quantize {directory} CLIPS`"
        )
    if section.get("weights_sha256") != meta["weights_sha256"]:
        raise BundleError(f"{path}: was made from other weights than {directory}'s; run fieldmon quantize again")
    if hashlib.sha256(path.read_bytes()).hexdigest() != section["sha256"]:
        raise BundleError(f"{path}: does not match the checksum in {JSON_NAME} (truncated, corrupted or modified)")
    bundle.network.trunk = OnnxTrunk(path, threads or torch.get_num_threads())
    if section.get("open_set") and bundle.open_set is not None:
        bundle.open_set = replace(
            bundle.open_set,
            distance_mean=torch.tensor(section["open_set"]["distance_mean"], dtype=torch.float32),
            distance_std=torch.tensor(section["open_set"]["distance_std"], dtype=torch.float32),
            threshold=section["open_set"].get("threshold", bundle.open_set.threshold),
        )
    bundle.model_id += INT8_SUFFIX
    return bundle


def with_onnx_fp32_trunk(bundle: ModelBundle, cache: Path, threads: int | None = None) -> ModelBundle:
    """The bundle with its trunk run by ONNX Runtime in fp32. The graph is exported once
    per model into ``cache`` and compared with torch on every load; the model id is
    unchanged because the numbers are the same."""
    _onnxruntime()
    trunk = bundle.network.trunk.eval()
    fs = bundle.feature_settings
    probe = torch.rand(2, 3, fs.n_mels, fs.n_frames, generator=torch.Generator().manual_seed(0))
    path = cache / f"{bundle.model_id}.trunk.fp32.onnx"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            export_trunk(trunk, probe, Path(tmp) / path.name)
            os.replace(Path(tmp) / path.name, path)
    onnx_trunk = OnnxTrunk(path, threads or torch.get_num_threads())
    with torch.inference_mode():
        difference = (onnx_trunk(probe) - trunk(probe)).abs().max().item()
    if not difference <= EXACT_TOLERANCE:
        raise BundleError(f"{path}: differs from the model by {difference:.2g}; delete it to export it again")
    bundle.network.trunk = onnx_trunk
    return bundle
