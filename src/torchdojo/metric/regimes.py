"""The three training regimes of MISSION E1, E2 and E4 on the same backbone, data and seed.

- E1 `train_e1`: cross-entropy end to end.
- E2 `train_e2`: triplet loss on the feature extractor (no FC layer), then the extractor frozen and
  only the FC head trained with cross-entropy (`fit_head_frozen`).
- E4 `train_e4`: L = L_triplet + lam * L_CE on the whole model at once.
Every step sees `batch_size` images (E2/E4: batch_size // 3 triplets) and every epoch about as many
images as the training set, so epochs and seconds compare across regimes.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from torchdojo.config import TrainConfig
from torchdojo.data.augment import Aug
from torchdojo.data.base import ImageData
from torchdojo.data.loader import TensorBatches
from torchdojo.engine import Batches, LossFn, cross_entropy, fit
from torchdojo.metric.losses import TripletObjective, head_only_cross_entropy
from torchdojo.metric.miners import Miner
from torchdojo.metric.monitor import RepresentationMonitor
from torchdojo.metric.triplets import TripletBatches, TripletDataset
from torchdojo.runs import Run, load_checkpoint


@dataclasses.dataclass
class Setup:
    """What every regime shares: the splits (on the device), normalisation, augmentation, run folder."""

    train: ImageData
    val: ImageData
    mean: Sequence[float]
    std: Sequence[float]
    device: torch.device
    seed: int = 0
    augment: Aug | None = None
    run: Run | None = None
    resume: bool = False
    verbose: bool = True
    size: int | None = None  # input resize (pretrained backbones); None = native
    channels: int | None = None  # grayscale expanded to this many channels; None = as stored

    def batches(self, data: ImageData, batch_size: int, train: bool) -> TensorBatches:
        return TensorBatches(
            data,
            batch_size,
            self.mean,
            self.std,
            shuffle=train,
            seed=self.seed,
            augment=self.augment if train else None,
            size=self.size,
            channels=self.channels,
        )

    def triplet_batches(self, data: ImageData, batch_size: int, train: bool) -> TripletBatches:
        # validation triplets come from their own seed and stay the same every epoch
        seed = self.seed if train else self.seed + 1
        return TripletBatches(
            TripletDataset(data, seed),
            batch_size,
            self.mean,
            self.std,
            seed=seed,
            augment=self.augment if train else None,
            fixed_epoch=None if train else 0,
            size=self.size,
            channels=self.channels,
        )


@dataclasses.dataclass
class RegimeResult:
    """A trained regime: its model (best weights), the history of each stage, its monitor."""

    name: str
    model: nn.Module
    stages: dict[str, list[dict[str, Any]]]
    monitor: RepresentationMonitor

    @property
    def train_seconds(self) -> float:
        return sum(r["seconds"] for rows in self.stages.values() for r in rows)


def _fit(
    model: nn.Module,
    train: Batches,
    val: Batches,
    tcfg: TrainConfig,
    setup: Setup,
    stage: str,
    monitor: RepresentationMonitor | None = None,
    **kw: Any,
) -> list[dict[str, Any]]:
    """`fit` with the run folder; a monitor measures epoch 0 first (or is restored on resume)."""
    if monitor is not None:
        last = setup.run.checkpoint_dir(stage) / "last.pt" if setup.run is not None else None
        if setup.resume and monitor.load() and last is not None and last.exists():
            monitor.truncate(int(load_checkpoint(last)["epoch"]))
        if not monitor.rows:
            monitor.measure(0, model)
    result = fit(
        model,
        train,
        val,
        tcfg,
        device=setup.device,
        stage=stage,
        run=setup.run,
        resume=setup.resume,
        callbacks=[monitor] if monitor is not None else (),
        verbose=setup.verbose,
        **kw,
    )
    return result.history


def train_e1(model: nn.Module, setup: Setup, tcfg: TrainConfig, monitor: RepresentationMonitor) -> RegimeResult:
    """E1: cross-entropy on the whole model."""
    hist = _fit(
        model,
        setup.batches(setup.train, tcfg.batch_size, True),
        setup.batches(setup.val, tcfg.eval_batch_size, False),
        tcfg,
        setup,
        "e1",
        monitor,
    )
    return RegimeResult("e1", model, {"e1": hist}, monitor)


def freeze_features(model: nn.Module) -> list[nn.Parameter]:
    """Turn off autograd for `model.features`; returns the head's parameters (what stays trainable)."""
    for p in model.features.parameters():
        p.requires_grad_(False)
    return list(model.head.parameters())


