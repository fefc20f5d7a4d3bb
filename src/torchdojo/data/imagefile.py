"""Image files from outside (a photo for `predict`, a file of an image folder), opened defensively.

Every way an image file can be bad ends in a `DojoError` that names the file and the problem: a missing or
unreadable file, a zero-byte file, bytes that are no image, a header that promises more pixels than
`pixel_limit()` (a decompression bomb: checked on the header, before a pixel is decoded), and data that
fails to decode (a truncated or damaged file). Nothing else escapes, whatever the bytes.
"""

import re
import threading
import warnings
from pathlib import Path
from typing import Any

from torchdojo.errors import DojoError

# PIL's own guard (Image.MAX_IMAGE_PIXELS, 89,478,485 px: a 0.25 GB RGB bitmap) warns up to twice that
# and raises only above; here every image over the limit is refused, the warning range included.
DEFAULT_PIXEL_LIMIT = 89_478_485


def pixel_limit() -> int:
    """The largest width x height accepted: PIL's `Image.MAX_IMAGE_PIXELS` (None there: the default)."""
    from PIL import Image

    return int(Image.MAX_IMAGE_PIXELS or DEFAULT_PIXEL_LIMIT)


def _too_large(path: Path, size: str, limit: int) -> DojoError:
    return DojoError(
        f"image {path} {size}, more than the {limit:,}-pixel limit (a decompression bomb: it would decode to "
        "gigabytes)",
        "downscale the image (e.g. to at most 8000x8000), or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file",
    )


_HEADER_LOCK = threading.Lock()


def _bomb_size(path: Path, message: str) -> str:
    """'is WxH = N pixels' of a file PIL refused to open: its header read again with PIL's guard off for the
    moment (under a lock; the header only, nothing is decoded), else the pixel count of PIL's message."""
    from PIL import Image

    try:
        with _HEADER_LOCK:
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as im:
                    w, h = im.size
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        return f"is {w}x{h} = {w * h:,} pixels"
    except Exception:
        m = re.search(r"\((\d+) pixels\)", message)
        return f"has {int(m.group(1)):,} pixels" if m else "has too many pixels"


def _open(path: Path) -> Any:
    """The PIL image of `path` with only its header read; a DojoError for every bad file."""
    from PIL import Image, UnidentifiedImageError

    try:
        size = path.stat().st_size
    except OSError as e:
        raise DojoError(f"cannot read image {path}: {e.strerror or e}", "check that the file exists") from None
    if size == 0:
        raise DojoError(f"image {path} is empty (0 bytes)", "replace it with the real image file, or delete it")
    limit = pixel_limit()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as e:  # PIL's own guard, above twice its limit: it gives no width x height
        raise _too_large(path, _bomb_size(path, str(e)), limit) from None
    except UnidentifiedImageError:
        raise DojoError(
            f"{path} is not an image PIL can read ({size:,} bytes of an unknown format)",
            "pass a jpg, png, bmp, gif, tiff or webp file (re-export it if it is damaged)",
        ) from None
    except OSError as e:
        raise DojoError(f"cannot read image {path}: {e.strerror or e}", "check the file and its permissions") from None
    except Exception as e:  # a damaged header can raise nearly anything inside a PIL plugin
        raise DojoError(
            f"image {path} is damaged: {type(e).__name__}: {e}", "re-export or fetch the file again"
        ) from None
    w, h = im.size
    if w * h > limit:
        im.close()
        raise _too_large(path, f"is {w}x{h} = {w * h:,} pixels", limit)
    if w < 1 or h < 1:
        im.close()
        raise DojoError(f"image {path} is {w}x{h} pixels (empty)", "re-export or fetch the file again")
    return im


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header alone: the cheap check of a file (DojoError if it is bad)."""
    with _open(Path(path)) as im:
        return im.size


def load_rgb(path: str | Path) -> Any:
    """A fully decoded RGB `PIL.Image` of `path`, or a DojoError naming the file and what is wrong with it."""
    path = Path(path)
    im = _open(path)
    try:
        with im:
            im.load()
            return im.convert("RGB")
    except MemoryError:
        w, h = im.size
        raise DojoError(
            f"image {path} ({w}x{h}) does not fit in memory", "downscale the image, or free some memory"
        ) from None
    except Exception as e:  # truncated data, a bad chunk CRC, a broken palette, ... (OSError, SyntaxError, ...)
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DojoError(
            f"image {path} is damaged and cannot be decoded ({detail})",
            "re-export or fetch the file again, or delete it",
        ) from None
