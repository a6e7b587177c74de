"""MLLM-Laws and the attention shift (WINGS.md, "Measuring forgetting and the attention shift").

For a sample with text before the image (V_before), the image (V_itself) and text after it (V_after), per
layer l of the LLM's own attention:

    a^l_{V*} = mean over heads of sum over query tokens i, key tokens j in V* of A^l[i, j]

LAWS_{V*} = [a^1_{V*}, ..., a^L_{V*}], and

    AttentionShift = 1 - mean over samples of pearson_over_layers(LAWS_{V_before}, LAWS_{V_after})

No per-layer normalisation (WINGS.md withdrew it): the curves are divided by the sample's number of query
tokens only, a constant per sample that changes no correlation and puts samples of different lengths on one
scale (for a one-image sample the three curves then sum to 1 at every layer). Samples whose before or after
curve is constant have no correlation: they are left out of the mean and counted (`num_undefined_shift`).

A model that does not see an image has no attention shift: without the image the two text segments sum to a
constant per layer, which forces pearson = -1 (a "shift" of 2) under any normalisation. Its shift is None
(n/a), never 2, and its samples are counted in `num_without_image`. Base LLMs get the same text with the image
removed (V_before tokens then V_after tokens), so their curves can still be plotted beside the MLLMs'.

Several images in one sample: V_before ends at the first image, V_after starts after the last one, every
image is V_itself, and the text between images belongs to no segment (neither summed as keys nor as queries).
Such samples are analysed with a warning and counted (`num_multi_image`).

Query tokens: WINGS.md sums over *all* query tokens i, so that is the default (`QUERY_TOKENS = "all"`);
`"after"` restricts i to the V_after tokens (the paper's figure reads the text after the image). The choice
is made in `query_mask` only.

The segment sums come from the model's own attention kernel, never from an L x L matrix: a wrapper kernel,
registered with transformers' `AttentionInterface` as `wings_analysis_<inner>`, appends three indicator value
channels (1 on the keys of one segment) so any kernel (SDPA, flash, eager) returns per query the attention
mass on each segment; we sum those channels over the chosen queries, layer by layer, and keep (layers, 3)
numbers. It wraps whatever kernel the LLM runs, `wings_sdpa` included, so the WINGS router still gets its
visual mass. (`_use_wings_attention` leaves names starting with `wings_` alone.)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from wings.model.attention import attend_with_indicators, base_attention_function

SEGMENTS: tuple[str, ...] = ("V_before", "V_itself", "V_after")
BEFORE, ITSELF, AFTER = range(3)
OUTSIDE = -1  # padding, or text between two images: in no segment
QUERY_TOKENS: str = "all"  # WINGS.md: "sum over query tokens i" -- every query token
QUERY_CHOICES: tuple[str, ...] = ("all", "after")
PREFIX = "wings_analysis_"


# ---------------------------------------------------------------------------------------------- segments
def segment_ids(is_visual: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L) segment index per token: 0 before the first visual token, 1 visual, 2 after the last, -1 else."""
    is_visual = is_visual.bool()
    seen = is_visual.long().cumsum(-1)
    total = seen[:, -1:]
    segments = torch.full_like(seen, OUTSIDE)
    segments[seen == 0] = BEFORE
    segments[(seen == total) & ~is_visual & (total > 0)] = AFTER
    segments[is_visual] = ITSELF
    if attention_mask is not None:
        segments[attention_mask[:, -segments.shape[1] :] == 0] = OUTSIDE
    return segments


def query_mask(segments: torch.Tensor, query_tokens: str = QUERY_TOKENS) -> torch.Tensor:
    """Which query tokens i the sum runs over: "all" (WINGS.md's definition) or "after" (V_after only)."""
    if query_tokens == "all":
        return segments != OUTSIDE
    if query_tokens == "after":
        return segments == AFTER
    raise ValueError(f"query_tokens={query_tokens!r}; use one of {QUERY_CHOICES}")


# ---------------------------------------------------------------------------------------------- metric
def laws_curves(segment_sums: torch.Tensor, num_queries: int) -> torch.Tensor:
    """(layers, 3) raw segment masses -> the LAWS curves: the same per query token (no per-layer normalisation;
    dividing by the sample's constant number of query tokens changes no correlation, WINGS.md)."""
    if num_queries < 1:
        raise ValueError("no query tokens to sum over (is the chosen segment empty?)")
    return segment_sums.double() / num_queries


