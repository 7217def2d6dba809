"""The optimisation loop: dynamic triplet loss or cross-entropy, with model selection
on the validation split, checkpoints, clean interruption and bit-for-bit resume.

The loop is generic over the trained module and its inputs: the full multiscale CNN
on feature windows, or (``--base``) only the dense head on cached trunk outputs.

Resume is exact because nothing random carries state across steps: mini-batch ``i``
is drawn from a generator seeded with (seed, i), and torch's generator (dropout) is
reseeded from (seed, step) before every update. A checkpoint holds the weights, the
optimiser state, the margin schedule, the best weights so far and, in the paper's
triplet-batch variant, the triplets still pending from the current mini-batch.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fieldmon.evaluation.metrics import classification_report
from fieldmon.fileio import atomic_write
from fieldmon.signals import StopRequest
from fieldmon.train.sampler import ClassBalancedSampler
from fieldmon.train.settings import TrainSettings
from fieldmon.train.triplet import DynamicMargin, semi_hard_triplets, triplet_loss

CHECKPOINT_WEIGHTS = "state.safetensors"
CHECKPOINT_STATE = "state.json"


@dataclass
class TrainingData:
    inputs: torch.Tensor  # training windows (features, or trunk outputs for --base)
    labels: torch.Tensor
    val_inputs: torch.Tensor
    val_labels: torch.Tensor
    n_classes: int
    clips: torch.Tensor | None = None  # the clip each training window was cut from


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
        params = [p for p in module.parameters() if p.requires_grad]
        if self.triplet:
            self.optimizer = torch.optim.Adagrad(
                params, lr=settings.learning_rate, weight_decay=settings.weight_decay,
                initial_accumulator_value=settings.adagrad_initial_accumulator,
            )
        else:
            self.optimizer = torch.optim.Adam(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        s = settings
        self.state = LoopState(
            margin=DynamicMargin(s.margin_start, s.margin_step, s.margin_max, s.margin_threshold, s.margin_patience)
        )
        self.best_weights = copy.deepcopy(module.state_dict())
        # The module arrives freshly initialised (seeded), also when resuming: the
        # checkpoint is loaded afterwards.
        self.initial_weights = copy.deepcopy(module.state_dict())
        self.total_minibatches = None if s.epochs is None else s.epochs * self.sampler.batches_per_epoch()

    # -- the loop ------------------------------------------------------------

    def done(self) -> bool:
        s, st = self.settings, self.state
        if st.converged:
            return True
        if s.steps is not None:
            return st.step >= s.steps
        return st.minibatch >= self.total_minibatches and (st.pending is None or len(st.pending) == 0)

    def run(self) -> LoopState:
        with StopRequest() as stop:
            while not self.done():
                started = time.perf_counter()
                loss, count = self._step()
                self.state.step += 1
                if self.on_step:
                    self.on_step(self._report(loss, count, time.perf_counter() - started))
                if self.state.step % self.settings.eval_every == 0:
                    self.select()
                if stop.requested:
                    self.state.interrupted = True
                    self.save_checkpoint()
                    self.on_message(f"stopped at step {self.state.step}; checkpoint saved, continue with --resume")
                    return self.state
                if self.state.step % self.settings.checkpoint_every == 0:
                    self.save_checkpoint()
        if not self.state.history or self.state.history[-1]["step"] != self.state.step:
            self.select()
        self.save_checkpoint()
        return self.state

    def _step(self) -> tuple[float, int | None]:
        torch.manual_seed(self.settings.seed * 1_000_003 + self.state.step)
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

    def _update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _crossentropy_step(self) -> float:
        idx = self._next_minibatch()
        logits = self.module(self.data.inputs[idx].to(self.device))
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
        embeddings = self.module(self.data.inputs[idx].to(self.device))
        triplets = semi_hard_triplets(embeddings.detach(), labels, self.state.margin.value)
        margin = self._record_count(len(triplets))  # Algorithm 1: count, margin update, then loss
        loss = triplet_loss(embeddings, triplets, margin)
        if len(triplets):
            self._update(loss)
        return float(loss.detach()), len(triplets)

    def _paper_triplet_step(self) -> tuple[float, int | None]:
        st = self.state
        count = None
        if st.pending is None or len(st.pending) == 0:
            idx = self._next_minibatch()
            with torch.no_grad():
                self.module.eval()
                embeddings = self.module(self.data.inputs[idx].to(self.device))
                self.module.train()
            local = semi_hard_triplets(embeddings, self.data.labels[idx].to(self.device), st.margin.value).cpu()
            count = len(local)
            self._record_count(count)
            st.pending = idx[local]  # global window indices
            if count == 0:
                return 0.0, 0  # an empty mini-batch counts as a step without an update
        chunk, st.pending = st.pending[: self.settings.triplet_batch], st.pending[self.settings.triplet_batch :]
        windows, inverse = torch.unique(chunk.flatten(), return_inverse=True)
        embeddings = self.module(self.data.inputs[windows].to(self.device))
        loss = triplet_loss(embeddings, inverse.view(-1, 3).to(self.device), st.margin.value)
        self._update(loss)
        return float(loss.detach()), count

    def _report(self, loss: float, count: int | None, seconds: float) -> StepReport:
        st = self.state
        return StepReport(
            st.step, self.settings.steps, st.minibatch, self.total_minibatches, loss,
            st.margin.value if self.triplet else None, count, seconds,
        )

    # -- model selection -----------------------------------------------------

    @torch.no_grad()
    def outputs(self, inputs: torch.Tensor, batch: int = 64) -> torch.Tensor:
        self.module.eval()
        out = [self.module(inputs[i : i + batch].to(self.device)).cpu() for i in range(0, len(inputs), batch)]
        return torch.cat(out) if out else torch.empty(0)

    def validation_macro_f1(self) -> float:
        """Triplet: nearest training-class mean of the embeddings (the geometry the
        open-set rule relies on). Cross-entropy: the softmax prediction."""
        d = self.data
        val = self.outputs(d.val_inputs)
        if self.triplet:
            train = self.outputs(d.inputs)
            means = torch.stack([train[d.labels == c].mean(0) for c in range(d.n_classes)])
            predicted = torch.cdist(val, means).argmin(dim=1)
        else:
            predicted = val.argmax(dim=1)
        names = [str(c) for c in range(d.n_classes)]
        return classification_report(d.val_labels.numpy(), predicted.numpy(), names).macro_f1

    def select(self) -> None:
        st = self.state
        metric = self.validation_macro_f1()
        moved = self.weight_change(self.module.state_dict())
        st.history.append({"step": st.step, "val_macro_f1": metric, "margin": st.margin.value, "weight_change": moved})
        if metric > st.best_metric:
            st.best_metric, st.best_step = metric, st.step
            self.best_weights = copy.deepcopy(self.module.state_dict())
        self.on_message(
            f"step {st.step}: validation macro-F1 {metric:.3f} (best {st.best_metric:.3f} at step {st.best_step}); "
            f"weights {moved:.2%} from their initialisation"
        )

    def weight_change(self, weights: dict[str, torch.Tensor]) -> float:
        """How far ``weights`` lie from the initialisation: ||w - w0|| / ||w0|| over all
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
        self.module.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("module.")})
        self.best_weights = {k[5:]: v.to(self.device) for k, v in tensors.items() if k.startswith("best.")}
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
        st.pending = tensors.get("pending")


def read_checkpoint_meta(directory: Path) -> dict:
    path = Path(directory) / CHECKPOINT_STATE
    if not path.is_file() or not (Path(directory) / CHECKPOINT_WEIGHTS).is_file():
        raise FileNotFoundError(f"no checkpoint in {directory}")
    return json.loads(path.read_text())


def as_inputs(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))
