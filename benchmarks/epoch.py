"""Seconds per cpu-real epoch: the way ltlib trained before (fp32, the test split after every epoch at evaluation
batch 1000) against the way it trains now (bfloat16 autocast, the validation split every epoch and the test split
only where a number is reported, at the evaluation batch chosen per device), in one run.

The data are the cpu-real ones (CIFAR-10-LT JPEG, IF 100, ldam protocol, 12,381 training images, 250 validation and
10,000 test images; random images of the same sizes if ``$LTLIB_DATA/cifar10-jpeg`` is absent, said in the output).
An epoch's cost is measured in its parts on the same machine, one after the other: the median ResNet-32 training
step (``Trainer.step``, batch 128, channels-last) times the steps per epoch, plus the evaluations that epoch runs.
"new" counts the test evaluations of a cpu-real run (``epochs`` and ``test_every`` of
``params/cpu-real/01_baselines.yaml``: every ``test_every``-th epoch, the last, and the validation-selected one)
spread over its epochs; "new, compiled" is the same with the opt-in
``torch.compile`` step, timed after its compilation and warm-up (reported separately, paid once per run). Results go to
``results/benchmarks/epoch-<device>.json`` with provenance. A benchmark, not a test: run it on an idle machine.

    make benchmark                          # 2 threads, then 1 thread (the sweep runs two 1-thread runs side by side)
    python benchmarks/epoch.py --steps 5    # does it run?
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ltlib.data import ImageSplit, LongTailedData
from ltlib.io import write_json
from ltlib.methods import build_method
from ltlib.metrics import confusion_matrix
from ltlib.models import resnet32
from ltlib.notebook import read_params_file
from ltlib.paths import ROOT
from ltlib.provenance import provenance
from ltlib.runtime import autocast, eval_batch_size
from ltlib.train import TrainConfig, Trainer

_CPU_REAL = read_params_file(ROOT / "params" / "cpu-real" / "01_baselines.yaml")
EPOCHS, TEST_EVERY = int(_CPU_REAL["epochs"]), int(_CPU_REAL["test_every"])


def cpu_real_data() -> tuple[LongTailedData, str]:
    from ltlib.data import DataNotFoundError, load_long_tailed

    try:
        return load_long_tailed("cifar10-jpeg", 100, "ldam"), "cifar10-jpeg LT IF 100 (ldam)"
    except DataNotFoundError:
        generator = torch.Generator().manual_seed(0)

        def split(n):
            return ImageSplit(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator),
                              torch.arange(n) % 10)
        data = LongTailedData("random", "ldam", 100.0, "exp", [str(c) for c in range(10)], split(12381), split(250),
                              split(10000), (0.49, 0.48, 0.45), (0.2, 0.2, 0.2), True, 4, np.arange(12381),
                              np.arange(250))
        return data, "random images of the cpu-real sizes (cifar10-jpeg not found under $LTLIB_DATA)"


def eval_seconds(trainer: Trainer, split: str, batch_size: int, amp: bool) -> float:
    batches, model = trainer.batches[split], trainer.model
    model.eval()
    started = time.perf_counter()
    with torch.no_grad(), autocast(trainer.device, amp):
        for images, labels in batches.sequential(batch_size):
            confusion_matrix(model(images).argmax(1), labels, 10)
    return time.perf_counter() - started


def epoch_cost(data: LongTailedData, amp: bool, steps: int, eval_batch: int, tests_per_epoch: float,
               compile_mode: str = "none") -> dict:
    torch.manual_seed(0)
    config = TrainConfig(epochs=EPOCHS, batch_size=128, lr=0.1, warmup_epochs=0, milestones=(), amp=amp,
                         channels_last=True, compile=compile_mode)
    trainer = Trainer(resnet32(10), build_method("ce", data.train_counts), data, config, device="cpu", seed=0)
    trainer.set_epoch(0)
    trainer.model.train()
    iterator = trainer.batches["train"].epoch(128, trainer.generator, drop_last=True)
    warmup = 2 if compile_mode == "none" else 30  # a compiled step settles after its first few dozen calls
    times, started_all = [], time.perf_counter()
    for step, (images, labels) in zip(range(steps + warmup), iterator):
        started = time.perf_counter()
        trainer.step(images, labels)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    warmup_s = time.perf_counter() - started_all - sum(times)
    per_step = statistics.median(times)
    steps_per_epoch = -(-len(data.train) // 128)
    val = eval_seconds(trainer, "val", eval_batch, amp)
    test = eval_seconds(trainer, "test", eval_batch, amp)
    train = per_step * steps_per_epoch
    return {"step_s": round(per_step, 4), "train_s": round(train, 2), "val_eval_s": round(val, 2),
            "warmup_s": round(warmup_s, 1), "compile": compile_mode,
            "test_eval_s": round(test, 2), "tests_per_epoch": tests_per_epoch, "eval_batch": eval_batch,
            "epoch_s": round(train + val + tests_per_epoch * test, 2), "train_img_per_s": round(128 / per_step, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per configuration")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the torch.compile step (--no-compile: skip it, e.g. where bf16 is emulated "
                        "and its warm-up alone takes minutes)")
    args = parser.parse_args()
    data, described = cpu_real_data()
    # every test_every-th epoch, the last (if not among them) and the validation-selected one
    new_tests = (EPOCHS // TEST_EVERY + (EPOCHS % TEST_EVERY != 0) + 1) / EPOCHS
    result = {"data": described, "epochs": EPOCHS, "test_every": TEST_EVERY, "by_threads": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        old = epoch_cost(data, amp=False, steps=args.steps, eval_batch=1000, tests_per_epoch=1.0)
        new = epoch_cost(data, amp=True, steps=args.steps, eval_batch=eval_batch_size(torch.device("cpu")),
                         tests_per_epoch=new_tests)
        ratio = old["epoch_s"] / new["epoch_s"]
        entry = result["by_threads"][str(threads)] = {"old": old, "new": new, "ratio": round(ratio, 2)}
        line = (f"{threads} thread(s): old {old['epoch_s']:.1f} s/epoch (train {old['train_s']:.1f} + val "
                f"{old['val_eval_s']:.1f} + test {old['test_eval_s']:.1f}), new {new['epoch_s']:.1f} s/epoch (train "
                f"{new['train_s']:.1f} + val {new['val_eval_s']:.1f} + {new_tests:.2f} x test {new['test_eval_s']:.1f}): "
                f"{ratio:.2f}x")
        if args.compile:
            compiled = epoch_cost(data, amp=True, steps=args.steps, eval_batch=eval_batch_size(torch.device("cpu")),
                                  tests_per_epoch=new_tests, compile_mode="default")
            entry.update(new_compiled=compiled, ratio_compiled=round(old["epoch_s"] / compiled["epoch_s"], 2))
            line += (f"; compiled (steady state, after {compiled['warmup_s']:.0f} s of compilation and warm-up): "
                     f"{compiled['epoch_s']:.1f} s/epoch, {old['epoch_s'] / compiled['epoch_s']:.2f}x")
        print(line, flush=True)
    out = args.out or ROOT / "results" / "benchmarks" / "epoch-cpu.json"
    write_json(out, {**result, **provenance("cpu")})
    print("wrote", out)


if __name__ == "__main__":
    main()