def pearson(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor) -> float:
    """Pearson correlation; NaN when either series is constant (the correlation is undefined)."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    if any(float(v.max() - v.min()) <= 1e-12 * max(1.0, float(v.abs().max())) for v in (x, y)):
        return float("nan")  # constant up to rounding
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return max(-1.0, min(1.0, float((x * y).sum()) / denominator))


def attention_shift(laws: torch.Tensor) -> float:
    """1 - pearson(LAWS_{V_before}, LAWS_{V_after}) over layers, for one sample's (layers, 3) curves."""
    return 1.0 - pearson(laws[:, BEFORE], laws[:, AFTER])


def segment_sums_from_attentions(
    attentions: Sequence[torch.Tensor], segments: torch.Tensor, query_tokens: str = QUERY_TOKENS
) -> torch.Tensor:
    """The reference computation from full (B, H, L, L) attention matrices, one per layer: (layers, B, 3)."""
    queries = query_mask(segments, query_tokens).to(torch.float64)
    one_hot = torch.stack([(segments == s) for s in range(len(SEGMENTS))], -1).to(torch.float64)  # (B, L, 3)
    out = []
    for weights in attentions:
        per_query = torch.einsum("bhij,bjs->bhis", weights.double(), one_hot)  # mass of query i on each segment
        out.append(torch.einsum("bhis,bi->bhs", per_query, queries).mean(1))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------- kernel
@dataclass
class SegmentRecorder:
    """What the analysis kernel reads (segments of keys, chosen queries) and writes (sums per layer)."""

    key_segments: torch.Tensor  # (B, T) long, OUTSIDE where a key is in no segment
    queries: torch.Tensor  # (B, L) bool
    sums: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, 3) float32

    def stacked(self) -> torch.Tensor:
        if not self.sums:
            raise RuntimeError("no attention layer ran through the analysis kernel (is the model a Llama-family LLM?)")
        return torch.stack([self.sums[layer].float().cpu() for layer in sorted(self.sums)])


_ACTIVE: list[SegmentRecorder] = []  # the recorder of the forward pass in progress (a stack: one at a time)


def _inner_kernel(inner: str) -> Callable:
    # Plain "eager" has no registry entry (each model keeps its own); the Llama-family one is WINGS'. A flash
    # kernel must be told its own name (it would look for a hub kernel named after this wrapper).
    if inner == "eager" or inner.startswith("flash"):
        return base_attention_function(inner)
    return ALL_ATTENTION_FUNCTIONS[inner]


