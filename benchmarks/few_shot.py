"""Site models from a few clips per species, against the shallow baseline on the same split.

    python benchmarks/few_shot.py OUT [--data ../shared/data/insectset32] [--species 8] [--clips 5]
                                      [--sets 3] [--budget 20m] [--base-budget 60m | --base MODEL]
                                      [--trunk-lr-scale 1.0] [--head-warmup 0] [--only-set N]
                                      [--low-rate 16000] [--band-limit auto|none]

1. Holds out ``--species`` species that have at least ``--clips`` + 3 clips (seeded choice).
2. Trains a base model on the other species (their dataset split), unless ``--base`` names one;
   the base never hears the held-out species.
3. For each of ``--sets`` draws of ``--clips`` clips per held-out species: ``fieldmon train``
   with ``--base`` and ``--time-budget`` (the few-clip split: one clip per species for
   selection, the rest for training), and the same with ``--freeze-trunk`` (2,000 steps of
   the dense head), then scores both site models and the shallow baseline (fitted on the
   site model's own training clips) on every other clip of those species.

``--low-rate HZ``: the training clips of every other held-out species are resampled to that
rate first (as if recorded on another recorder), the evaluation clips stay as they are;
``--band-limit`` is passed to the site models (``fieldmon train --band-limit``).

Writes OUT/results.json and prints one line per set. Everything runs on the CPU unless a
GPU is there.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from fieldmon.cli.main import Duration
from fieldmon.evaluation.evaluate import evaluate
from fieldmon.features import FeatureSettings
from fieldmon.train.api import TrainCallbacks, train
from fieldmon.train.baseline import clip_statistics, fit_and_score
from fieldmon.train.cache import EVALUATION_HOP_SECONDS
from fieldmon.train.dataset import load_clips
from fieldmon.train.settings import TrainSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/insectset32"))
    parser.add_argument("--species", type=int, default=8)
    parser.add_argument("--clips", type=int, default=5)
    parser.add_argument("--sets", type=int, default=3)
    parser.add_argument("--budget", default="20m", help="time budget of each site model")
    parser.add_argument("--base-budget", default="60m", help="time budget of the base model")
    parser.add_argument("--base", default=None, help="a base model that has not heard the held-out species")
    parser.add_argument("--trunk-lr-scale", type=float, default=1.0, help="as fieldmon train --trunk-lr-scale")
    parser.add_argument("--head-warmup", type=int, default=0, help="as fieldmon train --head-warmup")
    parser.add_argument("--only-set", type=int, default=None, help="run only this set (to run sets side by side)")
    parser.add_argument("--low-rate", type=int, default=None,
                        help="resample the training clips of every other held-out species to this rate")
    parser.add_argument("--band-limit", default="auto", help="as fieldmon train --band-limit (auto or none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    duration = Duration()
    args.out.mkdir(parents=True, exist_ok=True)

    rows = list(csv.DictReader(open(args.data / "manifest.csv", newline="")))
    by_species: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_species[row["species"]].append(row)
    rng = np.random.default_rng(args.seed)
    eligible = sorted(s for s, r in by_species.items() if len(r) >= args.clips + 3)
    held_out = sorted(rng.choice(eligible, size=args.species, replace=False).tolist())
    print("held out:", ", ".join(held_out))

    base = args.base
    if base is None:
        base_rows = [(r["path"], r["species"], r["split"]) for r in rows if r["species"] not in held_out]
        base_manifest = write_manifest(args.out / "base.csv", args.data, base_rows)
        base = args.out / "base"
        settings = TrainSettings(time_budget_seconds=duration.convert(args.base_budget, None, None))
        train(base_manifest, base, settings, cache_dir=args.cache, callbacks=TrainCallbacks(message=print_flush))

    results = {"held_out": held_out, "base": str(base), "sets": []}
    for index in range(args.sets):
        if args.only_set is not None and index != args.only_set:
            continue
        draw = np.random.default_rng([args.seed, index])
        train_rows, eval_rows = [], []
        for species in held_out:
            clips = sorted(by_species[species], key=lambda r: r["path"])
            picked = set(draw.choice(len(clips), size=args.clips, replace=False).tolist())
            low = args.low_rate is not None and species in held_out[::2]
            train_rows += [(resampled(args.data / clips[i]["path"], args.low_rate, args.out / "low-rate")
                            if low else clips[i]["path"], species, "") for i in sorted(picked)]
            eval_rows += [(clips[i]["path"], species, "") for i in range(len(clips)) if i not in picked]
        site_manifest = write_manifest(args.out / f"set{index}.csv", args.data, train_rows, split=False)
        eval_manifest = write_manifest(args.out / f"set{index}-eval.csv", args.data, eval_rows, split=False)
        site = args.out / f"set{index}"
        settings = TrainSettings(time_budget_seconds=duration.convert(args.budget, None, None), seed=index,
                                 trunk_lr_scale=args.trunk_lr_scale, head_warmup_steps=args.head_warmup,
                                 band_limit=args.band_limit)
        bundle = train(site_manifest, site, settings, base=base, cache_dir=args.cache,
                       callbacks=TrainCallbacks(message=print_flush))
        deep = evaluate(site, eval_manifest, cache_dir=args.cache)
        # the fastest option beside it: the base trunk frozen, only the dense head trained
        frozen_settings = TrainSettings(steps=2000, freeze_trunk=True, seed=index, baseline=False,
                                        band_limit=args.band_limit)
        frozen_bundle = train(site_manifest, args.out / f"set{index}-frozen", frozen_settings, base=base,
                              cache_dir=args.cache, callbacks=TrainCallbacks(message=print_flush))
        frozen = evaluate(args.out / f"set{index}-frozen", eval_manifest, cache_dir=args.cache)
        shallow = baseline_on(site / "split.csv", eval_manifest, bundle.class_names, bundle.feature_settings)
        result = {
            "set": index, "train_clips": bundle.training["clips"], "eval_files": deep["files"],
            "steps": bundle.training["steps_done"], "wall_seconds": bundle.training["wall_seconds"],
            "site_model": {"file_macro_f1": deep["file_macro_f1"], "macro_f1": deep["macro_f1"]},
            "frozen_trunk": {"file_macro_f1": frozen["file_macro_f1"], "macro_f1": frozen["macro_f1"],
                             "wall_seconds": frozen_bundle.training["wall_seconds"]},
            "baseline": shallow,
        }
        results["sets"].append(result)
        print(f"set {index}: site model {deep['file_macro_f1']:.3f} per file ({deep['macro_f1']:.3f} per window), "
              f"frozen trunk {frozen['file_macro_f1']:.3f} ({frozen['macro_f1']:.3f}), "
              f"baseline {shallow['file_macro_f1']:.3f} ({shallow['macro_f1']:.3f}); {deep['files']} files, "
              f"{bundle.training['steps_done']} steps in {bundle.training['wall_seconds'] / 60:.1f} min", flush=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def baseline_on(split_csv: Path, eval_manifest: Path, class_names: list[str],
                settings: FeatureSettings) -> dict[str, float]:
    """The shallow baseline fitted on the site model's training clips (its split.csv),
    scored on the evaluation clips, in the site model's band."""
    train_clips = [c for c in load_clips(split_csv).clips if c.split == "train"]
    stats, labels, _ = clip_statistics(train_clips, class_names, settings, TrainSettings(steps=1).hop_seconds)
    held = clip_statistics(load_clips(eval_manifest).clips, class_names, settings, EVALUATION_HOP_SECONDS)
    return fit_and_score((stats, labels), {"eval": held}, class_names)["eval"]


def resampled(path: Path, rate: int, folder: Path) -> str:
    """``path`` resampled to ``rate``, written once under ``folder``."""
    target = folder / path.parent.name / f"{path.stem}.wav"
    if not target.exists():
        samples, source_rate = sf.read(path, dtype="float32")
        target.parent.mkdir(parents=True, exist_ok=True)
        sf.write(target, soxr.resample(samples, source_rate, rate), rate)
    return str(target)


def write_manifest(path: Path, data: Path, rows: list[tuple[str, str, str]], split: bool = True) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"] if split else ["path", "label"])
        for clip_path, label, clip_split in rows:
            writer.writerow([str((data / clip_path).resolve()), label] + ([clip_split] if split else []))
    return path


def print_flush(text: str) -> None:
    print(text, flush=True)


if __name__ == "__main__":
    main()
