"""Throughput of ltlib's device-resident data path against a torchvision DataLoader pipeline.

Both feed the same model (ResNet-32 by default) the same long-tailed CIFAR-10 training split with
the same augmentation (random crop with padding 4, horizontal flip, normalisation):

* ``device``:     one uint8 tensor on the training device, crop/flip/normalise there per batch;
* ``dataloader``: a Dataset of PIL images, per-image torchvision transforms, DataLoader workers.

Printed: images per second for the data path alone and for full training steps, seconds per epoch
of the training split, and the ratio device / dataloader. Results go to
``results/benchmarks/throughput-<device>.json`` with provenance. This is a benchmark, not a test.

    python benchmarks/throughput.py                    # cifar10-jpeg from $LTLIB_DATA, CPU
    python benchmarks/throughput.py --device cuda      # on a GPU
    python benchmarks/throughput.py --source digits --model small_cnn
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from ltlib.data import DeviceBatches, load_long_tailed
from ltlib.io import write_json
from ltlib.models import build_model
from ltlib.paths import ROOT
from ltlib.provenance import provenance


class PILDataset(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        from PIL import Image

        array = images.permute(0, 2, 3, 1).numpy()
        self.images = [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in array]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(batches, steps: int, warmup: int, step_fn, device) -> float:
    """Images per second over ``steps`` batches after ``warmup`` batches."""
    iterator = iter(batches)
    for _ in range(warmup):
        step_fn(*next(iterator))
    synchronize(device)
    started, seen = time.perf_counter(), 0
    for _ in range(steps):
        images, labels = next(iterator)
        step_fn(images, labels)
        seen += labels.shape[0]
    synchronize(device)
    return seen / (time.perf_counter() - started)


def endless(make_epoch):
    while True:
        yield from make_epoch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="cifar10-jpeg")
    parser.add_argument("--imbalance", type=float, default=100)
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    data = load_long_tailed(args.source, args.imbalance, "ldam")
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = build_model(args.model, data.num_classes, in_channels=data.train.images.shape[1]).to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def train_step(images, labels):
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def data_only(images, labels):
        images.to(device, non_blocking=True)

    device_batches = DeviceBatches(data.train, data.mean, data.std, device, data.crop_padding, data.flip,
                                   args.channels_last)
    generator = torch.Generator(device=device).manual_seed(0)

    from torchvision import transforms

    augment = [transforms.RandomCrop(data.train.images.shape[-1], padding=data.crop_padding)]
    if data.flip:
        augment.append(transforms.RandomHorizontalFlip())
    transform = transforms.Compose(augment + [transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])
    loader = torch.utils.data.DataLoader(PILDataset(data.train.images, data.train.labels, transform),
                                         batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                         pin_memory=device.type == "cuda", drop_last=True,
                                         persistent_workers=args.workers > 0)

    paths = {"device": lambda: endless(lambda: device_batches.epoch(args.batch_size, generator, drop_last=True)),
             "dataloader": lambda: endless(lambda: iter(loader))}
    result = {"source": args.source, "model": args.model, "batch_size": args.batch_size, "steps": args.steps,
              "workers": args.workers, "device": args.device, "channels_last": args.channels_last,
              "train_images": len(data.train), "threads": torch.get_num_threads()}
    for name, make in paths.items():
        model.train()
        data_rate = measure(make(), args.steps * 3, args.warmup, data_only, device)
        step_rate = measure(make(), args.steps, args.warmup, train_step, device)
        result[name] = {"data_images_per_s": round(data_rate, 1), "train_images_per_s": round(step_rate, 1),
                        "train_s_per_epoch": round(len(data.train) / step_rate, 2)}
        print(f"{name:>10}: data path {data_rate:10.1f} img/s | training {step_rate:8.1f} img/s "
              f"= {len(data.train) / step_rate:7.1f} s/epoch")
    result["ratio_data"] = round(result["device"]["data_images_per_s"] / result["dataloader"]["data_images_per_s"], 2)
    result["ratio_train"] = round(result["device"]["train_images_per_s"] / result["dataloader"]["train_images_per_s"], 2)
    print(f"ratio device / dataloader: data path {result['ratio_data']}x, training {result['ratio_train']}x")
    out = ROOT / "results" / "benchmarks" / f"throughput-{device.type}.json"
    write_json(out, {**result, **provenance(args.device)})
    print("wrote", out.relative_to(ROOT))


if __name__ == "__main__":
    main()
