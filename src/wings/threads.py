"""The intra-op thread count of every command that computes (`--threads` on chat, generate, serve, eval, analyze,
train, build, demo and the quickstart): the given number, else `OMP_NUM_THREADS` when set, else measured.

On a shared CPU whose other cores are busy, OpenMP threads wait on each other and torch's default (every core)
can run several times slower than one thread (measured on a busy 2-core machine: `wings generate` 350 s against
23 s, identical answers); on an idle machine all cores are ~1.6x faster. So by default a matrix product is timed
with 1 thread and with every core, and the faster wins (more threads only when at least 10% faster).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

THREADS_ENV = "OMP_NUM_THREADS"


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of threads of at least 1")
    return value


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """`--threads N` with the same help and checks on every command."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help=f"torch intra-op threads (default: ${THREADS_ENV} when set, else 1 or all cores, "
        "whichever runs a matrix product faster right now).",
    )


def env_threads() -> int | None:
    """`OMP_NUM_THREADS` as a number, None when unset or empty; a bad value is an error naming the variable."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"{THREADS_ENV}={text!r}: {error}; unset it or give a number like 1") from None


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


PRODUCT_SHAPES = ((256, 576), (576, 1536))  # a batch of tokens through a SmolLM2-135M MLP matrix
PRODUCT_FLOPS = 4 * 2 * 256 * 576 * 1536  # the four products `product_seconds` times


def product_seconds() -> float:
    """Seconds for four float32 products of `PRODUCT_SHAPES` at torch's current thread count (after one to warm
    the thread pool). Its own random generator: a measurement in the middle of training draws nothing from the run's."""
    generator = torch.Generator().manual_seed(0)
    a, w = (torch.randn(*shape, generator=generator) for shape in PRODUCT_SHAPES)
    a @ w
    begin = time.perf_counter()
    for _ in range(4):
        a @ w
    return time.perf_counter() - begin


def measured_threads(limit: int | None = None) -> int:
    """The intra-op thread count, 1 or every core (at most `limit`), that runs a matrix product of a small LLM's
    sizes fastest right now. It takes ~0.3 s, so long jobs (`wings demo`) repeat it as the machine's load changes."""
    candidates = sorted({1, min(cores(), limit or cores())})
    if len(candidates) == 1:
        return 1
    best: dict[int, float] = {}
    for _ in range(3):  # interleaved rounds: a burst of load hits every candidate alike
        for threads in candidates:
            torch.set_num_threads(threads)
            best[threads] = min(best.get(threads, float("inf")), product_seconds())
    fewest = candidates[0]  # more threads only when clearly faster (10%): a tie keeps the core free
    return min(candidates, key=lambda threads: best[threads] * (1.0 if threads == fewest else 1.1))


def matmul_gflops(rounds: int = 5) -> float:
    """This machine's speed now: GFLOPS of `product_seconds`' float32 products at torch's current thread count
    (best of `rounds`). Beside a timing it says how fast the machine ran: this project's 2-core machine ran the
    same demo step at 1.0 s and at 1.8 s within one hour (docs/results/demo.md)."""
    return PRODUCT_FLOPS / min(product_seconds() for _ in range(rounds)) / 1e9


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Sapphire Rapids and later): bf16 matrix products there ran ~10x
    faster than float32 ones (one core, a SmolLM2-135M MLP matrix); without them the gain is not measured."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch's own check; private, so guarded
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def choose_threads(threads: int | None = None) -> tuple[int, str]:
    """(thread count, where it came from): the given number, else `OMP_NUM_THREADS`, else the measured choice."""
    if threads is not None:
        return threads, "--threads"
    from_env = env_threads()
    if from_env is not None:
        return from_env, THREADS_ENV
    return measured_threads(), "measured"


def set_threads(threads: int | None = None, announce: bool = False) -> int:
    """Set torch's intra-op threads to `choose_threads(threads)`; returns the number set. With `announce`, says
    so on stderr (stdout may be piped)."""
    number, source = choose_threads(threads)
    torch.set_num_threads(number)
    if announce:
        hint = "" if source == "--threads" else "; --threads N to fix it"
        print(f"threads: {torch.get_num_threads()} ({source}{hint})", file=sys.stderr, flush=True)
    return torch.get_num_threads()
