"""Benchmark: training and evaluation throughput (images/s) of the engine's fast path, on CPU and on CUDA.

Models: the ladder's CNN on 1x28x28 images, and a transfer-learning backbone (torchvision ResNet-18, new
10-class head, fine-tuned end to end) fed 3x32x32 images resized to 224x224 on the device, as the
transfer experiments do. Data are uint8 tensors resident on the device, augmented there in batches
(crop + flip), channels_last; on CUDA bf16 autocast (and, with --compile, torch.compile).

With --fashion-mnist it also trains the ladder CNN on Fashion-MNIST (60,000 training images; the test
set is evaluated after every epoch) and prints seconds per epoch and the training seconds until the
test accuracy first reaches --target (0.93 by default; evaluation time is not counted).

usage: python benchmarks/bench_throughput.py [--device auto|cpu|cuda|all] [--steps 20] [--compile]
                                             [--fashion-mnist] [--epochs 12] [--target 0.93]
"""

import argparse
import json
import time

import torch

from torchdojo.config import TrainConfig
from torchdojo.data import ImageData, load_dataset
from torchdojo.data.augment import build_augment
from torchdojo.data.loader import TensorBatches
from torchdojo.engine import evaluate, fit, keep_freed_memory
from torchdojo.models import build_model

LADDER_CNN = {"channels": (32, 64), "fc": (256, 128), "dropout": 0.3}  # the ladder's `cnn` rung


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resnet18(num_classes: int = 10) -> torch.nn.Module:
    import torchvision

    net = torchvision.models.resnet18(weights=None)  # throughput does not depend on the weights' values
    net.fc = torch.nn.Linear(net.fc.in_features, num_classes)
    return net


def throughput(name: str, device: torch.device, steps: int, batch: int, compile_: bool) -> dict:
    """Images/s of `steps` training steps (after a warm-up epoch) and of evaluation, for one model."""
    torch.manual_seed(0)
    if name == "ladder-cnn":
        shape, size = (1, 28, 28), None
        model = build_model("cnn", shape, 10, **LADDER_CNN)
    else:
        shape, size = (3, 32, 32), 224
        model = _resnet18()
    model = model.to(device)
    n = steps * batch
    data = ImageData(
        torch.randint(0, 256, (n, *shape), dtype=torch.uint8), torch.randint(0, 10, (n,)), [str(i) for i in range(10)]
    ).to(device)
    mean, std = (0.5,) * shape[0], (0.25,) * shape[0]
    train = TensorBatches(
        data, batch, mean, std, shuffle=True, augment=build_augment(["crop", "flip"], 2), size=size, channels_last=True
    )
    cfg = TrainConfig(epochs=2, batch_size=batch, optimizer="adamw", lr=1e-3, compile=compile_)
    history = fit(model, train, None, cfg, device=device, verbose=False).history  # epoch 1 warms up
    train_ips = n / history[-1]["seconds"]

    test = TensorBatches(data, batch, mean, std, size=size, channels_last=True)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    evaluate(model, test, device=device, max_batches=2, autocast_dtype=autocast, channels_last=True)  # warm-up
    _sync(device)
    t = time.perf_counter()
    evaluate(model, test, device=device, autocast_dtype=autocast, channels_last=True)
    _sync(device)
    eval_ips = n / (time.perf_counter() - t)
    return {
        "model": name,
        "device": device_name(device),
        "batch": batch,
        "train_img_s": round(train_ips, 1),
        "eval_img_s": round(eval_ips, 1),
        "amp": "bf16" if device.type == "cuda" else "fp32",
        "compile": compile_,
    }


