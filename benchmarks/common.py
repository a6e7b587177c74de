"""What every benchmark table shares: models by size, synthetic batches, interleaved timing, peak memory, tables.

Timing: one untimed warmup call per variant, then `repeats` rounds in which every variant runs once (the order
rotates each round), so a burst of load from other processes hits the compared variants alike; a table reports
the median of each variant and the ratio of medians. Absolute seconds differ between runs on a shared machine,
ratios measured in the same run are what to compare.

Peak memory, on CPU: glibc is told to serve every allocation of 64 KiB or more with its own mmap and to give it
back on free (`mallopt`), so the resident set follows torch's live tensors; the kernel's peak-RSS counter is reset
before the measured call (`/proc/self/clear_refs`) and read after it. The figure is the peak resident memory
*above* what was resident before the call (for a training step: weights and optimizer state, gradients being
freed after every step): the activations, gradients and temporaries of that call. On a GPU:
`torch.cuda.max_memory_allocated` minus the allocation before the call, the same quantity.
"""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from wings.data.formats import IGNORE_INDEX
from wings.model.builder import load_vision_tower
from wings.model.modeling_wings import WingsForConditionalGeneration
from wings.model.registry import DEMO_LLM, load_llm
from wings.training.stages import STAGES, prepare_model_for_stage

# Model sizes: "demo" is the demo's model; "small" keeps SmolLM2's width and weights but only its first 6 layers
# (for tables whose variants are too slow at 30 layers on a CPU); "tiny" is for --quick runs and the test.
SIZES = {
    "demo": "SmolLM2-135M-Instruct (30 layers, d=576, 9 heads, vocab 49,152) + siglip-scratch-64 (64 visual tokens)",
    "small": "SmolLM2-135M-Instruct cut to its first 6 layers (d=576, 9 heads) + siglip-scratch-64",
    "tiny": "random Llama (4 layers, d=64, 4 heads, vocab 512) + siglip-scratch-32 (16 visual tokens)",
}
SMALL_LAYERS = 6
IMAGE_POSITION = 16  # text before the image, as in a conversation


def configure_malloc() -> None:
    """Large allocations via mmap, returned on free, so RSS tracks live tensors (see the module docstring)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ----- models ---------------------------------------------------------------------------------------------------
def build_llm(size: str) -> PreTrainedModel:
    """The plain LLM of a size (the base LLM of the generation table; the LLM inside every WINGS model)."""
    if size == "tiny":
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
        )
        config._attn_implementation = "sdpa"
        return AutoModelForCausalLM.from_config(config)
    llm, _ = load_llm(DEMO_LLM)
    if size == "small":
        llm.model.layers = llm.model.layers[:SMALL_LAYERS]
        llm.config.num_hidden_layers = SMALL_LAYERS
        if getattr(llm.config, "layer_types", None):
            llm.config.layer_types = llm.config.layer_types[:SMALL_LAYERS]
    elif size != "demo":
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    return llm


def build_model(size: str, learners: str, attn: str = "sdpa") -> WingsForConditionalGeneration:
    """A WINGS model (`learners` "wings" / "visual") or the LLaVA-style baseline ("none") of a size."""
    tower = load_vision_tower("siglip-scratch-32" if size == "tiny" else "siglip-scratch-64")
    model = WingsForConditionalGeneration.from_llm_and_vision(
        build_llm(size), tower, learners=learners, attn_implementation=attn
    )
    return model.to(device())


def training_setup(model: WingsForConditionalGeneration, stage: str) -> torch.optim.Optimizer:
    """Freeze as the stage says and return its AdamW (per-group learning rates)."""
    model.train()
    rates = prepare_model_for_stage(model, STAGES[stage])
    groups = model.parameter_groups()
    params = [{"params": [p for _, p in groups[group]], "lr": rate} for group, rate in rates.items()]
    return torch.optim.AdamW(params)


def make_batch(
    model: WingsForConditionalGeneration,
    length: int,
    batch: int = 1,
    image: bool = True,
    labelled: float = 0.25,
) -> dict[str, torch.Tensor]:
    """Random token ids with one image after IMAGE_POSITION text tokens; the last `labelled` share is labelled."""
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.text_config.vocab_size
    ids = torch.randint(5, vocab - 1, (batch, length), generator=generator)
    inputs: dict[str, torch.Tensor] = {}
    if image:
        n = model.config.image_seq_length
        ids[:, IMAGE_POSITION : IMAGE_POSITION + n] = model.config.image_token_id
        size = model.config.vision_config.image_size
        inputs["pixel_values"] = torch.randn(batch, 3, size, size, generator=generator)
    labels = ids.clone()
    labels[:, : length - max(1, int(length * labelled))] = IGNORE_INDEX
    inputs.update(input_ids=ids, labels=labels)
    return {key: value.to(device()) for key, value in inputs.items()}


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict, loss_fn=None) -> None:
    """One optimisation step: forward, backward, AdamW update; gradients are freed after it, so that the memory at
    rest between steps is weights + optimizer state and a step's peak includes its gradients."""
    loss = model(**batch).loss if loss_fn is None else loss_fn(model, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# ----- measuring ------------------------------------------------------------------------------------------------
def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def peak_memory(fn: Callable[[], object]) -> float:
    """Run `fn` once; MiB of peak memory above what was in use before the call (module docstring)."""
    if torch.cuda.is_available():
        synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets the peak-RSS counter (VmHWM) to the current RSS
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


@dataclass
class Measured:
    """Seconds of every timed call of one variant, and the peak memory of one of them."""

    seconds: list[float] = field(default_factory=list)
    peak_mib: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def compare(
    variants: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    memory: bool = False,
) -> dict[str, Measured]:
    """Interleaved timing of `variants` (rotating order each round); with `memory`, round 0 also measures peaks."""
    results = {name: Measured() for name in variants}
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            timed = variants[name]
            if memory and round_index == 0:
                start = time.perf_counter()
                results[name].peak_mib = peak_memory(lambda: (timed(), synchronize()))
            else:
                start = time.perf_counter()
                timed()
                synchronize()
            results[name].seconds.append(time.perf_counter() - start)
    return results


# ----- tables ---------------------------------------------------------------------------------------------------
@dataclass
class Table:
    """A Markdown table with a title and notes under it."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(self.header) + " |",
            "|" + "|".join("---" for _ in self.header) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def ratio(numerator: float | None, denominator: float | None) -> str:
    """`numerator / denominator` to two decimals, "-" when undefined (tiny models allocate below the mmap size)."""
    if numerator is None or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}"


def target_cell(met: bool) -> str:
    return "met" if met else "**MISSED**"


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def machine_description() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}){gpu}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op thread(s); load average at start {os.getloadavg()[0]:.1f}"
    )
