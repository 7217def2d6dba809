"""Training settings, persisted in the checkpoint and the model bundle.

The defaults are the compact network's recipe (README, "Training"). The paper's own
recipe for its network -- Adagrad at a constant lr 1e-3, dropout 0.5, no augmentation
-- is ``PAPER_RECIPE``, which ``fieldmon train --network paper`` starts from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fieldmon.model.compact import POOLINGS
from fieldmon.model.networks import NETWORKS
from fieldmon.model.openset import OPEN_SET_KINDS
from fieldmon.settings import settings_from_dict, settings_to_dict
from fieldmon.train.augment import AUGMENTATIONS, DEFAULT_AUGMENTATIONS
from fieldmon.train.bands import BAND_LIMIT_CHOICES

LOSSES = ("triplet", "crossentropy")
TRIPLET_UPDATES = ("minibatch", "paper")
OPTIMIZERS = ("adamw", "adagrad", "adam")
SCHEDULES = ("cosine", "constant")
MLP_INITS = ("class-means", "random")
# What --network paper trains with unless told otherwise: the paper's choices (II.B).
PAPER_RECIPE = {"optimizer": "adagrad", "schedule": "constant", "warmup_steps": 0, "augment": (),
                "mlp_weight_decay": 1e-4, "mlp_init": "random", "distinct_clips": False}


@dataclass(frozen=True)
class TrainSettings:
    network: str = "compact"
    loss: str = "triplet"
    # "minibatch" (default): one forward pass of the mini-batch, all its semi-hard
    # triplets in one loss, one update. "paper": the mined triplets are fed in
    # batches of at most `triplet_batch`, one update each, as in the paper (II.C).
    triplet_update: str = "minibatch"
    triplet_batch: int = 50
    windows_per_class: int = 5
    # With the triplet loss: add this weight times a cross-entropy of a cosine-softmax
    # classifier on the embedding (unit-length class vectors, scale 16; fieldmon.train.loop.CosineClassifier),
    # trained alongside the network and then discarded, as re-identification's "triplet
    # + ID loss" recipes do. 0 is the paper's triplet loss alone. README, "The compact recipe".
    crossentropy_weight: float = 0.0
    # Draw a species' windows in a mini-batch from different clips (see ClassBalancedSampler);
    # the paper draws them at random. README, "The compact recipe" and "Site models": the
    # same typical validation check, and site models no worse.
    distinct_clips: bool = True
    batch_size: int | None = None  # None: windows_per_class x species
    margin_start: float = 0.2
    margin_step: float = 0.05
    margin_max: float = 0.6
    margin_threshold: int = 15
    margin_patience: int = 3
    # The paper: Adagrad for the triplet network (II.B), Adam for the cross-entropy
    # baseline (III.C), both at 1e-3. The compact recipe: AdamW for both, warmed up
    # linearly over `warmup_steps` and then decayed along a half cosine to zero at the
    # end of the budget.
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_steps: int = 50
    learning_rate: float = 1e-3
    # The trunk's learning rate as a share of the rest's: below 1 when fine-tuning a base
    # model keeps more of what its convolutions learnt (layer-wise learning rates).
    trunk_lr_scale: float = 1.0
    weight_decay: float = 1e-4
    # Sharpness-aware minimisation (Foret et al. 2021): each mini-batch's gradient is
    # taken again at the weights this far (L2, over all weights) along its first gradient,
    # the worst nearby point, at twice the cost per step. 0: plain updates.
    sam_rho: float = 0.0
    # Adagrad's starting sum of squared gradients. 0.1 is the default of the Keras /
    # TensorFlow Adagrad that the paper's "Adagrad, lr 1e-3" (tf.keras's own default
    # lr) most likely ran with; torch's default, 0, makes every first update a full
    # +-lr on every weight, which on this plain 13-conv trunk silenced a third of its
    # units within 15 steps (measured; README, "Training").
    adagrad_initial_accumulator: float = 0.1
    steps: int | None = None
    epochs: int | None = None
    # Wall-clock budget (validation checks included), alone or as a cap on steps/epochs.
    # Alone, the learning-rate schedule is laid over the steps the first ones say fit.
    time_budget_seconds: float | None = None
    eval_every: int = 25
    checkpoint_every: int = 10
    seed: int = 0
    hop_seconds: float = 0.5
    augment: tuple[str, ...] = DEFAULT_AUGMENTATIONS
    # Decay of an exponential moving average of the weights that is validated and kept
    # (e.g. 0.995); None trains and keeps the weights themselves.
    average: float | None = None
    # Before every validation check, fit the batch-normalisation statistics again on
    # clean training windows drawn at random (fieldmon.train.loop.fit_batch_norm),
    # instead of keeping the running averages of the augmented, species-balanced
    # mini-batches, which validation and scans never see. README, "The compact recipe".
    clean_batch_norm: bool = False
    # Dropout before each dense layer while training; None keeps the network's own (the
    # paper's 0.5). A named variant: see README, "Training budget".
    dropout: float | None = None
    # How the compact network pools its last maps over time (CompactSettings.pooling):
    # "mean", or "mean-std" (statistics pooling); None keeps the network's own ("mean").
    pooling: str | None = None
    mlp_learning_rate: float = 1e-3
    # The paper's MLP L2 is 1e-4; on the compact network's embeddings 1e-3 scored higher
    # on validation (README, "Training").
    mlp_weight_decay: float = 1e-3
    # Where the MLP's training starts: "class-means", the nearest-class-mean classifier
    # the checks select by (fieldmon.train.classifier.class_means_mlp); "random", the
    # paper's. On the compact network's embeddings the random start lost up to 0.14
    # macro-F1 per file to the class means (README, "The compact recipe").
    mlp_init: str = "class-means"
    mlp_max_epochs: int = 2000
    mlp_patience: int = 100
    # None: calibrated on the validation split (fieldmon.train.classifier.calibrated_threshold).
    open_set_threshold: float | None = None
    # How the open set scores a window (fieldmon.model.openset.fit_open_set): "species",
    # "shared" or "nearest-window".
    open_set: str = "species"
    # With a base model: train only the dense head, on the base trunk's outputs (fast).
    freeze_trunk: bool = False
    # With a base model, before the whole network: this many steps of the dense head alone
    # on the base trunk's outputs, the best kept by validation (a short frozen-trunk
    # warm-up, "linear probing then fine-tuning"), so that the trunk's first updates come
    # from a head already fitted to the new species. 0: none.
    head_warmup_steps: int = 0
    # Fit and report the shallow baseline (fieldmon.train.baseline) on the same split.
    baseline: bool = True
    # Mel bands left empty in every window (fieldmon.train.bands): "auto", above the lowest
    # Nyquist frequency among the clips; "none"; or a frequency in Hz.
    band_limit: str | float = "auto"

    def __post_init__(self) -> None:
        if self.open_set_threshold is not None and not 0.0 <= self.open_set_threshold <= 1.0:
            raise ValueError(f"open_set_threshold must be from 0 to 1 (or None: calibrated), not {self.open_set_threshold}")
        if self.open_set not in OPEN_SET_KINDS:
            raise ValueError(f"open_set must be one of {', '.join(OPEN_SET_KINDS)}, not {self.open_set!r}")
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {', '.join(NETWORKS)}, not {self.network!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if self.mlp_init not in MLP_INITS:
            raise ValueError(f"mlp_init must be one of {', '.join(MLP_INITS)}, not {self.mlp_init!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        unknown = set(self.augment) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"unknown augmentation {sorted(unknown)[0]!r}; one of {', '.join(AUGMENTATIONS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.triplet_update not in TRIPLET_UPDATES:
            raise ValueError(f"triplet_update must be one of {', '.join(TRIPLET_UPDATES)}")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        if self.steps is None and self.epochs is None and self.time_budget_seconds is None:
            raise ValueError("give a training budget: steps, epochs or a time budget")
        if self.time_budget_seconds is not None and not self.time_budget_seconds > 0:
            raise ValueError(f"the time budget must be positive, not {self.time_budget_seconds}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {self.pooling!r}")
        if self.pooling is not None and self.network != "compact":
            raise ValueError("pooling applies to the compact network")
        if not 0.0 < self.trunk_lr_scale <= 1.0:
            raise ValueError(f"trunk_lr_scale must be in (0, 1], not {self.trunk_lr_scale}")
        if self.average is not None and not 0.0 < self.average < 1.0:
            raise ValueError(f"average (the decay of the weight average) must be in (0, 1), not {self.average}")
        if self.head_warmup_steps < 0:
            raise ValueError(f"head_warmup_steps must be 0 or more, not {self.head_warmup_steps}")
        if self.head_warmup_steps and self.freeze_trunk:
            raise ValueError("a head warm-up precedes training the whole network; with freeze_trunk only the head trains")
        if self.band_limit not in BAND_LIMIT_CHOICES and not (
                isinstance(self.band_limit, (int, float)) and self.band_limit > 0):
            raise ValueError(f"band_limit must be auto, none or a positive frequency in Hz, not {self.band_limit!r}")
        if not 0.0 <= self.crossentropy_weight <= 10.0:
            raise ValueError(f"crossentropy_weight must be from 0 to 10, not {self.crossentropy_weight}")
        if self.crossentropy_weight and (self.loss != "triplet" or self.triplet_update != "minibatch"):
            raise ValueError("crossentropy_weight adds to the triplet loss with one update per mini-batch "
                             "(loss triplet, triplet_update minibatch)")
        if not 0.0 <= self.sam_rho <= 1.0:
            raise ValueError(f"sam_rho must be from 0 to 1, not {self.sam_rho}")
        if self.sam_rho and (self.loss != "triplet" or self.triplet_update != "minibatch"):
            raise ValueError("sam_rho applies to the triplet loss with one update per mini-batch "
                             "(loss triplet, triplet_update minibatch)")
        if self.windows_per_class < 2:
            raise ValueError("windows_per_class must be at least 2 so that every species has a positive pair")

    def with_budget(self, other: TrainSettings) -> TrainSettings:
        """These settings with ``other``'s budget (to extend a run on resume)."""
        return replace(self, steps=other.steps, epochs=other.epochs, time_budget_seconds=other.time_budget_seconds)

    def to_dict(self) -> dict:
        return settings_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainSettings:
        if "network" not in data:
            # Written before there was a choice of network: the paper's network and recipe.
            data = {"network": "paper", **PAPER_RECIPE, **data}
            if data.get("loss") == "crossentropy":
                data["optimizer"] = "adam"
        # Written before these were defaults: the MLP started at random, and a species'
        # windows in a mini-batch came from any clip.
        return settings_from_dict(cls, {"mlp_init": "random", "distinct_clips": False, **data})

    @classmethod
    def for_network(cls, network: str, **options) -> TrainSettings:
        """The recipe of ``network`` (the paper's for "paper"), with ``options`` on top."""
        recipe = dict(PAPER_RECIPE) if network == "paper" else {}
        if network == "paper" and options.get("loss") == "crossentropy":
            recipe["optimizer"] = "adam"  # the paper's MS-CNN baseline (III.C)
        return cls(network=network, **{**recipe, **options})
