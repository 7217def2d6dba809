"""Training settings, persisted in the checkpoint and the model bundle."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fieldmon.settings import settings_from_dict, settings_to_dict

LOSSES = ("triplet", "crossentropy")
TRIPLET_UPDATES = ("minibatch", "paper")


@dataclass(frozen=True)
class TrainSettings:
    loss: str = "triplet"
    # "minibatch" (default): one forward pass of the mini-batch, all its semi-hard
    # triplets in one loss, one update. "paper": the mined triplets are fed in
    # batches of at most `triplet_batch`, one update each, as in the paper (II.C).
    triplet_update: str = "minibatch"
    triplet_batch: int = 50
    windows_per_class: int = 5
    # Draw a species' windows in a mini-batch from different clips (see ClassBalancedSampler).
    distinct_clips: bool = False
    batch_size: int | None = None  # None: windows_per_class x species
    margin_start: float = 0.2
    margin_step: float = 0.05
    margin_max: float = 0.6
    margin_threshold: int = 15
    margin_patience: int = 3
    # Adagrad for the triplet network (paper II.B); Adam for the cross-entropy
    # baseline (paper III.C).
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    # Adagrad's starting sum of squared gradients. 0.1 is the default of the Keras /
    # TensorFlow Adagrad that the paper's "Adagrad, lr 1e-3" (tf.keras's own default
    # lr) most likely ran with; torch's default, 0, makes every first update a full
    # +-lr on every weight, which on this plain 13-conv trunk silenced a third of its
    # units within 15 steps (measured; README, "Training").
    adagrad_initial_accumulator: float = 0.1
    steps: int | None = None
    epochs: int | None = None
    eval_every: int = 25
    checkpoint_every: int = 10
    seed: int = 0
    hop_seconds: float = 2.0
    # Dropout before each dense layer while training; None keeps the network's own (the
    # paper's 0.5). A named variant: see README, "Training budget".
    dropout: float | None = None
    mlp_learning_rate: float = 1e-3
    mlp_weight_decay: float = 1e-4
    mlp_max_epochs: int = 2000
    mlp_patience: int = 100
    open_set_threshold: float = 0.01

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.triplet_update not in TRIPLET_UPDATES:
            raise ValueError(f"triplet_update must be one of {', '.join(TRIPLET_UPDATES)}")
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one training budget: steps or epochs")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")
        if self.windows_per_class < 2:
            raise ValueError("windows_per_class must be at least 2 so that every species has a positive pair")

    def with_budget(self, steps: int | None, epochs: int | None) -> TrainSettings:
        return replace(self, steps=steps, epochs=epochs)

    def to_dict(self) -> dict:
        return settings_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainSettings:
        return settings_from_dict(cls, data)
