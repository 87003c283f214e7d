"""Seconds per training step of Difficulty-Net (exact and as released) against a plain cross-entropy step.

What is timed is one iteration of ``fit``'s inner loop: ``method.compute_loss`` (for Difficulty-Net the
whole meta step: virtual step, meta batch, JVP, Adam update of the network), ``zero_grad``,
``backward`` and the SGD step. ResNet-32, batch 128, meta batch 100, random 32×32 images, so the
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

import torch

from ltlib.data import DeviceBatches, ImageSplit, long_tailed_counts
from ltlib.methods import build_method
from ltlib.models import resnet32
from ltlib.paths import ROOT
from ltlib.records import provenance, write_json

METHODS = ("ce", "difficulty_net_as_released", "difficulty_net")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_split(count: int, num_classes: int, generator: torch.Generator) -> ImageSplit:
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(count) % num_classes  # balanced, as the validation split of the CDB protocol
    return ImageSplit(images, labels)


def step_times(name: str, args, device: torch.device, train: DeviceBatches, val: DeviceBatches) -> list[float]:
    torch.manual_seed(0)
    counts = long_tailed_counts(500, args.classes, 100)  # only the loss's class statistics; the data is random
    options = {} if name == "ce" else {"meta_batch_size": args.meta_batch_size}
    method = build_method(name, counts, **options)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = resnet32(args.classes).to(device, memory_format=memory_format).train()
    method.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    method.attach(train=train, val=val, generator=generator, config=None)
    method.current_lr = 0.1
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)

    def batches():
        while True:
            yield from train.epoch(args.batch_size, generator, drop_last=True)

    times = []
    for step, (images, labels) in zip(range(args.warmup + args.steps), batches()):
        synchronize(device)
        started = time.perf_counter()
        loss, _ = method.compute_loss(model, images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
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
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default results/benchmarks/meta_step-<device>.json)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data_generator = torch.Generator().manual_seed(0)
    train_split = random_split(args.batch_size * 4, args.classes, data_generator)
    val_split = random_split(100 * args.classes, args.classes, data_generator)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    train = DeviceBatches(train_split, mean, std, device, crop_padding=4, flip=True, channels_last=args.channels_last)
    val = DeviceBatches(val_split, mean, std, device, channels_last=args.channels_last)

    result = {"model": "resnet32", "classes": args.classes, "batch_size": args.batch_size,
              "meta_batch_size": args.meta_batch_size, "steps": args.steps, "warmup": args.warmup,
              "threads": torch.get_num_threads(), "device": args.device, "channels_last": args.channels_last,
              "step_s": {}, "median_step_s": {}, "ratio_to_plain": {},
              # glibc allocator settings (the Makefile sets them); they change the timings, not the results
              "malloc_env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}}
    for name in METHODS:
        times = step_times(name, args, device, train, val)
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
