"""`carcli serve`: a checkpoint behind an HTTP API and a phone-ready page (FastAPI on uvicorn).

`POST /predict` takes images (multipart field `file`, one or more, or a raw image body) and answers
with the JSON objects of `carcli predict --json`, computed by the same functions (`predict_batch`);
`explain=true` adds each image's Grad-CAM overlay as a base64 PNG. `GET /health` describes the model,
`GET /` is the page (carcli/web/index.html, one self-contained file).

Uploads are decoded and preprocessed in worker threads; a `Batcher` gathers the images of requests
that arrive together (up to `max_batch`, waiting at most BATCH_WAIT_S) and runs each batch on the
one model instance in its own inference thread, so the event loop never waits for the model. Every
bad request ends in a 4xx answer `{"error": "..."}`; nothing a client sends reaches a 500.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from carcli import __version__
from carcli.checkpoint_meta import CheckpointMeta
from carcli.errors import CarcliError, UsageError

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ModuleNotFoundError as exc:  # the `serve` extra is not installed
    raise CarcliError(f'carcli serve needs {exc.name}: pip install "carcli[serve]"') from None

import numpy as np
import torch
from torch import Tensor, nn

from carcli.data.images import open_rgb
from carcli.deploy import OnnxModel, eval_view, is_onnx
from carcli.explain import DISPLAY_SIZE, cam_maps, grad_cam, overlay, view_photo
from carcli.inference import ImagePrediction, image_predictions, predict_batch
from carcli.usage import newest_checkpoint

TOP_K = 5
MAX_PIXELS = 100_000_000  # larger images are refused before they are decoded (decompression bombs)
MAX_FILES = 64  # images per request
BATCH_WAIT_S = 0.005  # how long the first image of a batch waits for others
RAW_TYPES = ("image/", "application/octet-stream")
MULTIPART = "multipart/form-data"
PAGE_CSP = (
    "default-src 'none'; img-src 'self' data: blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'"
)


class ApiError(Exception):
    """A request the server refuses: its HTTP status and the one-line reason sent as `{"error": reason}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    """One image as it arrived: its name, bytes and declared content type."""

    name: str
    data: bytes
    content_type: str | None = None


@dataclass
class Job:
    """One decoded image waiting for the model: its model view, and the photo to draw a heat map on."""

    name: str
    view: Any  # (3, S, S): a tensor in the checkpoint's preprocessing, or a numpy array for an .onnx model
    photo: Image.Image | None = None  # set when a Grad-CAM overlay is wanted
    future: asyncio.Future[dict[str, Any]] | None = None


# ---------------------------------------------------------------- the model side


class Engine:
    """The loaded checkpoint: decodes uploads into jobs and answers a batch of jobs (one thread at a time)."""

    def __init__(self, model: nn.Module, meta: CheckpointMeta, path: Path, device: str) -> None:
        self.model, self.meta, self.path, self.device = model, meta, path, device
        self.size = meta.img_size
        self.transform = meta.view_transform()

    @classmethod
    def load(cls, path: Path, device: str = "auto") -> Engine:
        """The engine for a `.st` checkpoint (plain, pruned or ensemble) or an exported `.onnx` model."""
        if is_onnx(path):
            return OnnxEngine(OnnxModel.load(path), path)
        from carcli.device import resolve_device
        from carcli.models.builder import load_model

        torch_device = str(resolve_device(device))
        model, meta = load_model(path, torch_device)
        return cls(model, meta, path, torch_device)

    @property
    def source(self) -> dict[str, str]:
        """The architecture and head the model was trained with (an export records them under `source`)."""
        return {"arch": self.meta.arch, "head": self.meta.head}

    def describe(self) -> dict[str, Any]:
        """What `GET /health` says about the model."""
        tasks = self.meta.tasks
        info = {"model": str(self.path), "arch": self.source["arch"], "head": self.source["head"]}
        if self.meta.members is not None:
            info["members"] = [member.arch for member in self.meta.members]
        classes = {task: len(names) for task, names in tasks.items()}
        return {**info, "img_size": self.size, "tasks": list(tasks), "classes": classes, "device": self.device}

    def prepare(self, upload: Upload, explain: bool) -> Job:
        """Decode and preprocess one upload; ApiError (4xx) for anything that is not a usable image."""
        check_upload(upload)
        try:
            image = open_rgb(io.BytesIO(upload.data), self.size)  # type: ignore[arg-type]
            photo = view_photo(open_rgb(io.BytesIO(upload.data), DISPLAY_SIZE), self.meta) if explain else None  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - PIL raises many error types for broken files
            raise ApiError(422, f"{upload.name}: corrupt or truncated image ({exc})") from None
        return Job(upload.name, self.view(image), photo)

    def view(self, image: Image.Image) -> Any:
        """The model's input for one decoded image (the checkpoint's preprocessing)."""
        return self.transform(image)

    def answer(self, jobs: Sequence[Job]) -> list[dict[str, Any]]:
        """The `carcli predict --json` object of every job, with `gradcam_png` for the jobs that have a photo."""
        views = torch.stack([job.view for job in jobs]).to(self.device)
        predictions = predict_batch(self.model, self.meta, views, [job.name for job in jobs], TOP_K)
        records = [p.to_json() for p in predictions]
        wanted = [row for row, job in enumerate(jobs) if job.photo is not None]
        if wanted:
            pngs = self._overlays(views[wanted], [jobs[row] for row in wanted], [predictions[row] for row in wanted])
            for row, png in zip(wanted, pngs, strict=True):
                records[row]["gradcam_png"] = png
        return records

    def _overlays(self, views: Tensor, jobs: Sequence[Job], predictions: Sequence[ImagePrediction]) -> list[str]:
        """Base64 PNGs of the Grad-CAM overlay of each view's top fine class, as `predict --explain` draws them."""
        fine = self.meta.fine_names
        classes = [fine.index(p.top_k[0]["label"]) for p in predictions]
        with grad_cam(self.model, self.size) as extractor:
            maps = cam_maps(self.model, extractor, views, classes)[1]
        pngs = []
        for heat, job, prediction in zip(maps, jobs, predictions, strict=True):
            assert job.photo is not None
            buffer = io.BytesIO()
            overlay(job.photo, heat, f"gradcam: {prediction.caption()}").save(buffer, format="PNG")
            pngs.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        return pngs


class OnnxEngine(Engine):
    """An exported `.onnx` model run by onnxruntime: the same answers from the file's own preprocessing.

    It has no gradients, so `explain=true` is refused with a 400.
    """

    def __init__(self, model: OnnxModel, path: Path) -> None:
        self.model, self.meta, self.path, self.device = model, model.meta, path, "onnxruntime"  # type: ignore[assignment]
        self.size = model.meta.img_size

    def prepare(self, upload: Upload, explain: bool) -> Job:
        if explain:
            raise ApiError(400, "explain=true needs a .st checkpoint (Grad-CAM uses gradients); this server runs .onnx")
        return super().prepare(upload, explain)

    def view(self, image: Image.Image) -> Any:
        return eval_view(image, self.meta)

    def answer(self, jobs: Sequence[Job]) -> list[dict[str, Any]]:
        probs = self.model.batch_probs(np.stack([job.view for job in jobs]))  # type: ignore[attr-defined]
        return [p.to_json() for p in image_predictions([job.name for job in jobs], probs, self.meta, TOP_K)]


def check_upload(upload: Upload) -> None:
    """Refuse, before decoding, an empty upload, a declared non-image, a non-image and too many pixels."""
    if not upload.data:
        raise ApiError(400, f"{upload.name}: empty upload")
    declared = (upload.content_type or "").split(";")[0].strip().lower()
    if declared and not declared.startswith(RAW_TYPES):
        raise ApiError(415, f"{upload.name}: content type {declared} is not an image")
    try:
        with Image.open(io.BytesIO(upload.data)) as img:
            width, height = img.size
    except Image.DecompressionBombError:
        raise ApiError(422, f"{upload.name}: too many pixels (over {MAX_PIXELS // 1_000_000} Mpx)") from None
    except Exception:  # noqa: BLE001 - PIL raises many error types for what it cannot identify
        raise ApiError(415, f"{upload.name}: not an image") from None
    if width * height > MAX_PIXELS:
        raise ApiError(
            422, f"{upload.name}: too many pixels ({width}x{height}; the limit is {MAX_PIXELS // 1_000_000} Mpx)"
        )


# ---------------------------------------------------------------- batching


@dataclass
class Stats:
    """What the server has done so far (reported by `GET /health`)."""

    requests: int = 0
    images: int = 0
    batches: int = 0
    largest_batch: int = 0


class Batcher:
    """Gathers the jobs of concurrent requests into batches of at most `max_batch` and answers them in one thread."""

    def __init__(self, answer: Callable[[Sequence[Job]], list[dict[str, Any]]], max_batch: int) -> None:
        self.answer = answer
        self.max_batch = max_batch
        self.stats = Stats()
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="carcli-inference")

    async def submit(self, jobs: Sequence[Job]) -> list[dict[str, Any]]:
        """Queue the jobs of one request and wait for their answers."""
        loop = asyncio.get_running_loop()
        for job in jobs:
            job.future = loop.create_future()
            self.queue.put_nowait(job)
        self.stats.requests += 1
        return list(await asyncio.gather(*(job.future for job in jobs if job.future is not None)))

    async def run(self) -> None:
        """Forever: wait for a job, gather more for a few milliseconds, answer them in the inference thread."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            try:
                answers = await loop.run_in_executor(self.executor, self.answer, batch)
            except Exception as exc:  # noqa: BLE001 - one failed batch must not stop the server
                for job in batch:
                    _settle(job, error=ApiError(500, f"the model failed on this batch: {type(exc).__name__}: {exc}"))
                continue
            self.stats.images += len(batch)
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            for job, answer in zip(batch, answers, strict=True):
                _settle(job, answer)

    async def _gather(self) -> list[Job]:
        """The next job, and those that arrive within BATCH_WAIT_S of it (all waiting ones, up to max_batch)."""
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + BATCH_WAIT_S
        while len(batch) < self.max_batch:
            try:
                batch.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                if loop.time() >= deadline:
                    break
                await asyncio.sleep(BATCH_WAIT_S / 5)
        return [job for job in batch if job.future is not None and not job.future.done()]  # drop cancelled requests


def _settle(job: Job, answer: dict[str, Any] | None = None, error: Exception | None = None) -> None:
    if job.future is None or job.future.done():  # the client went away
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(answer or {})


# ---------------------------------------------------------------- requests


async def read_uploads(request: Request) -> list[Upload]:
    """The images of a request: every `file` part of a multipart form, or the raw body."""
    declared = request.headers.get("content-type", "")
    media = declared.split(";")[0].strip().lower()
    if media == MULTIPART:
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)
        parts = form.getlist("file")
        if not parts:
            raise ApiError(400, 'the form has no "file" field: send the images as file=@photo.jpg')
        if any(not isinstance(part, UploadFile) for part in parts):
            raise ApiError(400, 'a "file" field holds text, not a file')
        return [Upload(part.filename or "upload", await part.read(), part.content_type) for part in parts]  # type: ignore[union-attr]
    if media and not media.startswith(RAW_TYPES):
        raise ApiError(
            415,
            f"content type {media} is neither {MULTIPART} nor an image: "
            "send the photo as a form field (curl -F file=@photo.jpg) or say its type (-H 'Content-Type: image/jpeg')",
        )
    return [Upload("upload", await request.body(), media or None)]


class UploadLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by its Content-Length or by what actually arrives."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit():
            await error_response(400, "the request has a malformed Content-Length")(scope, receive, send)
            return
        if int(length) > self.max_bytes:
            await error_response(413, self._too_large())(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise ApiError(413, self._too_large())
            return message

        await self.app(scope, counted, send)

    def _too_large(self) -> str:
        return f"the request is over the upload limit ({self.max_bytes / 2**20:g} MB, --max-upload-mb)"


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# ---------------------------------------------------------------- the app


def page_html() -> str:
    """The page served at `/`, shipped as package data."""
    return resources.files("carcli").joinpath("web/index.html").read_text(encoding="utf-8")


def create_app(engine: Engine, max_batch: int = 16, max_upload_mb: float = 20) -> FastAPI:
    """The FastAPI app: `/predict`, `/health` and the page, batching on `engine`'s one model."""
    batcher: Batcher | None = None

    async def lifespan(app: FastAPI) -> Any:
        nonlocal batcher
        batcher = Batcher(engine.answer, max_batch)
        app.state.stats = batcher.stats
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()
        batcher.executor.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="carcli", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    _add_error_handlers(app)
    app.add_middleware(UploadLimit, max_bytes=int(max_upload_mb * 2**20))
    page = page_html()

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        assert batcher is not None
        limits = {"max_batch": max_batch, "max_upload_mb": max_upload_mb, "max_pixels": MAX_PIXELS}
        stats = batcher.stats.__dict__
        return {"status": "ok", **engine.describe(), "carcli_version": __version__, **limits, "served": stats}

    @app.post("/predict")
    async def predict(request: Request, explain: bool = False) -> dict[str, Any]:
        assert batcher is not None
        uploads = await read_uploads(request)
        jobs = await run_in_threadpool(lambda: [engine.prepare(upload, explain) for upload in uploads])
        return {"predictions": await batcher.submit(jobs)}

    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal is `{"error": "..."}` with its 4xx status; an unforeseen failure is a 500 without a traceback."""

    @app.exception_handler(ApiError)
    async def refused(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        where = ", ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error_response(422, f"invalid request ({where})")

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(exc).__name__}")


# ---------------------------------------------------------------- the server


@dataclass
class ServeOptions:
    """`carcli serve`'s flags."""

    model: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16
    max_upload_mb: float = 20
    device: str = "auto"


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a one-line error (address in use, unknown host)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise CarcliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = {"0.0.0.0": socket.gethostname(), "::": socket.gethostname()}.get(host, host)
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/"


def serve(options: ServeOptions, notify: Callable[[str], None] = lambda message: None) -> Stats:
    """Load the model, listen, serve until Ctrl-C (or SIGTERM); what was served comes back."""
    if options.max_batch < 1:
        raise UsageError("--max-batch must be at least 1")
    if options.max_upload_mb <= 0:
        raise UsageError("--max-upload-mb must be above 0")
    if not 0 <= options.port <= 65535:
        raise UsageError("--port must be between 0 and 65535")
    path = options.model or newest_checkpoint()
    if options.model is None:
        notify(f"using the newest checkpoint: {path}")
    engine = Engine.load(path, options.device)
    sock = listening_socket(options.host, options.port)
    app = create_app(engine, options.max_batch, options.max_upload_mb)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10))
    notify(f"serving {path.name} ({engine.source['arch']}) at {url_of(sock)}  (Ctrl-C stops)")
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then re-raised the SIGINT it caught
        pass
    finally:
        sock.close()
    if not server.started:
        raise CarcliError("the server stopped before it started (see the messages above)")
    return app.state.stats
