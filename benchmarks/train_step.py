"""Time one training step of the full network at the paper's sizes.

    python benchmarks/train_step.py [--windows 160] [--steps 3] [--device cpu|cuda] [--json out.json]

A step is: forward of the mini-batch, semi-hard mining, triplet loss, backward,
Adagrad update (the default "minibatch" variant). On CPU it runs twice in one
process: with glibc's default allocator settings, then after
fieldmon.tuning.keep_freed_memory(), which `fieldmon train` calls.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from fieldmon.model.network import MultiscaleCNN
from fieldmon.train.triplet import semi_hard_triplets, triplet_loss
from fieldmon.tuning import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=160, help="mini-batch size (32 species x 5 windows)")
    parser.add_argument("--classes", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    results = {"default": time_steps(args, device)}
    if device.type == "cpu":
        results["keep_freed_memory"] = time_steps(args, device, tuned=keep_freed_memory())
        results["speedup"] = results["default"]["seconds_per_step"] / results["keep_freed_memory"]["seconds_per_step"]
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def time_steps(args: argparse.Namespace, device: torch.device, tuned: bool = False) -> dict:
    torch.manual_seed(0)
    before = resource.getrusage(resource.RUSAGE_SELF)
    net = MultiscaleCNN().to(device).train()
    optimizer = torch.optim.Adagrad(net.parameters(), lr=1e-3, weight_decay=1e-4)
    features = torch.rand(args.windows, 3, 40, 200, device=device)
    labels = (torch.arange(args.windows) % args.classes).to(device)
    times = []
    for _ in range(args.steps + 1):  # the first step warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        emb = net(features)
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
        "windows_per_step": args.windows,
        "seconds_per_step": min(times[1:]),
        "seconds_per_step_all": times,
        "user_s": usage.ru_utime - before.ru_utime,
        "system_s": usage.ru_stime - before.ru_stime,
        "peak_rss_mb_so_far": usage.ru_maxrss / 1024,
        "keep_freed_memory": tuned,
    }


if __name__ == "__main__":
    main()
