"""Which JPEG decode path is fastest for training-size images: PIL with draft mode or torchvision.io.decode_jpeg.

carcli decodes with PIL's draft mode (open_rgb): the JPEG decoder scales by 1/2, 1/4 or 1/8 in the DCT
domain, so a full-size photo is never decoded at full size. torchvision.io.decode_jpeg (libjpeg-turbo,
or nvjpeg on a GPU) decodes at full size and then resizes. Full-size test photos are made by upscaling
the shared real photos to Stanford Cars' typical size (about 700x480; the largest are 4-5x that).

    python benchmarks/decode.py                  # CPU, 700x480 and 2000x1333
    python benchmarks/decode.py --device cuda    # adds nvjpeg decode on the GPU
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.io import decode_jpeg

from carcli.data.images import open_rgb

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "stanford_cars"


def photos(size: tuple[int, int], count: int) -> list[bytes]:
    """`count` real photos upscaled to `size` and JPEG-encoded at quality 90."""
    out = []
    for path in sorted(SHARED.rglob("*.jpg"))[:count]:
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").resize(size).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def rate(blobs: list[bytes], decode: Callable[[bytes], object], device: torch.device) -> float:
    """Images per second of `decode` over `blobs` (one warm-up pass first)."""
    for blob in blobs[:4]:
        decode(blob)
    started = time.perf_counter()
    for blob in blobs:
        decode(blob)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(blobs) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=224, help="shorter side after resizing")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    side = args.img_size
    torch.set_num_threads(1)

    def pil_draft(blob: bytes) -> object:
        return open_rgb(io.BytesIO(blob), side).resize((side, side))  # type: ignore[arg-type]

    def tv_decode(blob: bytes, where: str = "cpu") -> object:
        data = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        return F.resize(decode_jpeg(data, device=where), [side, side], antialias=True)

    gpu = device.type == "cuda"
    print("| photo size | PIL draft + resize | torchvision decode_jpeg + resize |" + " decode_jpeg on GPU |" * gpu)
    print("|---|---:|---:|" + "---:|" * gpu)
    for size in ((700, 480), (2000, 1333)):
        blobs = photos(size, args.count)
        row = [rate(blobs, pil_draft, torch.device("cpu")), rate(blobs, tv_decode, torch.device("cpu"))]
        if gpu:
            row.append(rate(blobs, lambda b: tv_decode(b, "cuda"), device))
        print(f"| {size[0]}x{size[1]} | " + " | ".join(f"{r:.0f} img/s" for r in row) + " |")


if __name__ == "__main__":
    main()
