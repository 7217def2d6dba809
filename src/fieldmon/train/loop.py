"""The optimisation loop: dynamic triplet loss or cross-entropy, with model selection
on the validation split, checkpoints, clean interruption and bit-for-bit resume.

The loop is generic over the trained module and its inputs: the full multiscale CNN
on feature windows, or (``--base``) only the dense head on cached trunk outputs.

Resume is exact because nothing random carries state across steps: mini-batch ``i``
is drawn from a generator seeded with (seed, i), and torch's generator (dropout,
augmentation) is reseeded from (seed, step) before every update; the learning rate
is a function of the step. A checkpoint holds the weights, the
optimiser state, the margin schedule, the best weights so far and, in the paper's
triplet-batch variant, the triplets still pending from the current mini-batch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fieldmon.evaluation.metrics import classification_report, file_level
from fieldmon.fileio import atomic_write
from fieldmon.model.openset import class_means
from fieldmon.signals import StopRequest
from fieldmon.train.augment import augment
from fieldmon.train.sampler import ClassBalancedSampler
from fieldmon.train.settings import TrainSettings
from fieldmon.train.triplet import DynamicMargin, semi_hard_triplets, triplet_loss

CHECKPOINT_WEIGHTS = "state.safetensors"
CHECKPOINT_STATE = "state.json"
# Class means for model selection come from at most this many training windows
# (evenly spaced): embedding all of them at every check cost a quarter of the time.
SELECTION_WINDOWS = 1024
# Batch-normalisation statistics (TrainSettings.clean_batch_norm) come from this many
# training windows drawn at random, so species weigh as much as in the training data and
# in the recordings: on one run's snapshots, 1,024 random windows gave the statistics of
# all 3,415, and 1,024 evenly spaced per species (class-balanced, like the mini-batches
# whose running averages they replace) 0.05 less macro-F1 per file.
BATCH_NORM_WINDOWS = 1024
# Softmax temperature over negative squared distances to the class means, for the
# per-file mean of window scores (unit embeddings: squared distances lie in [0, 4]).
NEAREST_MEAN_TEMPERATURE = 0.05
# Steps timed before a time budget's schedule is fixed (the first is slower: allocation).
PACE_STEPS = 5


@dataclass
class TrainingData:
    inputs: torch.Tensor  # training windows (features, or trunk outputs for --base)
    labels: torch.Tensor
    val_inputs: torch.Tensor
    val_labels: torch.Tensor
    n_classes: int
    clips: torch.Tensor | None = None  # the clip each training window was cut from
    val_clips: torch.Tensor | None = None  # the clip of each validation window (per-file scores)
    band_tops_hz: torch.Tensor | None = None  # where each Mel band ends (the lowpass augmentation)

    @property
    def are_features(self) -> bool:
        """Feature windows (augmentable), rather than trunk outputs (``--base``)."""
        return self.inputs.ndim == 4


@dataclass
class StepReport:
    step: int
    total_steps: int | None
    minibatch: int
    total_minibatches: int | None
    loss: float
    margin: float | None
    semi_hard: int | None
    seconds_per_step: float
    elapsed_seconds: float = 0.0
    time_budget_seconds: float | None = None
    validation: float | None = None  # the latest validation check's selection metric


@dataclass
class LoopState:
    step: int = 0
    minibatch: int = 0
    margin: DynamicMargin = field(default_factory=DynamicMargin)
    pending: torch.Tensor | None = None  # [T, 3] global indices still to feed (paper variant)
    empty_minibatches: int = 0  # consecutive mini-batches without a semi-hard triplet
    best_metric: float = -1.0
    best_step: int = 0
    history: list[dict] = field(default_factory=list)
    converged: bool = False
    interrupted: bool = False
    seconds: float = 0.0  # wall time of the loop, over every resumed run
    planned_steps: int | None = None  # schedule length fitted to a time budget
    out_of_time: bool = False


class TrainingLoop:
    def __init__(
        self,
        module: nn.Module,
        data: TrainingData,
        settings: TrainSettings,
        device: torch.device,
        checkpoint_dir: Path,
        on_step: Callable[[StepReport], None] | None = None,
        on_message: Callable[[str], None] = print,
    ) -> None:
        self.module = module.to(device)
        self.data = data
        self.settings = settings
        self.device = device
        self.checkpoint_dir = Path(checkpoint_dir)
        self.on_step = on_step
        self.on_message = on_message
        self.triplet = settings.loss == "triplet"
        if settings.distinct_clips and data.clips is None:
            raise ValueError("distinct_clips needs the clip of every training window (TrainingData.clips)")
        clips = data.clips.numpy() if settings.distinct_clips else None
        self.sampler = ClassBalancedSampler(
            data.labels.numpy(), settings.windows_per_class, settings.batch_size, settings.seed, clips
        )
        groups = _parameter_groups(module, settings.trunk_lr_scale)
        # Trained beside the network and discarded with the loop: only the embedding is kept.
        self.cosine_classifier = None
        if self.triplet and settings.crossentropy_weight:
            self.cosine_classifier = CosineClassifier(self._embedding_dim(), data.n_classes).to(device)
            groups.append({"params": list(self.cosine_classifier.parameters())})
        self.optimizer = make_optimizer(groups, settings)
        self.augment = tuple(settings.augment) if data.are_features else ()
        s = settings
        self.state = LoopState(
            margin=DynamicMargin(s.margin_start, s.margin_step, s.margin_max, s.margin_threshold, s.margin_patience)
        )
        self.best_weights = copy.deepcopy(module.state_dict())
        # With settings.average: an exponential moving average of the weights (and batch
        # normalisation statistics), which is what is validated, selected and kept.
        self.averaged = copy.deepcopy(module).eval() if settings.average else None
        # The module arrives freshly initialised (seeded), or as the base model, also when
        # resuming: the checkpoint is loaded afterwards. Learned parameters only: batch
        # normalisation statistics follow the data within a few steps and say nothing
        # about learning.
        self.initial_weights = {name: p.detach().clone() for name, p in module.named_parameters()}
        self.total_minibatches = None if s.epochs is None else s.epochs * self.sampler.batches_per_epoch()
        self.selection_index = _evenly_spaced_per_class(data.labels.numpy(), SELECTION_WINDOWS // data.n_classes)
        generator = torch.Generator().manual_seed(s.seed)
        self.batch_norm_index = torch.randperm(len(data.labels), generator=generator)[:BATCH_NORM_WINDOWS]

    @torch.no_grad()
    def _embedding_dim(self) -> int:
        self.module.eval()
        return self.module(self.data.inputs[:1].to(self.device)).shape[1]

    def planned_steps(self) -> int | None:
        """Length of the learning-rate schedule: the step budget, the epochs' steps, or
        what the time budget allows at the measured pace."""
        s = self.settings
        if s.steps is not None:
            return s.steps
        return self.total_minibatches if s.epochs is not None else self.state.planned_steps

    def _plan_for_time_budget(self, step_seconds: list[float], check_seconds: float) -> None:
        """Fit the schedule to the time budget once a few steps have been timed (the
        median step, plus the validation checks' share), and fit it again at every
        validation check: on a shared machine the pace changes, and a schedule that
        ended early would leave the rest of the budget at a learning rate of zero."""
        st, s = self.state, self.settings
        if s.time_budget_seconds is None or s.steps is not None or s.epochs is not None:
            return
        first = st.planned_steps is None
        if first and len(step_seconds) >= PACE_STEPS:
            recent = step_seconds
        elif not first and st.step % s.eval_every == 0 and len(step_seconds) >= s.eval_every:
            recent = step_seconds[-s.eval_every:]
        else:
            return
        pace = float(np.median(recent)) + check_seconds / s.eval_every
        st.planned_steps = max(st.step + 1, st.step + int((s.time_budget_seconds - st.seconds) / pace))
        if first:
            self.on_message(f"{pace:.2f} s per step with validation: about {st.planned_steps} steps fit the "
                            f"{s.time_budget_seconds / 60:.0f}-minute budget")

    def learning_rate(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps``, then constant or a half cosine to zero."""
        s = self.settings
        lr = s.learning_rate
        total = self.planned_steps()
        if s.schedule == "cosine" and total:
            progress = min(1.0, max(0.0, (step - s.warmup_steps) / max(1, total - s.warmup_steps)))
            lr *= 0.5 * (1.0 + math.cos(math.pi * progress))
        if step < s.warmup_steps:
            lr *= (step + 1) / s.warmup_steps
        return lr

    # -- the loop ------------------------------------------------------------

    def done(self) -> bool:
        s, st = self.settings, self.state
        if st.converged:
            return True
        if s.time_budget_seconds is not None and st.seconds >= s.time_budget_seconds:
            st.out_of_time = True
            return True
        if s.steps is None and s.epochs is None:
            return False
        if s.steps is not None:
            return st.step >= s.steps
        return st.minibatch >= self.total_minibatches and (st.pending is None or len(st.pending) == 0)

    def run(self) -> LoopState:
        started = time.perf_counter()
        if not self.state.history:
            self.select()  # the untrained network: the reference every later check is compared with
        check_seconds = time.perf_counter() - started
        self.state.seconds += check_seconds
        step_seconds: list[float] = []
        with StopRequest() as stop:
            while not self.done():
                started = time.perf_counter()
                loss, count = self._step()
                self.state.step += 1
                step_seconds.append(time.perf_counter() - started)
                self._plan_for_time_budget(step_seconds, check_seconds)
                if self.on_step:
                    self.on_step(self._report(loss, count, step_seconds[-1]))
                if self.state.step % self.settings.eval_every == 0:
                    self.select()
                self.state.seconds += time.perf_counter() - started
                if stop.requested:
                    self.state.interrupted = True
                    self.save_checkpoint()
                    self.on_message(f"stopped at step {self.state.step}; checkpoint saved")
                    return self.state
                if self.state.step % self.settings.checkpoint_every == 0:
                    self.save_checkpoint()
        if not self.state.history or self.state.history[-1]["step"] != self.state.step:
            self.select()
        self.save_checkpoint()
        return self.state

    def _step(self) -> tuple[float, int | None]:
        torch.manual_seed(self.settings.seed * 1_000_003 + self.state.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.state.step) * group.get("lr_scale", 1.0)
        self.module.train()
        if not self.triplet:
            return self._crossentropy_step(), None
        if self.settings.triplet_update == "minibatch":
            return self._minibatch_triplet_step()
        return self._paper_triplet_step()

    def _next_minibatch(self) -> torch.Tensor:
        indices = torch.from_numpy(self.sampler.batch(self.state.minibatch))
        self.state.minibatch += 1
        return indices

    def _inputs(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.data.inputs[idx]
        if self.augment:
            generator = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + self.state.step)
            x = augment(x, self.augment, generator, self.data.band_tops_hz)
        return x.to(self.device)

    def _update(self, loss: torch.Tensor, again: Callable[[], torch.Tensor] | None = None) -> None:
        """One optimiser step on ``loss``; with settings.sam_rho, on the gradient of
        ``again()`` (the same mini-batch's loss recomputed) at the sharpness-aware point."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.settings.sam_rho and again is not None:
            self._sharpness_aware_gradient(again)
        self.optimizer.step()
        if self.averaged is not None:
            self._update_average()

    def _sharpness_aware_gradient(self, again: Callable[[], torch.Tensor]) -> None:
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        offsets = [p.grad * (self.settings.sam_rho / (norm + 1e-12)) for p in params]
        with torch.no_grad():
            for p, offset in zip(params, offsets):
                p.add_(offset)
        self.optimizer.zero_grad(set_to_none=True)
        with _batch_norm_momentum(self.module, 0.0) as norms:  # one mini-batch, counted once
            counts = [m.num_batches_tracked.clone() for m in norms]
            again().backward()
            for m, count in zip(norms, counts):
                m.num_batches_tracked.copy_(count)
        with torch.no_grad():
            for p, offset in zip(params, offsets):
                p.sub_(offset)

    @torch.no_grad()
    def _update_average(self) -> None:
        # The usual warm-up of the decay, so that the first steps' average is not
        # mostly the random initialisation.
        decay = min(self.settings.average, (1 + self.state.step) / (10 + self.state.step))
        for average, current in zip(self.averaged.state_dict().values(), self.module.state_dict().values()):
            if average.is_floating_point():
                average.lerp_(current, 1.0 - decay)
            else:
                average.copy_(current)

    def restore_best(self) -> None:
        """The selected weights into the trained module, which from now on is the one
        evaluated (the running average, if any, is done with)."""
        self.module.load_state_dict(self.best_weights)
        self.averaged = None

    @property
    def evaluated(self) -> nn.Module:
        """The network that is validated and kept: the average when there is one."""
        return self.averaged if self.averaged is not None else self.module

    def _crossentropy_step(self) -> float:
        idx = self._next_minibatch()
        logits = self.module(self._inputs(idx))
        loss = nn.functional.cross_entropy(logits, self.data.labels[idx].to(self.device))
        self._update(loss)
        return float(loss.detach())

    def _record_count(self, count: int) -> float:
        st = self.state
        margin = st.margin.record(count)
        st.empty_minibatches = st.empty_minibatches + 1 if count == 0 else 0
        # Paper: trained "till it reaches the desired value of margin and the triplet
        # loss is converged to zero"; 50 empty mini-batches at the maximum margin.
        if st.margin.at_maximum and st.empty_minibatches >= 50:
            st.converged = True
            self.on_message(f"converged at step {st.step + 1}: no semi-hard triplets at the maximum margin")
        return margin

    def _minibatch_triplet_step(self) -> tuple[float, int]:
        idx = self._next_minibatch()
        labels = self.data.labels[idx].to(self.device)
        inputs = self._inputs(idx)
        embeddings = self.module(inputs)
        triplets = semi_hard_triplets(embeddings.detach(), labels, self.state.margin.value)
        margin = self._record_count(len(triplets))  # Algorithm 1: count, margin update, then loss

        def loss_of(embeddings: torch.Tensor) -> torch.Tensor:
            loss = triplet_loss(embeddings, triplets, margin)
            if self.cosine_classifier is not None:
                loss = loss + self.settings.crossentropy_weight * nn.functional.cross_entropy(
                    self.cosine_classifier(embeddings), labels)
            return loss

        loss = loss_of(embeddings)
        if len(triplets) or self.cosine_classifier is not None:
            self._update(loss, again=lambda: loss_of(self.module(inputs)))
        return float(loss.detach()), len(triplets)

    def _paper_triplet_step(self) -> tuple[float, int | None]:
        st = self.state
        count = None
        if st.pending is None or len(st.pending) == 0:
            idx = self._next_minibatch()
            with torch.no_grad():
                self.module.eval()
                embeddings = self.module(self._inputs(idx))
                self.module.train()
            local = semi_hard_triplets(embeddings, self.data.labels[idx].to(self.device), st.margin.value).cpu()
            count = len(local)
            self._record_count(count)
            st.pending = idx[local]  # global window indices
            if count == 0:
                return 0.0, 0  # an empty mini-batch counts as a step without an update
        chunk, st.pending = st.pending[: self.settings.triplet_batch], st.pending[self.settings.triplet_batch :]
        windows, inverse = torch.unique(chunk.flatten(), return_inverse=True)
        embeddings = self.module(self._inputs(windows))
        loss = triplet_loss(embeddings, inverse.view(-1, 3).to(self.device), st.margin.value)
        self._update(loss)
        return float(loss.detach()), count

    def _report(self, loss: float, count: int | None, seconds: float) -> StepReport:
        st = self.state
        total = self.settings.steps if self.settings.epochs is None else None
        return StepReport(
            st.step, total or st.planned_steps, st.minibatch, self.total_minibatches, loss,
            st.margin.value if self.triplet else None, count, seconds, st.seconds + seconds,
            self.settings.time_budget_seconds, st.history[-1]["val_macro_f1"] if st.history else None,
        )

    # -- model selection -----------------------------------------------------

    def outputs(self, inputs: torch.Tensor) -> torch.Tensor:
        return outputs_in_batches(self.evaluated, inputs, self.device)

    def validation_scores(self) -> dict[str, float]:
        """Validation macro-F1 per window and, with ``val_clips``, per file (the mean
        of its windows' class scores). Triplet: nearest training-class mean of the
        embeddings (the geometry the open-set rule relies on), class scores a softmax
        over negative squared distances. Cross-entropy: the softmax prediction."""
        d = self.data
        val = self.outputs(d.val_inputs)
        if self.triplet:
            train = self.outputs(d.inputs[self.selection_index])
            labels = d.labels[self.selection_index]
            means, _ = class_means(train, labels, d.n_classes)
            scores = torch.softmax(-torch.cdist(val, means).square() / NEAREST_MEAN_TEMPERATURE, dim=1)
        else:
            scores = torch.softmax(val, dim=1)
        names = [str(c) for c in range(d.n_classes)]
        truth = d.val_labels.numpy()
        result = {"window": classification_report(truth, scores.argmax(1).numpy(), names).macro_f1}
        if d.val_clips is not None:
            files, file_scores = file_level(scores.numpy(), d.val_clips.numpy())
            file_truth = np.array([truth[d.val_clips.numpy() == f][0] for f in files])
            result["file"] = classification_report(file_truth, file_scores.argmax(1), names).macro_f1
        return result

    def select(self) -> None:
        """Keep the weights if their validation macro-F1 per file (per window without
        clip indices) is the best so far."""
        st = self.state
        if self.settings.clean_batch_norm and self.data.are_features:
            fit_batch_norm(self.evaluated, self.data.inputs[self.batch_norm_index], self.device)
        scores = self.validation_scores()
        metric = scores.get("file", scores["window"])
        moved = self.weight_change(self.evaluated.state_dict())
        st.history.append({"step": st.step, "val_macro_f1": metric, "val_macro_f1_window": scores["window"],
                           "margin": st.margin.value, "weight_change": moved})
        if metric > st.best_metric:
            st.best_metric, st.best_step = metric, st.step
            self.best_weights = copy.deepcopy(self.evaluated.state_dict())
        per = "per file" if "file" in scores else "per window"
        self.on_message(
            f"step {st.step}: validation macro-F1 {per} {metric:.3f} (best {st.best_metric:.3f} at step "
            f"{st.best_step}), per window {scores['window']:.3f}; weights {moved:.2%} from their initialisation"
        )

    def weight_change(self, weights: dict[str, torch.Tensor]) -> float:
        """How far ``weights`` lie from the start: ||w - w0|| / ||w0|| over all learned
        weights and biases. Near zero means the network is still its random start."""
        moved = total = 0.0
        for name, start in self.initial_weights.items():
            if start.is_floating_point():
                moved += float((weights[name].to(start.device) - start).pow(2).sum())
                total += float(start.pow(2).sum())
        return (moved / total) ** 0.5 if total else 0.0

    # -- checkpoints -----------------------------------------------------------

    def save_checkpoint(self) -> None:
        st = self.state
        tensors = {f"module.{k}": v for k, v in self.module.state_dict().items()}
        tensors.update({f"best.{k}": v for k, v in self.best_weights.items()})
        if self.averaged is not None:
            tensors.update({f"average.{k}": v for k, v in self.averaged.state_dict().items()})
        if self.cosine_classifier is not None:
            tensors.update({f"cosine.{k}": v for k, v in self.cosine_classifier.state_dict().items()})
        optim = self.optimizer.state_dict()
        for pid, pstate in optim["state"].items():
            for key, value in pstate.items():
                tensors[f"optim.{pid}.{key}"] = torch.as_tensor(value)
        if st.pending is not None:
            tensors["pending"] = st.pending
        meta = {
            "settings": self.settings.to_dict(),
            "step": st.step,
            "minibatch": st.minibatch,
            "margin": {"value": st.margin.value, "recent_counts": st.margin.recent_counts},
            "empty_minibatches": st.empty_minibatches,
            "best_metric": st.best_metric,
            "best_step": st.best_step,
            "history": st.history,
            "converged": st.converged,
            "seconds": st.seconds,
            "planned_steps": st.planned_steps,
            "optimizer_param_groups": optim["param_groups"],
            "optimizer_state_keys": {str(pid): sorted(p) for pid, p in optim["state"].items()},
        }
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_dir / f".{CHECKPOINT_WEIGHTS}.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.replace(self.checkpoint_dir / CHECKPOINT_WEIGHTS)
        # state.json is written last: it names the step the weights belong to.
        atomic_write(self.checkpoint_dir / CHECKPOINT_STATE, json.dumps(meta, indent=1).encode())

    def load_checkpoint(self) -> None:
        meta = read_checkpoint_meta(self.checkpoint_dir)
        tensors = load_file(str(self.checkpoint_dir / CHECKPOINT_WEIGHTS))
        self.module.load_state_dict(_under(tensors, "module."))
        self.best_weights = {k: v.to(self.device) for k, v in _under(tensors, "best.").items()}
        if self.averaged is not None:
            self.averaged.load_state_dict(_under(tensors, "average."))
        if self.cosine_classifier is not None:
            self.cosine_classifier.load_state_dict(_under(tensors, "cosine."))
        state = {
            int(pid): {key: tensors[f"optim.{pid}.{key}"] for key in keys}
            for pid, keys in meta["optimizer_state_keys"].items()
        }
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
        st = self.state
        st.step, st.minibatch = meta["step"], meta["minibatch"]
        st.margin.value = meta["margin"]["value"]
        st.margin.recent_counts = list(meta["margin"]["recent_counts"])
        st.empty_minibatches = meta["empty_minibatches"]
        st.best_metric, st.best_step = meta["best_metric"], meta["best_step"]
        st.history = meta["history"]
        st.converged = meta["converged"]
        st.seconds = meta.get("seconds", 0.0)
        st.planned_steps = meta.get("planned_steps")
        st.pending = tensors.get("pending")


def read_checkpoint_meta(directory: Path) -> dict:
    path = Path(directory) / CHECKPOINT_STATE
    if not path.is_file() or not (Path(directory) / CHECKPOINT_WEIGHTS).is_file():
        raise FileNotFoundError(f"no checkpoint in {directory}")
    return json.loads(path.read_text())


def _under(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors saved under ``prefix``, named without it."""
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


class CosineClassifier(nn.Module):
    """Logits ``scale * cos(embedding, class vector)``: a softmax that, like the nearest
    class mean, depends on directions only (NormFace, Wang et al. 2017)."""

    def __init__(self, dim: int, n_classes: int, scale: float = 16.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim) / dim**0.5)
        self.scale = scale

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.scale * nn.functional.normalize(embeddings, dim=1) @ nn.functional.normalize(self.weight, dim=1).T


def _parameter_groups(module: nn.Module, trunk_lr_scale: float) -> list[dict]:
    trainable = [p for p in module.parameters() if p.requires_grad]
    trunk = getattr(module, "trunk", None)
    if trunk_lr_scale == 1.0 or trunk is None:
        return [{"params": trainable}]
    in_trunk = {id(p) for p in trunk.parameters()}
    return [{"params": [p for p in trainable if id(p) in in_trunk], "lr_scale": trunk_lr_scale},
            {"params": [p for p in trainable if id(p) not in in_trunk]}]


def _batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def _batch_norm_momentum(module: nn.Module, momentum: float | None):
    """``module``'s batch-normalisation layers, with ``momentum`` while the block runs:
    0 leaves their running statistics as they are, None makes them a cumulative average."""
    norms = _batch_norms(module)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = momentum
    try:
        yield norms
    finally:
        for m, previous in zip(norms, momenta):
            m.momentum = previous


def make_optimizer(params: list, settings: TrainSettings) -> torch.optim.Optimizer:
    s = settings
    if s.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=s.learning_rate, weight_decay=s.weight_decay,
                                   initial_accumulator_value=s.adagrad_initial_accumulator)
    optimizer = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
    return optimizer(params, lr=s.learning_rate, weight_decay=s.weight_decay)


