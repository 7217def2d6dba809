"""Model bundles: a directory with the weights in safetensors and everything else in JSON.

    MODEL_DIR/
      model.json          format, version, model id, feature and network settings,
                          class names, open-set parameters, training settings,
                          metrics, provenance, sha256 of the weights
      model.safetensors   network.*, classifier.*, open_set.class_means (and open_set.reference)

Pickle is never read: a bundle is data, not code. Loading checks the format
version, the weights' checksum, and that every tensor has the shape the
settings imply, so a truncated, edited or foreign file is named, not guessed at.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from fieldmon.features import FeatureSettings, check_same_settings
from fieldmon.fileio import atomic_write
from fieldmon.model.network import MLPClassifier
from fieldmon.model.networks import LEGACY_NETWORK, build_network, network_kind
from fieldmon.model.metadata import (
    FORMAT, FORMAT_VERSION, JSON_NAME, WEIGHTS_NAME, BundleError, read_metadata,
)
from fieldmon.model.openset import OpenSetParams

@dataclass
class Prediction:
    probabilities: torch.Tensor  # [B, C]
    embeddings: torch.Tensor | None  # [B, D]; None for cross-entropy models
    open_set_scores: torch.Tensor | None  # [B]; None without open-set calibration

    @property
    def predicted(self) -> torch.Tensor:
        return self.probabilities.argmax(dim=1)


@dataclass
class ModelBundle:
    network: torch.nn.Module  # a network of fieldmon.model.networks
    class_names: list[str]
    feature_settings: FeatureSettings = field(default_factory=FeatureSettings)
    classifier: MLPClassifier | None = None  # None when the network itself classifies
    open_set: OpenSetParams | None = None
    name: str = "model"
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    model_id: str = ""  # name + hash of weights and settings; set by save() and load()

    def __post_init__(self) -> None:
        outputs = self.network.n_classes if self.classifier is None else self.classifier.layers[-1].out_features
        if outputs != len(self.class_names):
            raise BundleError(f"{len(self.class_names)} class names but the model has {outputs} outputs")
        if self.feature_settings.n_mels != self.network.settings.n_mels:
            raise BundleError(
                f"features have {self.feature_settings.n_mels} Mel bands, the network expects {self.network.settings.n_mels}"
            )

    @property
    def loss(self) -> str:
        return "triplet" if self.network.is_embedding else "crossentropy"

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: torch.device | str) -> ModelBundle:
        self.network.to(device)
        if self.classifier is not None:
            self.classifier.to(device)
        if self.open_set is not None:
            self.open_set = self.open_set.to(device)
        return self

    def eval(self) -> ModelBundle:
        self.network.eval()
        if self.classifier is not None:
            self.classifier.eval()
        return self

    @torch.inference_mode()
    def predict(self, features: torch.Tensor, settings: FeatureSettings) -> Prediction:
        """Class probabilities, embeddings and open-set scores of a feature batch.

        ``settings`` are the settings the features were computed with; they must
        equal the model's, because a silent mismatch ruins accuracy."""
        check_same_settings(self.feature_settings, settings)
        features = features.to(self.device)
        if features.device.type == "cpu":
            # oneDNN runs this network's convolutions 1.2-1.3x faster on channels_last
            # (NHWC) input than on NCHW on CPU; only the order of the sums changes (the
            # outputs agree to ~1e-7). Not on GPUs, where fp32 NHWC was never measured.
            features = features.contiguous(memory_format=torch.channels_last)
        if self.classifier is None:
            return Prediction(torch.softmax(self.network(features), dim=1), None, None)
        embeddings = self.network(features)
        probabilities = torch.softmax(self.classifier(embeddings), dim=1)
        scores = None
        if self.open_set is not None:
            scores = self.open_set.scores(embeddings, probabilities.argmax(dim=1))
        return Prediction(probabilities, embeddings, scores)

    # -- persistence -------------------------------------------------------

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"network.{k}": v for k, v in self.network.state_dict().items()}
        if self.classifier is not None:
            out.update({f"classifier.{k}": v for k, v in self.classifier.state_dict().items()})
        if self.open_set is not None:
            out["open_set.class_means"] = self.open_set.class_means
            if self.open_set.reference is not None:
                out["open_set.reference"] = self.open_set.reference
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the bundle; each file is replaced atomically so a crash never
        leaves a half-written model under the final name."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = save_safetensors(self.tensors(), metadata={"format": FORMAT})
        digest = hashlib.sha256(weights).hexdigest()
        behaviour = {
            "loss": self.loss,
            "network": network_kind(self.network),
            "class_names": list(self.class_names),
            "feature_settings": self.feature_settings.to_dict(),
            "network_settings": self.network.settings.to_dict(),
            "classifier": None if self.classifier is None else {"hidden": self.classifier.layers[0].out_features},
            "open_set": None if self.open_set is None else self.open_set.to_json(),
        }
        # The id covers everything that shapes a detection, not only the weights: two
        # bundles that differ only in their open-set threshold must not share an id, or a
        # resumed scan would mix their rows under one name.
        identity = hashlib.sha256(weights + json.dumps(behaviour, sort_keys=True).encode()).hexdigest()
        self.model_id = f"{self.name}-{identity[:12]}"
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_id": self.model_id,
            "name": self.name,
            **behaviour,
            "training": self.training,
            "metrics": self.metrics,
            "provenance": self.provenance,
            "weights_sha256": digest,
        }
        atomic_write(directory / WEIGHTS_NAME, weights)
        atomic_write(directory / JSON_NAME, (json.dumps(meta, indent=2) + "\n").encode())
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ModelBundle:
        directory = Path(directory)
        meta = read_metadata(directory)
        weights_path = directory / WEIGHTS_NAME
        if not weights_path.is_file():
            raise BundleError(f"{directory}: {WEIGHTS_NAME} is missing")
        data = weights_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["weights_sha256"]:
            raise BundleError(
                f"{weights_path}: the weights do not match the checksum in {JSON_NAME} "
                "(the file is truncated, corrupted or was modified)"
            )
        try:
            tensors = load_safetensors(data)
        except (SafetensorError, ValueError) as exc:
            raise BundleError(f"{weights_path}: not a readable safetensors file ({exc})") from exc
        try:
            return cls._from_parts(meta, tensors)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise BundleError(f"{directory}: {JSON_NAME} and the weights do not fit together: {exc}") from exc

    @classmethod
    def _from_parts(cls, meta: dict, tensors: dict[str, torch.Tensor]) -> ModelBundle:
        class_names = list(meta["class_names"])
        crossentropy = meta["loss"] == "crossentropy"
        network = build_network(meta.get("network", LEGACY_NETWORK), meta["network_settings"],
                                n_classes=len(class_names) if crossentropy else None)
        network_settings = network.settings
        network.load_state_dict(_section(tensors, "network."), strict=True)
        classifier = None
        if meta["classifier"] is not None:
            classifier = MLPClassifier(network_settings.embedding_dim, len(class_names), meta["classifier"]["hidden"])
            classifier.load_state_dict(_section(tensors, "classifier."), strict=True)
        open_set = None
        if meta["open_set"] is not None:
            open_set = OpenSetParams.from_json(meta["open_set"], tensors["open_set.class_means"],
                                               tensors.get("open_set.reference"))
            expected = (len(class_names), network_settings.embedding_dim)
            if tuple(open_set.class_means.shape) != expected or len(open_set.distance_mean) != len(class_names):
                raise ValueError(f"open-set parameters do not match {len(class_names)} classes")
        bundle = cls(
            network=network,
            class_names=class_names,
            feature_settings=FeatureSettings.from_dict(meta["feature_settings"]),
            classifier=classifier,
            open_set=open_set,
            name=meta["name"],
            training=meta.get("training", {}),
            metrics=meta.get("metrics", {}),
            provenance=meta.get("provenance", {}),
            model_id=meta["model_id"],
        )
        return bundle.eval()


def _section(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
