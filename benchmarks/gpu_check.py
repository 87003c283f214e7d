"""The GPU checks, in one run that fits in about 8 minutes on one H100/H200-class GPU; JSON to --out.

1. CUDA unit checks: Difficulty-Net's exact meta-gradient on CUDA against the ``create_graph`` form (float64), a
   bf16-autocast training step against fp32, and ``deterministic=True`` giving identical numbers twice;
2. throughput of the plain step (eager, ``torch.compile`` default and reduce-overhead / CUDA graphs) and of the
   meta step (exact and as released), ResNet-32 batch 128;
3. the wall time of a full 200-epoch CIFAR-10-LT cross-entropy run (LDAM-DRW recipe) on the carried data
   (``--prepare`` writes ``.gpu_carry/cifar10-lt.npz`` from ``$LTLIB_DATA/cifar10-jpeg``: the IF-100 training split,
   the validation split and 2,000 test images; random images of the same sizes when it is absent, said in the JSON);
4. how many concurrent runs one GPU holds: N processes training side by side, images per second per run.

    python benchmarks/gpu_check.py --prepare            # on the CPU machine, before carrying .gpu_carry
    bash benchmarks/gpu_check.sh                        # on the GPU machine
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".gpu_carry" / "cifar10-lt.npz"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def prepare() -> None:
    from ltlib.data import load_long_tailed
    from ltlib.io import atomic_write_bytes

    data = load_long_tailed("cifar10-jpeg", 100, "ldam")
    keep = np.concatenate([np.flatnonzero(data.test.labels.numpy() == c)[:200] for c in range(10)])
    arrays = {"train_x": data.train.images.numpy(), "train_y": data.train.labels.numpy(),
              "val_x": data.val.images.numpy(), "val_y": data.val.labels.numpy(),
              "test_x": data.test.images.numpy()[keep], "test_y": data.test.labels.numpy()[keep]}
    atomic_write_bytes(CARRY, lambda fh: np.savez_compressed(fh, **arrays))
    print("wrote", CARRY, f"{CARRY.stat().st_size / 1e6:.1f} MB")


def carried_data():
    from ltlib.data import ImageSplit, LongTailedData

    if CARRY.exists():
        z = np.load(CARRY)
        split = {n: ImageSplit(torch.from_numpy(z[f"{n}_x"]), torch.from_numpy(z[f"{n}_y"])) for n in ("train", "val", "test")}
        described = "cifar10-jpeg LT IF 100 (ldam), 2,000 test images (carried)"
    else:
        g = torch.Generator().manual_seed(0)
        sizes = {"train": 12381, "val": 250, "test": 2000}
        split = {n: ImageSplit(torch.randint(0, 256, (k, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(k) % 10)
                 for n, k in sizes.items()}
        described = "random images of the CIFAR-10-LT sizes (no carried data)"
    data = LongTailedData("cifar10-jpeg", "ldam", 100.0, "exp", [str(c) for c in range(10)], split["train"], split["val"],
                          split["test"], (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), True, 4,
                          np.arange(len(split["train"])), np.arange(len(split["val"])))
    return data, described


def unit_checks() -> dict:
    from test_difficulty_net import create_graph_meta_gradient, float64_method, random_batches, tiny_mlp

    out = {}
    model = tiny_mlp(4).cuda()
    images, targets, meta_images, meta_targets = (t.cuda() for t in random_batches(seed=1))
    method = float64_method(4, driver_weight=0.0).to("cuda")
    method.net.double()
    reference = create_graph_meta_gradient(method, model, images, targets, meta_images, meta_targets, 0.5, False)
    ours = method.meta_gradient(model, images, targets, meta_images, meta_targets, lr=0.5).gradients
    out["meta_gradient_max_relative_error"] = max(float((a - b).norm() / b.norm()) for a, b in zip(ours, reference))
    out["meta_gradient_ok"] = out["meta_gradient_max_relative_error"] < 1e-6

    from ltlib.methods import build_method
    from ltlib.models import resnet32
    from ltlib.train import TrainConfig, Trainer

    data, _ = carried_data()
    losses = {}
    for amp in (False, True):
        torch.manual_seed(0)
        trainer = Trainer(resnet32(10), build_method("ce", data.train_counts), data,
                          TrainConfig(epochs=1, amp=amp, channels_last=True, warmup_epochs=0, milestones=()), device="cuda")
        trainer.set_epoch(0)
        batches = trainer.batches["train"].epoch(128, trainer.generator)
        losses[amp] = [float(trainer.step(*next(batches))[0]) for _ in range(5)]
    out["bf16_losses"], out["fp32_losses"] = losses[True], losses[False]
    out["bf16_ok"] = all(np.isfinite(losses[True])) and abs(losses[True][0] - losses[False][0]) < 0.05

    from ltlib.experiment import DataSpec, RunSpec, train_entry
    from ltlib.methods import MethodRef

    spec = RunSpec(DataSpec("digits", 10.0, "ldam"), "small_cnn", MethodRef.parse("ce"),
                   TrainConfig(epochs=2, batch_size=64, lr=0.05, milestones=(), warmup_epochs=0, deterministic=True),
                   0, "cuda")
    first, second = (train_entry(spec, progress=False)["result"] for _ in range(2))
    out["deterministic_identical"] = first["history"] == second["history"] and first["confusion"] == second["confusion"]
    return out


def step_rate(name: str, compile_mode: str = "none", amp: bool = False, steps: int = 30, batch: int = 128) -> float:
    from ltlib.methods import build_method
    from ltlib.models import resnet32
    from ltlib.train import TrainConfig, Trainer

    data, _ = carried_data()
    torch.manual_seed(0)
    trainer = Trainer(resnet32(10), build_method(name, data.train_counts), data,
                      TrainConfig(epochs=1, batch_size=batch, amp=amp, channels_last=True, warmup_epochs=0, milestones=(),
                                  compile=compile_mode), device="cuda")
    trainer.set_epoch(0)
    trainer.model.train()

    def batches():
        while True:
            yield from trainer.batches["train"].epoch(batch, trainer.generator, drop_last=True)
    iterator = batches()
    for _ in range(10):  # warm-up (and compilation)
        trainer.step(*next(iterator))
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        trainer.step(*next(iterator))
    torch.cuda.synchronize()
    return round(steps * batch / (time.perf_counter() - started), 1)


def full_run(epochs: int = 200) -> dict:
    from ltlib.methods import build_method
    from ltlib.models import resnet32
    from ltlib.train import TrainConfig, fit

    data, described = carried_data()
    torch.manual_seed(0)
    config = TrainConfig(epochs=epochs, test_every=10, channels_last=True)  # the LDAM-DRW recipe
    started = time.perf_counter()
    result = fit(resnet32(10), build_method("ce", data.train_counts), data, config, device="cuda", progress=False)
    wall = time.perf_counter() - started
    top1 = 100.0 * np.trace(result.confusion_best) / result.confusion_best.sum()
    return {"epochs": epochs, "data": described, "wall_s": round(wall, 1), "test_top1_val_selected": round(float(top1), 2)}


def _worker(seconds: float, queue) -> None:
    queue.put(step_rate("ce", steps=max(10, int(seconds * 20))))


def concurrency(counts=(1, 2, 4, 8)) -> dict:
    context = multiprocessing.get_context("spawn")
    out = {}
    for n in counts:
        queue = context.Queue()
        workers = [context.Process(target=_worker, args=(10.0, queue)) for _ in range(n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(300)
        rates = [queue.get() for _ in range(n)]
        out[str(n)] = {"img_per_s_per_run": round(statistics.mean(rates), 1), "total_img_per_s": round(sum(rates), 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", action="store_true", help="write the carried data and stop (CPU machine)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "gpu_check.json")
    parser.add_argument("--epochs", type=int, default=200)
    args = parser.parse_args()
    if args.prepare:
        prepare()
        return
    from ltlib.provenance import provenance

    report: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"}
    sections = [("unit", unit_checks),
                ("throughput", lambda: {"plain_eager": step_rate("ce"), "plain_eager_bf16": step_rate("ce", amp=True),
                                        "plain_compiled": step_rate("ce", "default"),
                                        "plain_cuda_graphs": step_rate("ce", "reduce-overhead"),
                                        "meta_exact_eager": step_rate("difficulty_net", steps=10),
                                        "meta_as_released_eager": step_rate("difficulty_net_as_released")}),
                ("full_run", lambda: full_run(args.epochs)), ("concurrency", concurrency)]
    for name, section in sections:
        started = time.perf_counter()
        try:
            report[name] = section()
        except Exception:  # one failing section must not cost the others
            report[name] = {"error": traceback.format_exc(limit=3)}
        report.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 1)
        print(name, json.dumps(report[name]), flush=True)
    from ltlib.io import write_json

    write_json(args.out, {**report, **provenance("cuda" if torch.cuda.is_available() else "cpu")})
    print("wrote", args.out)


if __name__ == "__main__":
    os.environ.setdefault("LTLIB_CACHE", "/tmp/ltlib-cache")
    main()
