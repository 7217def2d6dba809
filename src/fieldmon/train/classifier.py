"""The MLP on embeddings (paper II.B.2) and the open-set calibration (IV.D)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from fieldmon.model.network import MLPClassifier
from fieldmon.train.settings import TrainSettings


def train_mlp(
    train_embeddings: torch.Tensor,
    train_labels: torch.Tensor,
    val_embeddings: torch.Tensor,
    val_labels: torch.Tensor,
    n_classes: int,
    settings: TrainSettings,
) -> tuple[MLPClassifier, dict]:
    """Full-batch Adam (lr 1e-3, L2 1e-4); early stopping on the validation loss,
    keeping the weights of the best epoch. Embeddings are few and 128-D, so each
    epoch is one cheap step."""
    torch.manual_seed(settings.seed)
    mlp = MLPClassifier(train_embeddings.shape[1], n_classes)
    optimizer = torch.optim.Adam(mlp.parameters(), lr=settings.mlp_learning_rate, weight_decay=settings.mlp_weight_decay)
    has_val = len(val_labels) > 0
    best_loss, best_epoch, best = float("inf"), 0, copy.deepcopy(mlp.state_dict())
    for epoch in range(1, settings.mlp_max_epochs + 1):
        mlp.train()
        loss = nn.functional.cross_entropy(mlp(train_embeddings), train_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mlp.eval()
        with torch.no_grad():
            monitored = nn.functional.cross_entropy(mlp(val_embeddings), val_labels) if has_val else loss
        if float(monitored) < best_loss:
            best_loss, best_epoch, best = float(monitored), epoch, copy.deepcopy(mlp.state_dict())
        elif epoch - best_epoch >= settings.mlp_patience:
            break
    mlp.load_state_dict(best)
    mlp.eval()
    return mlp, {"mlp_epochs": epoch, "mlp_best_epoch": best_epoch, "mlp_monitored_loss": best_loss}