def fit_head_frozen(
    model: nn.Module, train: Batches, val: Batches, tcfg: TrainConfig, setup: Setup, stage: str = "e2-head"
) -> list[dict[str, Any]]:
    """E2 stage 2: cross-entropy on the FC head only; the extractor is frozen (no grad, eval-mode BN)."""
    params = freeze_features(model)
    return _fit(model, train, val, tcfg, setup, stage, params=params, loss_fn=head_only_cross_entropy)


def _fit_triplet(
    model: nn.Module,
    setup: Setup,
    tcfg: TrainConfig,
    stage: str,
    objective: TripletObjective,
    monitor: RepresentationMonitor,
    val: Batches,
    val_loss_fn: LossFn,
) -> list[dict[str, Any]]:
    """E2 stage 1 and E4: `objective` on the training set's triplet batches (its per-epoch parts go to the
    monitor's table), validated on `val` with `val_loss_fn`."""
    monitor.objective = objective
    return _fit(
        model,
        setup.triplet_batches(setup.train, tcfg.batch_size, True),
        val,
        tcfg,
        setup,
        stage,
        monitor,
        loss_fn=objective,
        val_loss_fn=val_loss_fn,
    )


def train_e2(
    model: nn.Module,
    setup: Setup,
    tcfg: TrainConfig,
    head_cfg: TrainConfig,
    margin: float,
    miner: Miner | None,
    monitor: RepresentationMonitor,
) -> RegimeResult:
    """E2: triplet loss on the extractor (best epoch by validation nearest-centroid accuracy), then the head."""
    # validation: fixed triplets (eval_batch_size // 3 per batch), the plain triplet loss, and the
    # nearest-centroid accuracy (no head yet)
    val = setup.triplet_batches(setup.val, tcfg.eval_batch_size, False)
    hist1 = _fit_triplet(
        model, setup, tcfg, "e2-triplet", TripletObjective(margin, miner), monitor, val, TripletObjective(margin, None)
    )
    hist2 = fit_head_frozen(
        model,
        setup.batches(setup.train, head_cfg.batch_size, True),
        setup.batches(setup.val, head_cfg.eval_batch_size, False),
        head_cfg,
        setup,
    )
    return RegimeResult("e2", model, {"e2-triplet": hist1, "e2-head": hist2}, monitor)


def train_e4(
    model: nn.Module,
    setup: Setup,
    tcfg: TrainConfig,
    margin: float,
    miner: Miner | None,
    ce_weight: float,
    monitor: RepresentationMonitor,
) -> RegimeResult:
    """E4: triplet + ce_weight * cross-entropy, whole model, one stage; validation loss is the CE part."""
    val = setup.batches(setup.val, tcfg.eval_batch_size, False)
    hist = _fit_triplet(
        model, setup, tcfg, "e4", TripletObjective(margin, miner, ce_weight=ce_weight), monitor, val, cross_entropy()
    )
    return RegimeResult("e4", model, {"e4": hist}, monitor)


def classifier_epochs_to(result: RegimeResult, target: float) -> tuple[int | None, float | None]:
    """Epochs (all stages counted) and training seconds until the classifier's val_acc >= target."""
    epochs, seconds = 0, 0.0
    for rows in result.stages.values():
        for r in rows:
            epochs += 1
            seconds += r["seconds"]
            if r.get("val_acc", 0.0) >= target and (r.get("stage") != "e2-triplet"):
                return epochs, seconds
    return None, None