def make_segment_mass_attention(inner: str) -> Callable:
    """Wrap the kernel registered as `inner` so it also records, per layer, the attention mass per segment."""
    base = _inner_kernel(inner)

    def attention_with_segment_mass(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        recorder = _ACTIVE[-1] if _ACTIVE else None
        if recorder is None:
            return base(module, query, key, value, attention_mask, **kwargs)
        batch, keys = value.shape[0], value.shape[2]
        if recorder.key_segments.shape != (batch, keys):
            raise ValueError(
                f"segments cover {tuple(recorder.key_segments.shape)} tokens but the layer sees {batch} x {keys} keys "
                "(run the analysis without a KV cache, on exactly the tokens the segments describe)"
            )
        one_hot = torch.stack([recorder.key_segments == s for s in range(len(SEGMENTS))], -1)
        output, weights, mass = attend_with_indicators(
            base, module, query, key, value, attention_mask, one_hot, **kwargs
        )  # mass: (B, L, H, 3) per query and head
        chosen = recorder.queries.to(mass.device, mass.dtype)[:, -mass.shape[1] :, None, None]
        recorder.sums[module.layer_idx] = (mass * chosen).sum(1).mean(1)  # sum over queries, mean over heads
        return output, weights

    return attention_with_segment_mass


def register_analysis_attention(inner: str) -> str:
    """Register `wings_analysis_<inner>` (kernel and mask) with transformers, once; return its name."""
    name = PREFIX + inner
    if name not in ALL_ATTENTION_FUNCTIONS.valid_keys():
        if inner != "eager" and inner not in ALL_ATTENTION_FUNCTIONS.valid_keys():
            raise ValueError(f"attention implementation {inner!r} is not registered with transformers")
        AttentionInterface.register(name, make_segment_mass_attention(inner))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    return name


def llm_config(model: torch.nn.Module) -> Any:
    """The config whose `_attn_implementation` the decoder layers read: the LLM's inside a WINGS model."""
    language_model = getattr(model, "language_model", None)
    return language_model.config if language_model is not None else model.config


@contextmanager
def recording_segment_mass(model: torch.nn.Module, recorder: SegmentRecorder) -> Iterator[SegmentRecorder]:
    """Within the block, the model's LLM runs through the analysis kernel and fills `recorder`."""
    config = llm_config(model)
    inner = str(config._attn_implementation or "sdpa")
    if inner.startswith(PREFIX):
        raise RuntimeError("recording_segment_mass is already active on this model")
    config._attn_implementation_internal = register_analysis_attention(inner)
    _ACTIVE.append(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.remove(recorder)
        config._attn_implementation_internal = inner


# ---------------------------------------------------------------------------------------------- one pass
def sample_segments(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    before_length: int | None = None,
    after_start: int | None = None,
) -> torch.Tensor:
    """(B, L) segment index per token of `input_ids` as `model` reads them.

    Visual tokens are `config.image_token_id`; a model without vision needs `before_length` (the number of
    V_before tokens) and, where images were removed from between text, `after_start` (where V_after starts;
    default: right after V_before). Tokens in neither are in no segment.
    """
    image_token_id = getattr(model.config, "image_token_id", None)
    if image_token_id is not None and getattr(model, "vision_tower", None) is not None:
        is_visual = input_ids == image_token_id
    else:
        is_visual = torch.zeros_like(input_ids, dtype=torch.bool)
    if is_visual.any():
        return segment_ids(is_visual, attention_mask)
    if before_length is None:  # no image in the sequence: split text by position
        raise ValueError("a sample without an image needs before_length to tell V_before from V_after")
    after_start = before_length if after_start is None else after_start
    if attention_mask is not None:  # left padding: positions count real tokens only
        positions = attention_mask.long().cumsum(-1) - 1
    else:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape)
    segments = torch.full_like(positions, OUTSIDE)
    segments[positions < before_length] = BEFORE
    segments[positions >= after_start] = AFTER
    if attention_mask is not None:
        segments[attention_mask == 0] = OUTSIDE
    return segments


@torch.no_grad()
def sample_segment_sums(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    query_tokens: str = QUERY_TOKENS,
    before_length: int | None = None,
    after_start: int | None = None,
) -> torch.Tensor:
    """(layers, B, 3) attention mass per segment for a batch, from one forward pass with no KV cache.

    Segments as `sample_segments` finds them (`before_length`, `after_start`: for a model without vision).
    """
    segments = sample_segments(model, input_ids, attention_mask, before_length, after_start)
    device = next(model.parameters()).device
    recorder = SegmentRecorder(segments.to(device), query_mask(segments, query_tokens).to(device))
    kwargs: dict[str, Any] = {"input_ids": input_ids.to(device), "use_cache": False}
    if pixel_values is not None:
        kwargs["pixel_values"] = pixel_values.to(device)
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.to(device)
    with recording_segment_mass(model, recorder):
        model(**kwargs, logits_to_keep=1)
    return recorder.stacked()


# ---------------------------------------------------------------------------------------------- samples
@dataclass
class AnalysisSample:
    """One sample as token ids: the text before the first image, the image, the text after the last image.

    A sample with several images lists the rest in `between`: (text ids, image) pairs, in order after the
    first image; that text belongs to no segment.
    """

    before_ids: list[int]
    after_ids: list[int]
    image: Any = None  # a path / PIL image, or already-preprocessed pixel values (3, H, W)
    id: str = ""
    between: list[tuple[list[int], Any]] = field(default_factory=list)

    @property
    def images(self) -> list[Any]:
        """Every image of the sample, in order."""
        return ([self.image] if self.image is not None else []) + [image for _, image in self.between]


def model_inputs(model: torch.nn.Module, sample: AnalysisSample, processor: Any = None) -> dict[str, torch.Tensor]:
    """What `model` gets for `sample`: with vision, the text with each image's tokens in place; without, the
    text alone (before, any text between images, after)."""
    config = getattr(model, "config", None)
    vision = getattr(model, "vision_tower", None) is not None and bool(sample.images)
    image_tokens = [config.image_token_id] * config.image_seq_length if vision else []
    ids = list(sample.before_ids) + image_tokens
    for text_ids, _ in sample.between:
        ids += list(text_ids) + image_tokens
    ids += list(sample.after_ids)
    inputs: dict[str, torch.Tensor] = {"input_ids": torch.tensor([ids])}
    if vision:
        if processor is None and not all(isinstance(image, torch.Tensor) for image in sample.images):
            raise ValueError(f"sample {sample.id!r}: an image path needs the model's WingsProcessor")
        pixels = [
            image if isinstance(image, torch.Tensor) else processor.preprocess_images([image])[0]
            for image in sample.images
        ]
        inputs["pixel_values"] = torch.stack(pixels).to(next(model.parameters()).dtype)  # (images, 3, H, W)
    return inputs


def analyze_sample(
    model: torch.nn.Module, sample: AnalysisSample, processor: Any = None, query_tokens: str = QUERY_TOKENS
) -> dict[str, Any]:
    """LAWS curves (per segment, per layer) and the attention shift of one sample.

    The shift is None (n/a) when the model saw no image, NaN when a curve is constant over layers.
    """
    inputs = model_inputs(model, sample, processor)
    between_length = sum(len(text_ids) for text_ids, _ in sample.between)
    layout = {"before_length": len(sample.before_ids), "after_start": len(sample.before_ids) + between_length}
    segments = sample_segments(model, inputs["input_ids"], **layout)
    sums = sample_segment_sums(
        model, inputs["input_ids"], inputs.get("pixel_values"), query_tokens=query_tokens, **layout
    )[:, 0]
    laws = laws_curves(sums, int(query_mask(segments, query_tokens).sum()))
    # Without an image the two text segments sum to a constant per layer, which forces pearson = -1: a model that
    # does not see the image has no attention shift (WINGS.md), reported as None (n/a), never as 2.
    saw_image = "pixel_values" in inputs
    return {
        "id": sample.id,
        "num_images": len(sample.images),
        "laws": {name: laws[:, index].tolist() for index, name in enumerate(SEGMENTS)},
        "attention_shift": attention_shift(laws) if saw_image else None,
    }


def analyze_model(
    model: torch.nn.Module,
    samples: Sequence[AnalysisSample],
    processor: Any = None,
    query_tokens: str = QUERY_TOKENS,
) -> dict[str, Any]:
    """Mean LAWS curves and the attention shift averaged over samples.

    `attention_shift` is None (n/a) when the model saw no image in any sample; samples with a constant curve
    are left out of the mean and counted in `num_undefined_shift` (NaN if no sample is left); samples with
    several images are analysed with a warning and counted in `num_multi_image`.
    """
    if not samples:
        raise ValueError("no samples to analyse")
    multi_image = [sample.id for sample in samples if len(sample.images) > 1]
    if multi_image:
        shown = ", ".join(repr(sample_id) for sample_id in multi_image[:5]) + (", ..." if len(multi_image) > 5 else "")
        warnings.warn(
            f"{len(multi_image)} of {len(samples)} samples have several images ({shown}): V_before ends at "
            "the first image, V_after starts after the last, and the text between images belongs to no "
            "segment",
            stacklevel=2,
        )
    per_sample = [analyze_sample(model, sample, processor, query_tokens) for sample in samples]
    seen = [s["attention_shift"] for s in per_sample if s["attention_shift"] is not None]
    shifts = [shift for shift in seen if not math.isnan(shift)]
    curves = {
        name: torch.tensor([s["laws"][name] for s in per_sample], dtype=torch.float64).mean(0).tolist()
        for name in SEGMENTS
    }
    return {
        "laws": curves,
        "attention_shift": (sum(shifts) / len(shifts) if shifts else float("nan")) if seen else None,
        "num_samples": len(per_sample),
        "num_undefined_shift": len(seen) - len(shifts),  # a constant curve: left out
        "num_without_image": len(per_sample) - len(seen),  # the model saw no image: no shift (n/a)
        "num_multi_image": len(multi_image),  # text between images in no segment
        "query_tokens": query_tokens,
        "has_vision": getattr(model, "vision_tower", None) is not None,
        "samples": per_sample,
    }
