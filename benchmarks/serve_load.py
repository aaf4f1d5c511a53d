"""`carcli serve` under load: N concurrent clients on 127.0.0.1, against `carcli predict` on the same model.

Starts `carcli serve` on a free port of 127.0.0.1 and, for each client count, lets that many threads
POST real photos (raw JPEG bodies, keep-alive connections) for at most `--requests` each or
`--seconds`, whichever ends first. Reports each count's p50/p95 latency, images/s and the mean batch
the server formed (its /health counters). Beside it, the command line on the same photos: wall time
of `carcli predict` on one photo (a cold process), on a folder of them (the batch path), and the
images/s after the first (the difference of the two). Medians of `--repeats` runs.

Without `--model` the checkpoint is an EfficientNet-Lite0 + mtl head for the 196 Stanford Cars
classes at 128 px with random weights (speed does not depend on the weights).

    python benchmarks/serve_load.py                                   # 1 and 8 clients, 64 photos
    python benchmarks/serve_load.py --model runs/x/best.st --clients 1 4 16 --seconds 60
    python benchmarks/serve_load.py --no-cli --max-batch 1 --clients 16     # the server without batching
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "stanford_cars"


def random_checkpoint(path: Path, arch: str, img_size: int) -> Path:
    """A checkpoint with random weights for the 196 Stanford Cars classes (names from the shared devkit)."""
    import scipy.io
    import torch

    from carcli.checkpoint import save_checkpoint
    from carcli.checkpoint_meta import CheckpointMeta
    from carcli.data.taxonomy import Taxonomy
    from carcli.models.registry import create_model

    names = [str(n) for n in scipy.io.loadmat(SHARED / "devkit" / "cars_meta.mat", squeeze_me=True)["class_names"]]
    taxonomy = Taxonomy.from_class_names(names)
    torch.manual_seed(0)
    model = create_model(arch, "mtl", {task: len(classes) for task, classes in taxonomy.tasks.items()})
    stats = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    meta = CheckpointMeta(arch=arch, head="mtl", img_size=img_size, **stats, tasks=taxonomy.tasks, taxonomy=taxonomy)
    save_checkpoint(path, model.state_dict(), meta)
    return path


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def cli_round(model: Path, photos: list[Path]) -> dict[str, float]:
    """Wall times of `carcli predict` on one photo (a cold process) and on the folder (the batch path)."""
    base = [sys.executable, "-m", "carcli", "predict", "--model", str(model), "--json"]
    return {"one_s": wall([*base, str(photos[0])]), "folder_s": wall([*base, str(photos[0].parent)])}


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "health", timeout=10) as answer:
        return json.load(answer)


def start_server(model: Path, max_batch: int) -> tuple[subprocess.Popen, str, int]:
    port = free_port()
    command = [sys.executable, "-m", "carcli", "serve", "--model", str(model), "--port", str(port)]
    server = subprocess.Popen([*command, "--max-batch", str(max_batch)], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
        try:
            health(url)
            return server, url, port
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not start within 120 s")


def client(port: int, bodies: list[bytes], until: float, count: int, latencies: list[float]) -> None:
    """POST photos one after another on one keep-alive connection; record each latency."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for i in range(count):
        if time.perf_counter() > until:
            break
        started = time.perf_counter()
        connection.request("POST", "/predict", bodies[i % len(bodies)], {"Content-Type": "image/jpeg"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"the server answered {response.status}")
        latencies.append(time.perf_counter() - started)
    connection.close()


def load(url: str, port: int, bodies: list[bytes], clients: int, requests: int, seconds: float) -> dict[str, float]:
    """`clients` threads at once; latency percentiles, images/s and the server's mean batch over the run."""
    before = health(url)["served"]
    per_client: list[list[float]] = [[] for _ in range(clients)]
    until = time.perf_counter() + seconds
    threads = [
        threading.Thread(target=client, args=(port, bodies[i:] + bodies[:i], until, requests, per_client[i]))
        for i in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    after = health(url)["served"]
    latencies = sorted(x for part in per_client for x in part)
    batches = max(after["batches"] - before["batches"], 1)
    return {
        "clients": clients,
        "requests": len(latencies),
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "images_per_s": len(latencies) / elapsed,
        "mean_batch": (after["images"] - before["images"]) / batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="checkpoint (default: a random efficientnet_lite0 + mtl, 196 cls)")
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--photos", type=int, default=64, help="real photos from ../shared to send")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=40, help="most requests per client")
    parser.add_argument("--seconds", type=float, default=60, help="most seconds per client count")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="rounds (command line, then each client count)")
    parser.add_argument("--no-cli", action="store_true", help="measure the server only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        photos = []
        for src in sorted((SHARED / "cars_train").glob("*.jpg"))[: args.photos]:
            photos.append(folder / src.name)
            photos[-1].write_bytes(src.read_bytes())
        model = args.model or random_checkpoint(Path(tmp) / "model.st", args.arch, args.img_size)
        cli: list[dict[str, float]] = []
        serve: dict[int, list[dict[str, float]]] = {n: [] for n in args.clients}
        server, url, port = start_server(model, args.max_batch)
        try:
            bodies = [p.read_bytes() for p in photos]
            load(url, port, bodies, 1, 3, 30)  # warm-up
            for _ in range(args.repeats):  # interleaved: the machine's load drifts
                cli += [] if args.no_cli else [cli_round(model, photos)]
                for clients in args.clients:
                    serve[clients].append(load(url, port, bodies, clients, args.requests, args.seconds))
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(60)
    figures: dict[str, Any] = {"serve": [medians(rounds) for rounds in serve.values()]}
    if cli:
        figures["cli"] = medians(cli)
        extra = figures["cli"]["folder_s"] - figures["cli"]["one_s"]
        figures["cli"]["after_first_ips"] = (len(photos) - 1) / extra if extra > 0 else None  # None: lost in noise
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
