"""Seconds per training step of Difficulty-Net (exact and as released) against a plain cross-entropy step.

What is timed is :meth:`ltlib.train.Trainer.step`, the training loop's own step: ``method.compute_loss``
(for Difficulty-Net the whole meta step: virtual step, meta batch, JVP, Adam update of the network),
``zero_grad``, ``backward`` and the SGD step. ResNet-32, batch 128, meta batch 100, random 32×32 images, so the
numbers are the cost of the step and not of any data set. The validation split has 100 random images
per class, a multiple of the meta batch, so every meta batch is full. Reported: the median over
``--steps`` steps after ``--warmup`` steps, and its ratio to the plain step. Results go to
``results/benchmarks/meta_step-<device>.json`` with provenance. This is a benchmark, not a test.

    make benchmark-meta                                # CPU, 2 threads, the Makefile's allocator settings
    python benchmarks/meta_step.py                     # the same without them
    python benchmarks/meta_step.py --device cuda       # on a GPU
    python benchmarks/meta_step.py --steps 2 --out /tmp/meta_step.json   # does it run?
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ltlib.data import ImageSplit, LongTailedData, long_tailed_counts
from ltlib.io import write_json
from ltlib.methods import build_method
from ltlib.models import resnet32
from ltlib.paths import ROOT
from ltlib.provenance import provenance
from ltlib.train import TrainConfig, Trainer

METHODS = ("ce", "difficulty_net_as_released", "difficulty_net")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_split(count: int, num_classes: int, generator: torch.Generator) -> ImageSplit:
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(count) % num_classes  # balanced, as the validation split of the CDB protocol
    return ImageSplit(images, labels)


def step_times(name: str, args, data: LongTailedData) -> list[float]:
    torch.manual_seed(0)
    counts = long_tailed_counts(500, args.classes, 100)  # only the loss's class statistics; the data is random
    options = {} if name == "ce" else {"meta_batch_size": args.meta_batch_size}
    method = build_method(name, counts, **options)
    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.1, weight_decay=2e-4, warmup_epochs=0,
                         milestones=(), channels_last=args.channels_last, amp=args.amp,
                         compile=args.compile if name == "ce" else "none")
    trainer = Trainer(resnet32(args.classes), method, data, config, device=args.device, seed=0)
    trainer.set_epoch(0)
    trainer.model.train()
    device = trainer.device

    def batches():
        while True:
            yield from trainer.batches["train"].epoch(args.batch_size, trainer.generator, drop_last=True)

    times = []
    for step, (images, labels) in zip(range(args.warmup + args.steps), batches()):
        synchronize(device)
        started = time.perf_counter()
        trainer.step(images, labels)
        synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--meta-batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False, help="bfloat16 autocast")
    parser.add_argument("--compile", default="none", help="torch.compile mode of the plain step (ce only)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default results/benchmarks/meta_step-<device>.json)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data_generator = torch.Generator().manual_seed(0)
    train_split = random_split(args.batch_size * 4, args.classes, data_generator)
    val_split = random_split(100 * args.classes, args.classes, data_generator)
    empty = ImageSplit(torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))
    data = LongTailedData("random", "none", 100.0, "exp", [str(c) for c in range(args.classes)], train_split,
                          val_split, empty, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), True, 4,
                          np.arange(len(train_split)), np.arange(len(val_split)))

    result = {"model": "resnet32", "classes": args.classes, "batch_size": args.batch_size,
              "meta_batch_size": args.meta_batch_size, "steps": args.steps, "warmup": args.warmup,
              "threads": torch.get_num_threads(), "device": args.device, "channels_last": args.channels_last,
              "amp": args.amp, "compile": args.compile,
              "step_s": {}, "median_step_s": {}, "ratio_to_plain": {},
              # glibc allocator settings (the Makefile sets them); they change the timings, not the results
              "malloc_env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}}
    for name in METHODS:
        times = step_times(name, args, data)
        result["step_s"][name] = [round(t, 5) for t in times]
        result["median_step_s"][name] = round(statistics.median(times), 5)
    plain = result["median_step_s"]["ce"]
    for name in METHODS:
        result["ratio_to_plain"][name] = round(result["median_step_s"][name] / plain, 3)
        seconds, ratio = result["median_step_s"][name], result["ratio_to_plain"][name]
        print(f"{name:>28}: {seconds:8.4f} s/step  = {ratio:5.2f}x plain")
    out = args.out or ROOT / "results" / "benchmarks" / f"meta_step-{device.type}.json"
    write_json(out, {**result, **provenance(args.device)})
    print("wrote", out)


if __name__ == "__main__":
    main()
