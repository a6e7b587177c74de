"""One generation engine for `wings chat`, `wings generate` and `wings serve`.

The engine owns a WINGS model and its processor (both loaded from one checkpoint folder), turns
conversations into prompts, and runs `model.generate` (KV cache, learners' caches included) with
transformers' sampling options. One `generate` call runs at a time (a lock): a CPU or a single GPU
gains nothing from interleaving, and the global RNG that `seed` sets must not be shared.

Every decoding step ends in `_Progress`, which decodes each row's new token incrementally, looks for eos
and stop strings in the new text only (linear in the answer), and stops every row once the request is
cancelled (a client that went away): a cancelled request costs at most one more step, and one still
waiting for the lock never starts.
"""

from __future__ import annotations

import collections
import copy
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForImageTextToText, StoppingCriteria, StoppingCriteriaList

import wings  # noqa: F401  (registers the WINGS classes with the Auto classes)
from wings.data.images import ImageSource
from wings.model.processing_wings import WingsCollator, WingsProcessor

# Finish reasons, as the OpenAI API names them.
FINISH_STOP = "stop"
FINISH_LENGTH = "length"


class PromptTooLong(ValueError):
    """The prompt alone fills the model's context window."""


class EngineBusy(RuntimeError):
    """More requests are waiting than the engine accepts (`max_pending`)."""


class GenerationCancelled(RuntimeError):
    """The request was cancelled (its client went away) before its generation started."""


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


class IncrementalText:
    """The text of a growing token sequence, decoded a few tokens at a time, and the earliest stop string in it.

    Each new token decodes only the last few tokens (the window since the last complete character), and a
    stop string is looked for only where it could end in the new text, so an answer of n tokens costs
    O(n x the longest stop string) instead of decoding and searching the whole answer at every token.
    """

    MAX_WINDOW = 16  # tokens that may stay undecodable (half a character) before their text is taken as is

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()):
        self.decode = decode
        self.stop = list(stop)
        self.longest_stop = max((len(s) for s in self.stop), default=0)
        self.tokens: list[int] = []
        self.text = ""
        self.stop_at: int | None = None  # where the earliest stop string starts in `text`
        self._prefix = 0  # tokens[_prefix:_read] were decoded last time (context for the next piece)
        self._read = 0

    def add(self, token: int) -> None:
        self.tokens.append(token)
        self._catch_up(final=False)

    def _catch_up(self, final: bool) -> None:
        before = self.decode(self.tokens[self._prefix : self._read])
        now = self.decode(self.tokens[self._prefix :])
        incomplete = now.endswith("\ufffd") and len(self.tokens) - self._read < self.MAX_WINDOW
        if len(now) <= len(before) or (incomplete and not final):
            return  # nothing new yet, or half of a multi-byte character: wait for the rest
        start = len(self.text)
        self.text += now[len(before) :]
        self._prefix, self._read = self._read, len(self.tokens)
        if self.stop and self.stop_at is None:
            window = max(0, start - self.longest_stop + 1)
            found = [at for at in (self.text.find(s, window) for s in self.stop) if at >= 0]
            self.stop_at = min(found) if found else None

    def final(self) -> str:
        """The whole text (an undecodable tail included), cut before the earliest stop string."""
        if self._read < len(self.tokens):
            self._catch_up(final=True)
        return self.text if self.stop_at is None else self.text[: self.stop_at]

    def safe(self) -> str:
        """The text that can be shown now: before a stop string, without a tail that could start one."""
        if self.stop_at is not None:
            return self.text[: self.stop_at]
        if not self.stop:
            return self.text
        return self.text[: len(self.text) - held_back(self.text[-self.longest_stop :], self.stop)]


@dataclass
class GenerationRecord:
    """What one `generate` call did: decoding steps run, and whether it was cancelled (kept for tests and logs)."""

    rows: int
    steps: int = 0
    cancelled: bool = False
    finished: bool = False
    cancel: threading.Event | None = field(default=None, repr=False)  # the request's cancellation, once asked