@torch.no_grad()
def outputs_in_batches(network: nn.Module, inputs: torch.Tensor, device: torch.device, batch: int = 64) -> torch.Tensor:
    """``network``, in eval mode, over ``inputs`` in batches; the outputs on the CPU."""
    network.eval()
    out = [network(inputs[i : i + batch].to(device)).cpu() for i in range(0, len(inputs), batch)]
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def fit_batch_norm(network: nn.Module, inputs: torch.Tensor, device: torch.device, batch: int = 64) -> None:
    """Replace the running statistics of ``network``'s batch normalisation layers by
    their plain average over ``inputs``, run through the network in batches with only
    those layers in training mode (dropout stays off). ``inputs`` should be shuffled:
    the statistics average within-batch variances."""
    was_training = network.training
    with _batch_norm_momentum(network, None) as norms:
        if not norms:
            return
        network.eval()
        for m in norms:
            m.reset_running_stats()
            m.train()
        for i in range(0, len(inputs), batch):
            network(inputs[i : i + batch].to(device))
    network.train(was_training)


def _evenly_spaced_per_class(labels: np.ndarray, per_class: int) -> torch.Tensor:
    picks = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        picks.append(members[np.unique(np.linspace(0, len(members) - 1, max(1, per_class)).round().astype(int))])
    return torch.from_numpy(np.sort(np.concatenate(picks)))


def as_inputs(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))
