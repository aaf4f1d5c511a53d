"""Helpers of the hostile-input suite (tests/test_hostile_*.py): run the CLI and insist on one clean line,
build hostile files (decompression bombs, damaged PNG data, tampered checkpoints), snapshot folders.

The catch-all `error: unexpected ...` counts as a failure everywhere in the suite.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from carcli.cli import app

runner = CliRunner()


def carcli(*args: Any, env: dict[str, str] | None = None) -> Result:
    """Run `carcli ARGS` in-process; no traceback and no catch-all message may appear."""
    result = runner.invoke(app, [str(a) for a in args], env=env)
    assert "error: unexpected" not in result.output, result.output
    assert "Traceback" not in result.output, result.output
    assert "\x1b[" not in result.output, repr(result.output)  # no raw colour codes from libraries
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"escaped the CLI: {result.exception!r}")
    return result


def fails(*args: Any, code: int = 1, says: tuple[str, ...] = (), env: dict[str, str] | None = None) -> str:
    """Run the CLI, expect exit `code` and exactly one `error:` line containing every fragment of `says`."""
    result = carcli(*args, env=env)
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for fragment in says:
        assert fragment in errors[0], errors[0]
    return errors[0]


def snapshot(*folders: Path) -> dict[str, str]:
    """path -> sha256 of every file under `folders` (hidden temporary files included)."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# ---------------------------------------------------------------- hostile images


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, side: int = 30_000) -> Path:
    """A valid 1-bit side x side PNG of all zeros: ~100 kB on disk, side^2 pixels when decoded."""
    row = b"\x00" * (1 + -(-side // 8))
    packer = zlib.compressobj(9)
    rows_per_block = max(1, 4_000_000 // len(row))
    idat = b"".join(packer.compress(row * min(rows_per_block, side - i)) for i in range(0, side, rows_per_block))
    idat += packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


def bomb_jpeg(photo: Path, path: Path, side: int = 30_000) -> Path:
    """A real JPEG whose frame header claims side x side pixels."""
    data = bytearray(photo.read_bytes())
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at > 0:
            data[at + 5 : at + 9] = struct.pack(">HH", side, side)
            break
    path.write_bytes(bytes(data))
    return path


def damaged_png(path: Path) -> Path:
    """A PNG whose chunk CRCs are right but whose compressed pixel data is garbage (a zlib error)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    data = bytearray(path.read_bytes())
    at = data.find(b"IDAT")
    length = struct.unpack(">I", data[at - 4 : at])[0]
    start = at + 4
    data[start + 2 : start + length] = bytes((b ^ 0x5A) for b in data[start + 2 : start + length])
    data[start + length : start + length + 4] = struct.pack(">I", zlib.crc32(bytes(data[at : start + length])))
    path.write_bytes(bytes(data))
    return path


# ---------------------------------------------------------------- hostile checkpoints

DELETE = object()


def tamper(src: Path, dst: Path, **changes: Any) -> Path:
    """A copy of checkpoint `src` at `dst` with metadata fields changed (`DELETE` removes one)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as handle:
        meta = json.loads(handle.metadata()["carcli"])
    for key, value in changes.items():
        if value is DELETE:
            meta.pop(key, None)
        else:
            meta[key] = value
    save_file(load_file(str(src)), str(dst), metadata={"carcli": json.dumps(meta)})
    return dst