class _Progress(StoppingCriteria):
    """Runs after every decoding step: incremental text, eos and stop strings per row, cancellation for all."""

    def __init__(
        self,
        engine: GenerationEngine,
        rows: int,
        options: SamplingOptions,
        cancel: threading.Event | None,
        on_step: Callable[[_Progress], None] | None = None,
    ):
        self.texts = [IncrementalText(engine._decode, options.stop) for _ in range(rows)]
        self.ended_by_eos = [False] * rows
        self.eos = set(engine.eos_token_ids)
        self.cancel = cancel
        self.on_step = on_step
        self.record = GenerationRecord(rows, cancel=cancel)

    def done(self, row: int) -> bool:
        return self.ended_by_eos[row] or self.texts[row].stop_at is not None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.record.steps += 1
        for row, token in enumerate(input_ids[:, -1].tolist()):
            if self.done(row):
                continue  # padding after the row ended
            if token in self.eos:
                self.ended_by_eos[row] = True
            else:
                self.texts[row].add(int(token))
        if self.on_step is not None:
            self.on_step(self)
        cancelled = self.cancel is not None and self.cancel.is_set()
        self.record.cancelled |= cancelled
        return torch.tensor(
            [cancelled or self.done(row) for row in range(len(self.texts))], dtype=torch.bool, device=input_ids.device
        )

    def completion(self, row: int, prompt_tokens: int) -> Completion:
        text = self.texts[row]
        answer = text.final()
        finish = FINISH_STOP if self.ended_by_eos[row] or text.stop_at is not None else FINISH_LENGTH
        return Completion(answer, finish, prompt_tokens, len(text.tokens) + int(self.ended_by_eos[row]))


