"""Load on a running `fmnist.serve`: N requests to its `/classify` API from C concurrent gradio_client clients.

    python benchmarks/serve_load.py --url http://127.0.0.1:7860/ --image photo.jpg [--requests 200] [--clients 8]
        [--no-download]

Prints one JSON object: requests, clients, errors, wall seconds, requests per second, and the p50/p95/max
latency of a request (seconds, as a client sees it: upload, queue, classification, the reply).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gradio_client import Client, handle_file


def run_load(url: str, image: str, requests: int = 200, clients: int = 8, download: bool = True) -> dict:
    """Send `requests` classifications over `clients` threads, one Client each; return the figures.

    `download`: each client fetches the 9 images of each reply (the seen image and 8 neighbours), as a page
    does; without it a reply's images stay URLs."""
    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]

    def worker(count: int) -> tuple[list[float], list[str]]:
        folder = tempfile.mkdtemp(prefix="fmnist-load-") if download else None
        client = Client(url, verbose=False, download_files=folder or False)
        latencies, errors = [], []
        for _ in range(count):
            start = time.perf_counter()
            try:
                result = client.predict(handle_file(image), api_name="/classify")
                if not isinstance(result[-1], str) or result[-1].startswith("error"):  # the line: /classify's last
                    errors.append(str(result[-1]))
            except Exception as error:  # noqa: BLE001 - every failure is counted, whatever it is
                errors.append(f"{type(error).__name__}: {error}")
            latencies.append(time.perf_counter() - start)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
        return latencies, errors

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(worker, per_client))
    wall = time.perf_counter() - start
    latencies = sorted(t for lat, _ in results for t in lat)
    errors = [e for _, errs in results for e in errs]
    return {
        "requests": len(latencies),
        "clients": clients,
        "download": download,
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_seconds": round(wall, 2),
        "requests_per_second": round(len(latencies) / wall, 1),
        "p50_seconds": round(statistics.median(latencies), 3),
        "p95_seconds": round(latencies[max(0, int(0.95 * len(latencies)) - 1)], 3),
        "max_seconds": round(latencies[-1], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--no-download", action="store_true", help="leave the replies' images on the server")
    args = parser.parse_args()
    if not Path(args.image).is_file():
        parser.error(f"--image {args.image}: no such file")
    print(json.dumps(run_load(args.url, args.image, args.requests, args.clients, not args.no_download)))


if __name__ == "__main__":
    main()
