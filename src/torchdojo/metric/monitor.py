"""An epoch callback that watches the representation while a model trains (it never changes the maths):
kNN validation accuracy of the embedding, its spread (collapse), the Fisher ratio of each main layer's
pooled features, and feature-map snapshots of fixed inputs at chosen epochs. Its state is saved in the
run folder after every epoch, so a resumed run keeps the epochs it already measured.
"""

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchdojo.data.base import ImageData
from torchdojo.metric import featuremaps
from torchdojo.metric.collapse import CollapseDetector
from torchdojo.metric.losses import TripletObjective
from torchdojo.metric.probes import embed, fisher_ratio, knn_accuracy, mean_pairwise_distance
from torchdojo.runs import atomic_torch_save, load_checkpoint


@dataclasses.dataclass
class Probe:
    """What the monitor measures on: a kNN reference set, the validation set, and normalisation."""

    ref: ImageData  # labelled reference embeddings for the kNN vote (a training subset)
    val: ImageData
    mean: Sequence[float]
    std: Sequence[float]
    device: torch.device
    knn_k: int = 5
    size: int | None = None  # input resize (pretrained backbones)
    channels: int | None = None


class RepresentationMonitor:
    """Callback `(epoch, row, model)`; call `measure(0, model)` before training for the initial state."""

    def __init__(
        self,
        probe: Probe,
        layers: dict[str, nn.Module],
        fm_inputs: torch.Tensor,  # normalised fixed inputs (N, C, H, W) for the feature maps
        fm_epochs: Sequence[int],
        detector: CollapseDetector,
        objective: TripletObjective | None = None,
        channels: int = 8,
        state_path: Path | None = None,
    ):
        self.probe, self.layers, self.fm_inputs = probe, layers, fm_inputs
        self.fm_epochs, self.detector, self.objective = set(fm_epochs), detector, objective
        self.channels, self.state_path = channels, state_path
        self.rows: list[dict[str, Any]] = []
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def measure(self, epoch: int, model: nn.Module, seconds: float = 0.0) -> dict[str, Any]:
        """Measure the model now and record it as `epoch` (0 = before training)."""
        p = self.probe
        was = model.training
        ref = embed(model, p.ref, p.mean, p.std, device=p.device, size=p.size, channels=p.channels)
        val = embed(model, p.val, p.mean, p.std, device=p.device, layers=self.layers, size=p.size, channels=p.channels)
        spread = mean_pairwise_distance(val["embedding"])
        stats = self.objective.pop_stats() if self.objective is not None and epoch > 0 else {}
        row: dict[str, Any] = {
            "epoch": epoch,
            "seconds": seconds,
            "knn_val_acc": knn_accuracy(ref["embedding"], p.ref.y.cpu(), val["embedding"], p.val.y.cpu(), p.knn_k),
            "spread": spread,
            **{f"train_{k}": v for k, v in stats.items()},
        }
        for name, feats in val.items():
            row[f"fisher:{name}"] = fisher_ratio(feats, p.val.y.cpu())
        self.detector.update(spread, stats.get("triplet"))
        row["collapse"] = bool(self.detector.warnings())
        if epoch in self.fm_epochs or epoch == 0:
            self.snapshots[epoch] = featuremaps.capture(model, self.fm_inputs, self.layers, self.channels)
        model.train(was)
        self.rows.append(row)
        self.save()
        return row

    def __call__(self, epoch: int, row: dict[str, Any], model: nn.Module) -> None:
        self.measure(epoch, model, seconds=float(row.get("seconds", 0.0)))

    def save(self) -> None:
        if self.state_path is not None:
            atomic_torch_save(
                {
                    "rows": self.rows,
                    "snapshots": self.snapshots,
                    "spreads": self.detector.spreads,
                    "losses": self.detector.losses,
                },
                self.state_path,
            )

    def load(self) -> bool:
        """Restore a saved state (resume); False if there is none."""
        if self.state_path is None or not self.state_path.exists():
            return False
        state = load_checkpoint(self.state_path)  # weights_only; an empty or cut file is a clean error
        self.rows, self.snapshots = state["rows"], state["snapshots"]
        self.detector.spreads, self.detector.losses = list(state["spreads"]), list(state["losses"])
        return True

    def truncate(self, last_epoch: int) -> None:
        """Forget rows after `last_epoch` (epochs a resumed fit will redo)."""
        keep = [r for r in self.rows if r["epoch"] <= last_epoch]
        dropped = len(self.rows) - len(keep)
        self.rows = keep
        self.snapshots = {e: s for e, s in self.snapshots.items() if e <= last_epoch}
        if dropped:
            self.detector.spreads = self.detector.spreads[: len(keep)]
            self.detector.losses = self.detector.losses[: max(0, len(keep) - 1)]

    def epochs_to(self, key: str, target: float) -> tuple[int | None, float | None]:
        """First epoch where `key` >= target and the training seconds spent until then (None: never)."""
        total = 0.0
        for r in self.rows:
            total += r["seconds"]
            if r["epoch"] > 0 and r[key] >= target:
                return r["epoch"], total
        return None, None