class Admission:
    """A request's place among the `max_pending` the engine accepts; `release` (idempotent) frees it."""

    def __init__(self, engine: GenerationEngine):
        self._engine = engine
        self._released = False

    def release(self) -> None:
        with self._engine._pending_lock:
            if not self._released:
                self._released = True
                self._engine._pending -= 1


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
        self.recent: collections.deque[GenerationRecord] = collections.deque(maxlen=64)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str = "auto", dtype: str = "auto", **kwargs
    ) -> GenerationEngine:
        """Load the model and the processor saved together in `path` (`save_pretrained` of both)."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: no such folder; give a folder with a saved WINGS model and processor")
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
    @property
    def pending(self) -> int:
        """Requests admitted and not yet finished (waiting for the model or generating)."""
        return self._pending

    @property
    def busy(self) -> bool:
        """Whether a generation holds the model now."""
        return self._lock.locked()

    def admit(self) -> Admission:
        """Count a request as waiting/running; raise `EngineBusy` when `max_pending` are already in."""
        with self._pending_lock:
            if self._pending >= self.max_pending:
                raise EngineBusy(f"{self._pending} requests are already waiting; retry later")
            self._pending += 1
        return Admission(self)

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """`admit` for a `with` block."""
        admission = self.admit()
        try:
            yield
        finally:
            admission.release()

    @contextmanager
    def _turn(self, cancel: threading.Event | None) -> Iterator[None]:
        """Hold the model; a request cancelled while waiting gives up its place (`GenerationCancelled`)."""
        while not self._lock.acquire(timeout=0.05):
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled("the request was cancelled while waiting for the model")
        try:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled("the request was cancelled while waiting for the model")
            yield
        finally:
            self._lock.release()

    # ------------------------------------------------------------------------------------ encoding
    def prompt_length(self, prompt: Prompt) -> int:
        """Tokens of the prompt, images expanded, from the rendered text alone (no image is decoded)."""
        rendered = self.processor.render(prompt.messages, add_generation_prompt=True)
        tokens = len(self.processor.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        return tokens + len(prompt.images) * (self.processor.image_seq_length - 1)

    def encode(self, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
        """Left-padded model inputs for `prompts`; raises ValueError (bad images, placeholders, length).

        Each prompt is rendered once and tokenized (linear in its length: no per-message prefix rendering,
        which only training's labels need), and its length is checked before any image is preprocessed.
        """
        samples = []
        for prompt in prompts:
            rendered = self.processor.render(list(prompt.messages), add_generation_prompt=True)
            length = len(self.processor.tokenizer(rendered, add_special_tokens=False)["input_ids"])
            length += len(prompt.images) * (self.processor.image_seq_length - 1)
            if self.max_context is not None and length >= self.max_context:
                raise PromptTooLong(
                    f"the prompt is {length} tokens but the model's context is {self.max_context}; "
                    "shorten the conversation or send fewer images"
                )
            samples.append(self.processor.encode_text(rendered, list(prompt.images)))
        batch = WingsCollator(self.processor.pad_token_id, padding_side="left")(samples)
        # The collator leaves pixel_values out of a batch without images.
        return {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values") if key in batch}

    def _generate_kwargs(self, inputs: dict[str, torch.Tensor], options: SamplingOptions, progress: _Progress) -> dict:
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
            use_cache=True,
        )
        # Stop strings are matched by `_Progress` (transformers' StopStringCriteria builds vocabulary-sized
        # tables per stop string and caches them: gigabytes for one long string).
        return dict(**inputs, generation_config=config, stopping_criteria=StoppingCriteriaList([progress]))

    def _decode(self, token_ids: Sequence[int]) -> str:
        return self.processor.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def _generate(
        self,
        inputs: dict[str, torch.Tensor],
        options: SamplingOptions,
        progress: _Progress,
        cancel: threading.Event | None,
    ) -> None:
        """One `generate` call holding the model; `progress` collects the text."""
        with self._turn(cancel), torch.inference_mode():
            self.recent.append(progress.record)
            if options.seed is not None:
                torch.manual_seed(options.seed)
            self.model.generate(**self._generate_kwargs(inputs, options, progress))
            progress.record.finished = True

    # ---------------------------------------------------------------------------------- generation
    def complete(
        self, prompts: Sequence[Prompt], options: SamplingOptions, cancel: threading.Event | None = None
    ) -> list[Completion]:
        """Answer a batch of prompts (left-padded, one `generate` call).

        Setting `cancel` ends the generation after the current step (the answers are then cut short);
        a request cancelled before it got the model raises `GenerationCancelled`.
        """
        inputs = self.encode(prompts)
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        progress = _Progress(self, len(prompts), options, cancel)
        self._generate(inputs, options, progress, cancel)
        return [progress.completion(row, int(length)) for row, length in enumerate(prompt_lengths)]

    def stream(
        self,
        prompt: Prompt,
        options: SamplingOptions,
        cancel: threading.Event | None = None,
        on_piece: Callable[[str | None], None] | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> TokenStream:
        """Start answering one prompt; iterate the result for text pieces as they are generated.

        Encoding happens here, so a bad prompt raises before anything is streamed. See `TokenStream` for
        `cancel`, `on_piece` and `on_done`.
        """
        inputs = self.encode([prompt])
        return TokenStream(self, inputs, options, cancel, on_piece, on_done)


class TokenStream:
    """Text pieces of one answer as they come; `completion` holds the totals once generation ends.

    Generation runs in a background thread (holding the engine's lock). `cancel()` (or the `cancel` event
    given) ends it after the current decoding step; so does closing the iteration early. Pieces go to
    `on_piece` (from the generation thread, then `None` at the end) when given, else to the iterator;
    `on_done` is called once the generation thread has let go of the model.
    """

    def __init__(
        self,
        engine: GenerationEngine,
        inputs: dict[str, torch.Tensor],
        options: SamplingOptions,
        cancel: threading.Event | None = None,
        on_piece: Callable[[str | None], None] | None = None,
        on_done: Callable[[], None] | None = None,
    ):
        self.engine = engine
        self.options = options
        self.prompt_tokens = int(inputs["attention_mask"].sum())
        self.completion: Completion | None = None
        self.error: BaseException | None = None
        self.cancel_event = cancel if cancel is not None else threading.Event()
        self._pieces: queue.Queue = queue.Queue()
        self._on_piece = on_piece if on_piece is not None else self._pieces.put
        self._on_done = on_done
        self._sent = 0
        self.progress = _Progress(engine, 1, options, self.cancel_event, on_step=self._emit)
        self._thread = threading.Thread(target=self._run, args=(inputs,), daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """End the generation after the current decoding step (never blocks)."""
        self.cancel_event.set()

    def _emit(self, progress: _Progress) -> None:
        safe = progress.texts[0].safe()
        if safe.endswith("\ufffd"):
            return
        if len(safe) > self._sent:
            self._on_piece(safe[self._sent :])
            self._sent = len(safe)

    def _run(self, inputs: dict[str, torch.Tensor]) -> None:
        try:
            self.engine._generate(inputs, self.options, self.progress, self.cancel_event)
            self.completion = self.progress.completion(0, self.prompt_tokens)
            if len(self.completion.text) > self._sent:  # held back for a stop string that never came
                self._on_piece(self.completion.text[self._sent :])
        except BaseException as error:  # handed to the consumer, which re-raises it
            self.error = error
        finally:
            try:
                self._on_piece(None)
            finally:
                if self._on_done is not None:
                    self._on_done()

    def __iter__(self) -> Iterator[str]:
        try:
            while True:
                piece = self._pieces.get()
                if piece is None:
                    break
                yield piece
            if self.error is not None:
                raise self.error
        finally:
            self.cancel()  # a consumer that stops early (client gone) ends generation too
            if threading.current_thread() is not self._thread:  # a finaliser may run on the generation thread
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
    "IncrementalText",
    "PromptTooLong",
    "GenerationCancelled",
    "EngineBusy",
    "FINISH_STOP",
    "FINISH_LENGTH",
]
