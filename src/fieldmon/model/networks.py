"""The embedding networks a bundle can hold, by name.

A network class has ``settings`` (a frozen dataclass with ``to_dict``/``from_dict``, ``n_mels``, ``trunk_dim``,
``embedding_dim``, ``dropout``), ``n_classes`` (None for an embedding network),
``is_embedding``, and two parts: ``trunk`` (features -> pooled maps) and ``head``
(pooled maps -> unit embedding or logits). The bundle, int8, ONNX, autocast and
head-only training rely on nothing else, so a new network is one new module and
one line here.
"""

from __future__ import annotations

from torch import nn

from fieldmon.model.compact import CompactCNN, CompactSettings
from fieldmon.model.network import MultiscaleCNN, NetworkSettings

NETWORKS: dict[str, tuple[type, type[nn.Module]]] = {
    "compact": (CompactSettings, CompactCNN),
    "paper": (NetworkSettings, MultiscaleCNN),
}
# Bundles written before the registry existed hold the paper's network.
LEGACY_NETWORK = "paper"


def settings_class(kind: str) -> type:
    return _entry(kind)[0]


def build_network(kind: str, settings=None, n_classes: int | None = None) -> nn.Module:
    """A freshly initialised network of ``kind``; ``settings`` is its settings
    object, a dict of them (as stored in model.json), or None for the defaults."""
    settings_cls, network_cls = _entry(kind)
    if settings is None:
        settings = settings_cls()
    elif isinstance(settings, dict):
        settings = settings_cls.from_dict(settings)
    return network_cls(settings, n_classes=n_classes)


def network_kind(network: nn.Module) -> str:
    for kind, (_, network_cls) in NETWORKS.items():
        if type(network) is network_cls:
            return kind
    raise ValueError(f"{type(network).__name__} is not a registered network ({', '.join(NETWORKS)})")


def _entry(kind: str) -> tuple[type, type[nn.Module]]:
    if kind not in NETWORKS:
        raise ValueError(f"unknown network {kind!r}; one of {', '.join(NETWORKS)}")
    return NETWORKS[kind]
