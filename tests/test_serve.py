"""carcli serve: the API answers as `carcli predict --json` does, batches concurrent requests off the event loop,
refuses every bad input with a 4xx JSON error, and its flags fail in one line."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from carcli.checkpoint import read_metadata
from carcli.cli import app
from carcli.data.images import view_box
from carcli.explain import DISPLAY_SIZE
from carcli.predict import predict
from carcli.serve import MAX_PIXELS, Batcher, Engine, Job, create_app

JSON_KEYS = ["image", "top_k", "make", "type", "year", "modernity"]
runner = CliRunner()


@pytest.fixture(scope="module")
def photos(real_folder_set) -> list[Path]:
    """Four real photos of different classes."""
    return sorted((real_folder_set / "val").rglob("*.jpg"))[::4][:4]


@pytest.fixture(scope="module")
def client(trained_checkpoint):
    """The app over the trained checkpoint, with a 1 MB upload limit."""
    with TestClient(create_app(Engine.load(trained_checkpoint), max_batch=4, max_upload_mb=1)) as test_client:
        yield test_client


def _same_answers(served: list[dict], expected: list[dict]) -> None:
    """The objects of the server equal those of `carcli predict --json` (image names aside), to rounding."""
    assert len(served) == len(expected)
    for got, want in zip(served, expected, strict=True):
        assert list(got)[: len(JSON_KEYS)] == JSON_KEYS
        assert [item["label"] for item in got["top_k"]] == [item["label"] for item in want["top_k"]]
        assert [item["score"] for item in got["top_k"]] == pytest.approx([i["score"] for i in want["top_k"]], abs=2e-6)
        for task in ("make", "type", "year"):
            assert got[task]["label"] == want[task]["label"]
            assert got[task]["score"] == pytest.approx(want[task]["score"], abs=2e-6)
        assert got["modernity"] == pytest.approx(want["modernity"], abs=2e-4)


def test_multipart_files_get_the_answers_of_predict_json(client, photos, trained_checkpoint):
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    response = client.post("/predict", files=files)
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]
    assert [answer["image"] for answer in served] == [p.name for p in photos]
    expected = [p.to_json() for p in predict([str(p) for p in photos], trained_checkpoint).predictions]
    _same_answers(served, expected)
    assert all("gradcam_png" not in answer for answer in served)


def test_a_raw_body_with_explain_adds_the_gradcam_overlay(client, photos, trained_checkpoint):
    jpeg = {"content-type": "image/jpeg"}
    response = client.post("/predict?explain=true", content=photos[1].read_bytes(), headers=jpeg)
    assert response.status_code == 200, response.text
    [answer] = response.json()["predictions"]
    _same_answers([answer], [predict([str(photos[1])], trained_checkpoint).predictions[0].to_json()])
    with Image.open(io.BytesIO(base64.b64decode(answer["gradcam_png"]))) as overlay:
        assert overlay.format == "PNG"
        pixels = overlay.convert("RGB")
    with Image.open(photos[1]) as photo:  # the view the model saw (4:3 or narrower), long side at display size
        _, _, view_w, view_h = view_box(photo.width, photo.height, read_metadata(trained_checkpoint).view_aspect)
    shown = round(DISPLAY_SIZE * min(1.0, view_h / view_w))
    assert max(pixels.width, shown) == DISPLAY_SIZE
    assert shown + 10 < pixels.height < shown + 120  # captioned below
    assert pixels.getextrema()[0][1] - pixels.getextrema()[0][0] > 100  # a coloured map, not a blank sheet


def test_health_describes_the_model_and_the_page_is_self_contained(client, trained_checkpoint):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == str(trained_checkpoint)
    assert health["arch"] == "ghostnet" and health["tasks"] == ["model", "make", "type", "year"]
    assert health["classes"]["model"] == 5 and health["max_batch"] == 4 and health["carcli_version"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    html = page.text
    assert '<input class="hidden-input" id="camera" type="file" accept="image/*" capture>' in html
    assert 'name="viewport"' in html and "drop" in html
    for outside in ("http://", "https://", "//cdn", '<link rel="stylesheet"', "<script src"):
        assert outside not in html


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels (1-bit) but holds almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _chunks(size: int):
    for _ in range(size // 65536 + 1):
        yield b"\xff" * 65536


BAD_INPUTS = {
    "empty body": ({"content": b"", "headers": {"content-type": "image/jpeg"}}, 400, "empty upload"),
    "not an image": ({"content": b"just some text", "headers": {"content-type": "image/png"}}, 415, "not an image"),
    "wrong content type": ({"content": b"{}", "headers": {"content-type": "application/json"}}, 415, "content type"),
    "text part": ({"files": {"file": ("notes.txt", b"hello", "text/plain")}}, 415, "text/plain is not an image"),
    "no file field": ({"files": {"photo": ("a.jpg", b"x", "image/jpeg")}}, 400, '"file" field'),
    "file field is text": ({"data": {"file": "x"}, "files": {"other": ("a", b"b")}}, 400, "holds text"),
    "too many files": ({"files": [("file", ("a.jpg", b"x", "image/jpeg"))] * 65}, 400, "Too many files"),
    "malformed form": ({"content": b"junk", "headers": {"content-type": "multipart/form-data; boundary=b"}}, 400, ""),
    "too many pixels": ({"content": _png_header(11_000, 10_000)}, 422, "too many pixels (11000x10000"),
    "bomb": ({"content": _png_header(30_000, 30_000)}, 422, "too many pixels"),
    "over the limit": ({"content": b"\xff" * (2**20 + 1), "headers": {"content-type": "image/jpeg"}}, 413, "limit"),
    "over the limit, streamed": ({"content": _chunks(2**20), "headers": {"content-type": "image/jpeg"}}, 413, "limit"),
    "bad explain": ({"content": b"x", "params": {"explain": "perhaps"}}, 422, "explain"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_4xx_json_error_and_the_server_goes_on(client, photos, case):
    request, status, words = BAD_INPUTS[case]
    response = client.post("/predict", **request)
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"] and words in response.json()["error"]
    assert "Traceback" not in response.text
    assert client.post("/predict", content=photos[0].read_bytes()).status_code == 200


def test_a_truncated_photo_and_unknown_routes_are_refused(client, photos):
    truncated = photos[2].read_bytes()[:1500]
    response = client.post("/predict", files={"file": ("cut.jpg", truncated, "image/jpeg")})
    assert response.status_code == 422 and response.json()["error"].startswith("cut.jpg: corrupt or truncated image")
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.get("/predict").status_code == 405
    assert MAX_PIXELS == 100_000_000  # the documented limit


def test_the_batcher_groups_concurrent_jobs_without_blocking_the_event_loop():
    seen: list[int] = []

    def answer(jobs):
        time.sleep(0.05)  # the model's time, spent in the inference thread
        seen.append(len(jobs))
        return [{"image": job.name} for job in jobs]

    async def scenario() -> tuple[list, int]:
        batcher = Batcher(answer, max_batch=4)
        worker = asyncio.create_task(batcher.run())
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        clock = asyncio.create_task(ticker())
        requests = [batcher.submit([Job(f"{i}-{j}", None) for j in range(1 + i % 2)]) for i in range(6)]
        answers = await asyncio.gather(*requests)
        worker.cancel()
        clock.cancel()
        batcher.executor.shutdown()
        return answers, ticks

    answers, ticks = asyncio.run(scenario())
    assert [[a["image"] for a in request] for request in answers] == [
        [f"{i}-{j}" for j in range(1 + i % 2)] for i in range(6)
    ]
    assert sum(seen) == 9 and max(seen) == 4 and len(seen) < 9  # batched, never above max_batch
    assert ticks >= 5  # the loop kept running while the batches were computed


def test_an_ensemble_checkpoint_is_served(untrained_members, real_folder_set, photos, tmp_path):
    from carcli.ensemble import build_ensemble

    out = build_ensemble(list(untrained_members[:2]), real_folder_set, "mean", tmp_path / "ens.st").out
    with TestClient(create_app(Engine.load(out))) as ensemble_client:
        assert ensemble_client.get("/health").json()["members"] == ["ghostnet", "ghostnet"]
        response = ensemble_client.post("/predict?explain=1", files={"file": (photos[0].name, photos[0].read_bytes())})
    assert response.status_code == 200, response.text
    [answer] = response.json()["predictions"]
    assert answer["gradcam_png"]
    assert [i["label"] for i in answer["top_k"]] == [
        i["label"] for i in predict([str(photos[0])], out).predictions[0].top_k
    ]


def test_an_exported_onnx_model_is_served_like_predict_answers_it(trained_checkpoint, photos, tmp_path):
    from carcli.export import export_checkpoint

    onnx_file = export_checkpoint(trained_checkpoint, "onnx", tmp_path / "model.onnx").path
    with TestClient(create_app(Engine.load(onnx_file))) as onnx_client:
        health = onnx_client.get("/health").json()
        response = onnx_client.post("/predict", files=[("file", (p.name, p.read_bytes())) for p in photos[:2]])
        refused = onnx_client.post("/predict?explain=true", files={"file": (photos[0].name, photos[0].read_bytes())})
    assert health["device"] == "onnxruntime" and health["model"] == str(onnx_file)
    assert response.status_code == 200, response.text
    _same_answers(
        response.json()["predictions"],
        [p.to_json() for p in predict([str(p) for p in photos[:2]], onnx_file).predictions],
    )
    assert refused.status_code == 400 and "needs a .st checkpoint" in refused.json()["error"]


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        (["--max-batch", "0"], 2, "--max-batch must be at least 1"),
        (["--max-upload-mb", "0"], 2, "--max-upload-mb must be above 0"),
        (["--port", "70000"], 2, "--port must be between 0 and 65535"),
    ],
)
def test_serve_flag_errors_are_one_line(trained_checkpoint, extra, code, words):
    result = runner.invoke(app, ["serve", "--model", str(trained_checkpoint), *extra])
    assert result.exit_code == code
    assert [line for line in result.output.splitlines() if line.strip()] == [f"error: {words}"]


def test_a_missing_model_or_a_busy_port_is_one_line(trained_checkpoint, tmp_path, monkeypatch):
    result = runner.invoke(app, ["serve", "--model", str(tmp_path / "none.st")])
    assert result.exit_code == 1 and result.output.strip() == f"error: checkpoint not found: {tmp_path / 'none.st'}"
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 1 and result.output.startswith("error: no --model given and no best.st under runs/")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["serve", "--model", str(trained_checkpoint), "--port", str(port)])
    assert result.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output


def test_without_the_serve_extra_the_error_names_it():
    code = "import sys; sys.modules['uvicorn'] = None; from carcli.cli import app; app(['serve'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == 'error: carcli serve needs uvicorn: pip install "carcli[serve]"'


def test_ctrl_c_stops_the_server_with_130(trained_checkpoint, photos, monkeypatch, tmp_path):
    """The newest runs/**/best.st is served in this process's main thread; once it answers, a SIGINT stops it."""
    import os
    import signal
    import urllib.error
    import urllib.request

    import carcli.serve

    urls: list[str] = []
    shown = carcli.serve.url_of
    monkeypatch.setattr(carcli.serve, "url_of", lambda sock: urls.append(shown(sock)) or urls[0])

    def client() -> None:
        for _ in range(600):
            try:
                jpeg = {"Content-Type": "image/jpeg"}
                request = urllib.request.Request(urls[0] + "predict", photos[0].read_bytes(), jpeg, method="POST")
                with urllib.request.urlopen(request, timeout=30) as answer:
                    assert answer.status == 200
                break
            except (IndexError, OSError):
                time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    (tmp_path / "runs" / "r").mkdir(parents=True)
    shutil.copy(trained_checkpoint, tmp_path / "runs" / "r" / "best.st")
    monkeypatch.chdir(tmp_path)
    threading.Thread(target=client, daemon=True).start()
    result = runner.invoke(app, ["serve", "--port", "0"])
    assert result.exit_code == 130, result.output
    assert "using the newest checkpoint: runs/r/best.st" in result.output
    assert f"serving best.st (ghostnet) at {urls[0]}" in result.output and urls[0].startswith("http://127.0.0.1:")
    assert "stopped after 1 requests (1 images in 1 batches)" in result.output and "Traceback" not in result.output
