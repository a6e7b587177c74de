"""`wings serve` under load, on loopback: concurrent clients, mixed text and image requests, with and without a
client that keeps leaving in the middle of a long streamed answer; then bursts of large (4000x4000) images.

    python -m benchmarks.server_load [--model DIR] [--clients 8 32] [--requests-per-client 4] [--threads 1]

The server runs in its own process (`wings serve` on 127.0.0.1 only), so its memory is measured alone: the peak
resident set during each burst (the kernel's high-water mark, reset before the burst) and the resident set once
the burst is over. Each client sends its requests one after another (half of them with a 256x256 PNG, every
fourth one streamed); a burst is bounded by its request count and by --burst-limit-s. The disconnecting client
starts a streamed answer of 200 tokens, reads 4 chunks and closes the connection, over and over: with
cancellation it costs the others about one decoding step each time, without it 200. Without --model, a tiny
random checkpoint (the tests' one) is built in a temporary folder: the figures then measure the server, not a
model.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"  # loopback only: this benchmark never opens a port to the network
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Burst:
    """What one burst measured."""

    clients: int
    disconnecting: bool
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    disconnects: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    rss_after_mb: float = 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def tiny_checkpoint(folder: Path) -> Path:
    """The tests' tiny random WINGS checkpoint (model + processor)."""
    sys.path.insert(0, str(REPO))
    from tests.fixtures.models import tiny_checkpoint as build

    return build(folder)


def image_url(size: int = 256) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((size, size), 60).convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def memory_mb(pid: int, field_name: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of a process, in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")  # resets the peak resident set (VmHWM) to the current one
    except OSError:
        pass


class Server:
    """`wings serve` in a child process on a free loopback port."""

    def __init__(self, model: Path, threads: int, max_pending: int):
        self.port = free_port()
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        command = [
            sys.executable,
            "-m",
            "wings.cli",
            "serve",
            "--model",
            str(model),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--max-pending",
            str(max_pending),
            "--max-tokens-limit",
            "256",
        ]
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://{HOST}:{self.port}"

    def wait_ready(self, checks: int = 1200) -> None:
        import httpx

        for _ in range(checks):  # up to ~2 minutes at 0.1 s
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.log.seek(0)
        raise RuntimeError("the server did not start:\n" + self.log.read().decode(errors="replace")[-3000:])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def one_request(client, base: str, model: str, number: int, image: str) -> None:
    content: list | str = f"Question {number}: what is in the picture?"
    if number % 2:
        content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": content}]
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 16, "temperature": 0}
    if number % 4 == 3:
        body["stream"] = True
        async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            async for _ in response.aiter_lines():
                pass
        return
    response = await client.post(f"{base}/v1/chat/completions", json=body)
    response.raise_for_status()


async def leaver(base: str, model: str, stop: asyncio.Event, burst: Burst) -> None:
    """Starts a long streamed answer, reads 4 chunks, closes the connection; again until the burst ends."""
    import httpx

    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 200,
        "temperature": 0,
        "stream": True,
    }
    while not stop.is_set():
        async with httpx.AsyncClient(timeout=120) as client:
            try:
                async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
                    chunks = 0
                    async for line in response.aiter_lines():
                        chunks += line.startswith("data: ")
                        if chunks >= 5:  # the role chunk and 4 pieces
                            break
            except httpx.HTTPError:
                pass
        burst.disconnects += 1


async def run_burst(
    server: Server, model: str, clients: int, per_client: int, disconnecting: bool, limit_s: float, image: str
) -> Burst:
    import httpx

    burst = Burst(clients, disconnecting)
    stop = asyncio.Event()
    deadline = time.monotonic() + limit_s

    async def client_loop(index: int) -> None:
        async with httpx.AsyncClient(timeout=600) as client:
            for request in range(per_client):
                if time.monotonic() > deadline:
                    return
                began = time.perf_counter()
                try:
                    await one_request(client, server.base, model, index * per_client + request, image)
                    burst.latencies.append(time.perf_counter() - began)
                except httpx.HTTPError as error:
                    name = type(error).__name__
                    if isinstance(error, httpx.HTTPStatusError):
                        name = str(error.response.status_code)
                    burst.errors[name] = burst.errors.get(name, 0) + 1

    reset_peak(server.process.pid)
    began = time.perf_counter()
    leaving = asyncio.create_task(leaver(server.base, model, stop, burst)) if disconnecting else None
    await asyncio.gather(*(client_loop(index) for index in range(clients)))
    burst.seconds = time.perf_counter() - began
    stop.set()
    if leaving is not None:
        await leaving
    burst.peak_rss_mb = memory_mb(server.process.pid, "VmHWM")
    await asyncio.sleep(1.0)  # let the last connections close
    burst.rss_after_mb = memory_mb(server.process.pid, "VmRSS")
    return burst


