"""One generation engine for `wings chat`, `wings generate` and `wings serve`.

The engine owns a WINGS model and its processor (both loaded from one checkpoint folder), turns
conversations into prompts, and runs `model.generate` (KV cache, learners' caches included) with
transformers' sampling options. One `generate` call runs at a time (a lock): a CPU or a single GPU
gains nothing from interleaving, and the global RNG that `seed` sets must not be shared.
"""

from __future__ import annotations

import copy
import os
import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from wings.data.images import ImageSource

# Finish reasons, as the OpenAI API names them.
FINISH_STOP = "stop"
FINISH_LENGTH = "length"


class PromptTooLong(ValueError):
    """The prompt alone fills the model's context window."""


class EngineBusy(RuntimeError):
    """More requests are waiting than the engine accepts (`max_pending`)."""


@dataclass
class Prompt:
    """A conversation to answer: chat messages whose text marks each image with `<image>`, and the images."""

    messages: list[dict[str, str]]
    images: list[ImageSource] = field(default_factory=list)


@dataclass
class SamplingOptions:
    """How to generate. `temperature` 0 means greedy decoding; `seed` makes sampling repeatable."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        self.stop = [text for text in self.stop if text]  # an empty stop string would stop before the first token


@dataclass
class Completion:
    """One answer: its text (cut before any stop string), why it ended, and token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class _CancelCriterion(StoppingCriteria):
    """Ends generation when the consumer sets the event (a stop string was seen, or the client left)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _TokenQueueStreamer(BaseStreamer):
    """Hands each new token id to a queue; the prompt (the first `put`) is skipped."""

    def __init__(self) -> None:
        self.tokens: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.tokens.put(int(token))

    def end(self) -> None:
        self.tokens.put(None)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest stop string, and whether one was found."""
    cuts = [text.find(s) for s in stop if s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters could be the start of a stop string (not safe to stream yet)."""
    longest = 0
    for s in stop:
        for size in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:size]):
                longest = size
                break
    return longest


class GenerationEngine:
    """A WINGS model + processor, answering `Prompt`s in batches (`complete`) or token by token (`stream`).

    Args:
        model: a `WingsForConditionalGeneration` in eval mode.
        processor: the `WingsProcessor` saved beside it.
        max_pending: how many requests may wait for the model at once before `EngineBusy` is raised.
        model_id: the name the server reports for this model.
    """

    def __init__(self, model, processor, max_pending: int = 64, model_id: str = "wings"):
        self.model = model.eval()
        self.processor = processor
        self.model_id = model_id
        self.max_pending = max_pending
        self.max_context = int(getattr(model.config.text_config, "max_position_embeddings", 0) or 0) or None
        self._lock = threading.Lock()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self.eos_token_ids = self._eos_token_ids()

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str = "auto", dtype: str = "auto", **kwargs
    ) -> "GenerationEngine":
        """Load the model and the processor saved together in `path` (`save_pretrained` of both)."""
        import wings  # noqa: F401  (registers the WINGS classes with the Auto classes)
        from transformers import AutoModelForImageTextToText

        from wings.model.processing_wings import WingsProcessor

        path = os.fspath(path)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{path}: no config.json; give a folder with a saved WINGS model and processor")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        try:
            processor = WingsProcessor.from_pretrained(path)
        except (OSError, TypeError, ValueError) as error:
            raise FileNotFoundError(
                f"{path}: no usable WINGS processor ({error}); save the processor beside the model "
                "(processor.save_pretrained(folder))"
            ) from error
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype).to(device)
        kwargs.setdefault("model_id", os.path.basename(os.path.normpath(path)) or "wings")
        return cls(model, processor, **kwargs)

    def _eos_token_ids(self) -> list[int]:
        """End-of-turn ids: the tokenizer's eos and whatever the model's generation config lists."""
        ids = set()
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        if configured is not None:
            ids.update([configured] if isinstance(configured, int) else configured)
        if self.processor.tokenizer.eos_token_id is not None:
            ids.add(self.processor.tokenizer.eos_token_id)
        return sorted(ids)

    # ------------------------------------------------------------------------------------ admission
    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Count a request as waiting/running; raise `EngineBusy` when `max_pending` are already in."""
        with self._pending_lock:
            if self._pending >= self.max_pending:
                raise EngineBusy(f"{self._pending} requests are already waiting; retry later")
            self._pending += 1
        try:
            yield
        finally:
            with self._pending_lock:
                self._pending -= 1

    # ------------------------------------------------------------------------------------ encoding
    def encode(self, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
        """Left-padded model inputs for `prompts`; raises ValueError (bad images, placeholders, length)."""
        batch = self.processor(
            conversations=[list(p.messages) for p in prompts],
            images=[list(p.images) for p in prompts],
            add_generation_prompt=True,
            padding_side="left",
        )
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        if self.max_context is not None and max(lengths) >= self.max_context:
            raise PromptTooLong(
                f"the prompt is {max(lengths)} tokens but the model's context is {self.max_context}; "
                "shorten the conversation or send fewer images"
            )
        # The collator leaves pixel_values out of a batch without images.
        return {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values") if key in batch}

    def _generate_kwargs(self, inputs: dict[str, torch.Tensor], options: SamplingOptions, cancel=None) -> dict:
        device = self.model.device
        inputs = {key: value.to(device) for key, value in inputs.items()}
        pixel_values = inputs.pop("pixel_values", None)
        if pixel_values is not None and pixel_values.shape[0]:
            inputs["pixel_values"] = pixel_values.to(self.model.dtype)
        max_new_tokens = options.max_new_tokens
        if self.max_context is not None:  # never run past the positions the model was trained for
            max_new_tokens = min(max_new_tokens, self.max_context - inputs["input_ids"].shape[1])
        config = copy.deepcopy(self.model.generation_config)
        sampling = options.temperature > 0
        config.update(
            do_sample=sampling,
            temperature=options.temperature if sampling else 1.0,
            top_p=options.top_p if sampling else 1.0,
            top_k=None if sampling else getattr(config, "top_k", None),
            max_new_tokens=max_new_tokens,
            max_length=None,
            eos_token_id=self.eos_token_ids or None,
            pad_token_id=self.processor.pad_token_id,
            stop_strings=options.stop or None,
            use_cache=True,
        )
        kwargs = dict(**inputs, generation_config=config)
        if options.stop:
            kwargs["tokenizer"] = self.processor.tokenizer  # StopStringCriteria needs it
        if cancel is not None:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_CancelCriterion(cancel)])
        return kwargs

    def _decode(self, token_ids: Sequence[int]) -> str:
        return self.processor.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    # ---------------------------------------------------------------------------------- generation
    def complete(self, prompts: Sequence[Prompt], options: SamplingOptions) -> list[Completion]:
        """Answer a batch of prompts (left-padded, one `generate` call)."""
        inputs = self.encode(prompts)
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        width = inputs["input_ids"].shape[1]
        with self._lock, torch.inference_mode():
            if options.seed is not None:
                torch.manual_seed(options.seed)
            sequences = self.model.generate(**self._generate_kwargs(inputs, options))
        completions = []
        for row, prompt_length in zip(sequences[:, width:].tolist(), prompt_lengths):
            completions.append(self._finish(row, int(prompt_length), options))
        return completions

    def _finish(self, generated: list[int], prompt_length: int, options: SamplingOptions) -> Completion:
        """Text and finish reason of one generated row (eos ends it; padding after eos is dropped)."""
        eos = set(self.eos_token_ids)
        ended_by_eos = False
        for position, token in enumerate(generated):
            if token in eos:
                generated, ended_by_eos = generated[:position], True
                break
        text, stopped = cut_at_stop(self._decode(generated), options.stop)
        finish = FINISH_STOP if ended_by_eos or stopped else FINISH_LENGTH
        return Completion(text, finish, prompt_length, len(generated) + int(ended_by_eos))

    def stream(self, prompt: Prompt, options: SamplingOptions) -> "TokenStream":
        """Start answering one prompt; iterate the result for text pieces as they are generated.

        Encoding happens here, so a bad prompt raises before anything is streamed.
        """
        inputs = self.encode([prompt])
        return TokenStream(self, inputs, options)


class TokenStream:
    """Text pieces of one answer as they come; `completion` holds the totals once iteration ends.

    Generation runs in a background thread (holding the engine's lock); closing the stream early
    (a client that went away) stops it at the next token.
    """

    def __init__(self, engine: GenerationEngine, inputs: dict[str, torch.Tensor], options: SamplingOptions):
        self.engine = engine
        self.options = options
        self.prompt_tokens = int(inputs["attention_mask"].sum())
        self.completion: Completion | None = None
        self._cancel = threading.Event()
        self._streamer = _TokenQueueStreamer()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(inputs,), daemon=True)
        self._thread.start()

    def _run(self, inputs: dict[str, torch.Tensor]) -> None:
        try:
            with self.engine._lock, torch.inference_mode():
                if self.options.seed is not None:
                    torch.manual_seed(self.options.seed)
                kwargs = self.engine._generate_kwargs(inputs, self.options, cancel=self._cancel)
                self.engine.model.generate(**kwargs, streamer=self._streamer)
        except BaseException as error:  # handed to the consumer, which re-raises it
            self._error = error
            self._streamer.tokens.put(None)

    def __iter__(self) -> Iterator[str]:
        eos = set(self.engine.eos_token_ids)
        stop = self.options.stop
        tokens: list[int] = []
        sent = 0
        ended_by_eos = stopped = False
        try:
            while True:
                token = self._streamer.tokens.get()
                if token is None:
                    break
                if token in eos:
                    ended_by_eos = True
                    break
                tokens.append(token)
                text, stopped = cut_at_stop(self.engine._decode(tokens), stop)
                if stopped:
                    self._cancel.set()
                    break
                if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                    continue
                safe = len(text) - held_back(text, stop)
                if safe > sent:
                    yield text[sent:safe]
                    sent = safe
            if self._error is not None:
                raise self._error
            # What was held back for a stop string that never came (or the text before the one that did).
            text = cut_at_stop(self.engine._decode(tokens), stop)[0]
            if len(text) > sent:
                yield text[sent:]
            finish = FINISH_STOP if ended_by_eos or stopped else FINISH_LENGTH
            self.completion = Completion(text, finish, self.prompt_tokens, len(tokens) + int(ended_by_eos))
        finally:
            self._cancel.set()  # a consumer that stops early (client gone) ends generation too
            self._thread.join()

    def text(self) -> str:
        """Consume the whole stream and return the answer."""
        return "".join(self)


__all__ = [
    "GenerationEngine",
    "Prompt",
    "SamplingOptions",
    "Completion",
    "TokenStream",
    "PromptTooLong",
    "EngineBusy",
    "FINISH_STOP",
    "FINISH_LENGTH",
]
