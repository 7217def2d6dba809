"""Time one training step of each network, in one process, so their ratio is fair.

    python benchmarks/train_step.py [--network compact,paper] [--windows 160] [--steps 3]
                                    [--device cpu|cuda] [--json out.json]

A step is what ``fieldmon train`` does with the network's own recipe: forward of the
mini-batch (augmented for the compact network), semi-hard mining, triplet loss,
backward, and the optimiser update (AdamW for compact, Adagrad for paper), in the
default "minibatch" variant. On CPU, glibc is first told to keep freed memory
(fieldmon.tuning.keep_freed_memory), as ``fieldmon train`` does.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from fieldmon.model.network import count_flops, count_parameters
from fieldmon.model.networks import NETWORKS, build_network
from fieldmon.train.augment import augment
from fieldmon.train.loop import make_optimizer
from fieldmon.train.settings import TrainSettings
from fieldmon.train.triplet import semi_hard_triplets, triplet_loss
from fieldmon.tuning import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="compact,paper", help="comma-separated: " + ", ".join(NETWORKS))
    parser.add_argument("--windows", type=int, default=160, help="mini-batch size (32 species x 5 windows)")
    parser.add_argument("--classes", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        keep_freed_memory()
    results = {name: time_steps(name, args, device) for name in args.network.split(",")}
    if "compact" in results and "paper" in results:
        results["paper_over_compact"] = results["paper"]["seconds_per_step"] / results["compact"]["seconds_per_step"]
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def time_steps(network: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    settings = TrainSettings.for_network(network, steps=args.steps)
    before = resource.getrusage(resource.RUSAGE_SELF)
    net = build_network(network).to(device).train()
    optimizer = make_optimizer(list(net.parameters()), settings)
    features = torch.rand(args.windows, 3, 40, 200)
    labels = (torch.arange(args.windows) % args.classes).to(device)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(args.steps + 1):  # the first step warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        batch = augment(features, settings.augment, generator) if settings.augment else features
        emb = net(batch.to(device))
        loss = triplet_loss(emb, semi_hard_triplets(emb.detach(), labels, 0.2), 0.2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "gflop_per_window": count_flops(net.cpu()) / 1e9,
        "parameters": count_parameters(net),
        "optimizer": settings.optimizer,
        "windows_per_step": args.windows,
        "seconds_per_step": min(times[1:]),
        "seconds_per_step_all": times,
        "user_s": usage.ru_utime - before.ru_utime,
        "system_s": usage.ru_stime - before.ru_stime,
        "peak_rss_mb_so_far": usage.ru_maxrss / 1024,
    }


if __name__ == "__main__":
    main()