async def run_image_burst(
    server: Server, model: str, requests: int, images: int, side: int
) -> tuple[dict, float, float]:
    """`requests` concurrent requests of `images` flat `side` x `side` PNGs each (small bodies, huge pixel counts):
    their status codes, the server's peak RSS during them and its RSS after (MB)."""
    import httpx
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 120, 40)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}] * images + [{"type": "text", "text": "What?"}]
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0}
    statuses: dict[int, int] = {}

    async def send(client) -> None:
        response = await client.post(f"{server.base}/v1/chat/completions", json=body)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    reset_peak(server.process.pid)
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(send(client) for _ in range(requests)))
    peak = memory_mb(server.process.pid, "VmHWM")
    await asyncio.sleep(1.0)
    return statuses, peak, memory_mb(server.process.pid, "VmRSS")


def render_images(rows: list[tuple[int, int, int, dict, float, float]], baseline_mb: float) -> str:
    lines = [
        "### Large images: pixels checked from headers, at most two images decoded at once, each shrunk at once",
        "",
        "| requests at once | images per request | image size | answers | peak RSS (MB) | RSS after (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for requests, images, side, statuses, peak, after in rows:
        answers = ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items()))
        lines.append(f"| {requests} | {images} | {side}x{side} | {answers} | {peak:,.0f} | {after:,.0f} |")
    lines += [
        "",
        f"- server RSS before: {baseline_mb:,.0f} MB; server limits at their defaults (16 Mpixel per image, "
        "32 Mpixel per request): 8 images of 16 Mpixel are refused (400) from their headers, 2 are decoded.",
    ]
    return "\n".join(lines) + "\n"


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def render(bursts: list[Burst], baseline_mb: float, model: str, args: argparse.Namespace) -> str:
    lines = [
        "### wings serve under load (loopback)",
        "",
        "| clients | + disconnecting client | requests done | errors | requests/s | p50 latency (s) | "
        "p95 latency (s) | disconnects | peak RSS (MB) | RSS after burst (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for burst in bursts:
        errors = ", ".join(f"{count} x {name}" for name, count in burst.errors.items()) or "0"
        lines.append(
            f"| {burst.clients} | {'yes' if burst.disconnecting else 'no'} | {len(burst.latencies)} | {errors} | "
            f"{len(burst.latencies) / burst.seconds:.2f} | {percentile(burst.latencies, 0.5):.2f} | "
            f"{percentile(burst.latencies, 0.95):.2f} | {burst.disconnects if burst.disconnecting else '-'} | "
            f"{burst.peak_rss_mb:,.0f} | {burst.rss_after_mb:,.0f} |"
        )
    lines += [
        "",
        f"- model: {model}; server RSS before the first burst: {baseline_mb:,.0f} MB; "
        f"{args.requests_per_client} requests per client (max_tokens 16; half with a 256x256 PNG, "
        "every fourth streamed); the disconnecting client asks for 200 tokens and leaves after 4 chunks.",
        f"- server threads: {args.threads}; machine: {os.cpu_count()} CPU cores, load average at the end "
        f"{os.getloadavg()[0]:.1f}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a saved WINGS checkpoint (default: a tiny random one, built here)")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32], help="concurrent clients per burst")
    parser.add_argument("--requests-per-client", type=int, default=4, help="requests each client sends")
    parser.add_argument("--burst-limit-s", type=float, default=300.0, help="a burst stops sending after this")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    args = parser.parse_args(argv)
    if min(args.clients) < 1 or args.requests_per_client < 1 or args.burst_limit_s <= 0:
        parser.error("--clients, --requests-per-client and --burst-limit-s must be positive")
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(args.model) if args.model else tiny_checkpoint(Path(scratch) / "tiny-wings")
        server = Server(model, args.threads, max_pending=max(args.clients) + 8)
        try:
            server.wait_ready()
            import httpx

            model_id = httpx.get(f"{server.base}/v1/models").json()["data"][0]["id"]
            image = image_url()
            asyncio.run(run_burst(server, model_id, 2, 1, False, args.burst_limit_s, image))  # warm up
            baseline = memory_mb(server.process.pid, "VmRSS")
            bursts = []
            for clients in args.clients:
                for disconnecting in (False, True):
                    bursts.append(
                        asyncio.run(
                            run_burst(
                                server,
                                model_id,
                                clients,
                                args.requests_per_client,
                                disconnecting,
                                args.burst_limit_s,
                                image,
                            )
                        )
                    )
                    print(
                        f"({clients} clients{' + leaver' if disconnecting else ''}: {bursts[-1].seconds:.0f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
            image_baseline = memory_mb(server.process.pid, "VmRSS")
            image_rows = []
            for images in (8, 2):
                statuses, peak, after = asyncio.run(run_image_burst(server, model_id, 4, images, 4000))
                image_rows.append((4, images, 4000, statuses, peak, after))
        finally:
            server.stop()
    print(render(bursts, baseline, args.model or "tiny random checkpoint (tests' tiny_checkpoint)", args))
    print(render_images(image_rows, image_baseline))


if __name__ == "__main__":
    main()
