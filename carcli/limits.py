"""Upper bounds on sizes a user can ask for, so a typo ends in one line instead of exhausting memory.

An image of side N costs 3 x N x N x 4 bytes as float32 before the network's activations, which are
tens of times that: 2048 px is already 48 MB an image at the input alone. Larger sizes need
`--allow-large-images` (and a checkpoint trained that way records it, so it loads again).
"""

from __future__ import annotations

from carcli.errors import UsageError

MIN_IMG_SIZE = 32
MAX_IMG_SIZE = 2048
ALLOW_FLAG = "--allow-large-images"


def check_img_size(size: int | None, allow_large: bool = False, source: str = "--img-size") -> None:
    """Refuse an image size below 32 px, or above 2048 px unless `allow_large`; None passes (not chosen yet)."""
    if size is None:
        return
    if isinstance(size, bool) or not isinstance(size, int):
        raise UsageError(f"{source} must be a whole number of pixels, got {size!r}")
    if size < MIN_IMG_SIZE:
        raise UsageError(f"{source} must be at least {MIN_IMG_SIZE}, got {size}")
    if size > MAX_IMG_SIZE and not allow_large:
        mb = 3 * size * size * 4 / 1e6
        raise UsageError(
            f"{source} {size} is over {MAX_IMG_SIZE}: one such image takes {mb:,.0f} MB as input alone and many "
            f"times that inside the network; use a smaller size or pass {ALLOW_FLAG}"
        )