def fashion_mnist(
    device: torch.device,
    epochs: int,
    batch: int,
    target: float,
    compile_: bool,
    model_kw: dict | None = None,
    lr: float = 3e-3,
) -> dict:
    """Seconds per Fashion-MNIST epoch of a CNN (the ladder's by default), and training seconds to `target`."""
    model_kw = model_kw or LADDER_CNN
    data = load_dataset("fashion-mnist")
    mean, std = data.mean_std()
    train, test = data.train.to(device), data.test.to(device)  # uint8, resident: 47 MB for 60,000 images
    torch.manual_seed(0)
    model = build_model("cnn", data.train.shape, 10, **model_kw).to(device)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch,
        eval_batch_size=2048,
        optimizer="adamw",
        lr=lr,
        weight_decay=5e-4,
        schedule="onecycle",
        label_smoothing=0.1,
        compile=compile_,
    )
    batches = TensorBatches(
        train,
        batch,
        mean,
        std,
        shuffle=True,
        augment=build_augment(["crop", "flip"], 2),
        channels_last=True,
        drop_last=True,
    )  # one batch shape: cuDNN autotunes once
    result = fit(
        model, batches, TensorBatches(test, 2048, mean, std, channels_last=True), cfg, device=device, verbose=False
    )
    elapsed, reached = 0.0, None
    for row in result.history:
        elapsed += row["seconds"]
        if reached is None and row["val_acc"] >= target:
            reached = {"epoch": row["epoch"], "train_seconds": round(elapsed, 2), "test_acc": row["val_acc"]}
    secs = [r["seconds"] for r in result.history]
    return {
        "device": device_name(device),
        "model": model_kw,
        "epochs": epochs,
        "batch": batch,
        "lr": lr,
        "compile": compile_,
        "first_epoch_s": round(secs[0], 2),
        "epoch_s": round(min(secs[1:] or secs), 2),
        "train_img_s": round(len(train) / min(secs[1:] or secs), 1),
        "final_test_acc": result.history[-1]["val_acc"],
        "best_test_acc": result.best_value,
        f"reached_{target}": reached,
        "total_train_s": round(sum(secs), 2),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def main() -> None:
    keep_freed_memory()  # as the CLI does (fit itself leaves the process allocator alone)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="all", help="all (cpu, and cuda when present), cpu or cuda")
    p.add_argument("--steps", type=int, default=0, help="timed training steps per model (0: 20 on CUDA, 4 on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--fashion-mnist", action="store_true", help="also time Fashion-MNIST epochs and time to target")
    p.add_argument("--epochs", type=int, default=12, help="Fashion-MNIST epochs (one-cycle schedule over them)")
    p.add_argument("--batch", type=int, default=256, help="Fashion-MNIST batch size")
    p.add_argument("--target", type=float, default=0.93, help="Fashion-MNIST test accuracy to reach")
    p.add_argument("--lr", type=float, default=3e-3, help="Fashion-MNIST peak learning rate (AdamW, one-cycle)")
    p.add_argument("--channels", default="32,64", help="Fashion-MNIST CNN: channels per block (the ladder's: 32,64)")
    p.add_argument("--convs-per-block", type=int, default=1, help="Fashion-MNIST CNN: convolutions per block")
    p.add_argument("--skip-throughput", action="store_true", help="only the Fashion-MNIST run")
    args = p.parse_args()
    model_kw = {
        **LADDER_CNN,
        "channels": tuple(int(c) for c in args.channels.split(",")),
        "convs_per_block": args.convs_per_block,
    }
    if args.device == "all":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(args.device)]
    for dev in devices:
        if not args.skip_throughput:
            cuda = dev.type == "cuda"
            steps = args.steps or (20 if cuda else 4)
            for name, batch in (("ladder-cnn", 512 if cuda else 256), ("resnet18-224", 128 if cuda else 16)):
                print(json.dumps(throughput(name, dev, steps, batch, args.compile)), flush=True)
        if args.fashion_mnist:
            print(
                json.dumps(fashion_mnist(dev, args.epochs, args.batch, args.target, args.compile, model_kw, args.lr)),
                flush=True,
            )


if __name__ == "__main__":
    main()
