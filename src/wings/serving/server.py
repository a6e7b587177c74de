"""An OpenAI-compatible HTTP server for a WINGS model (FastAPI): `/v1/chat/completions`, `/v1/models`, `/health`.

Every failure a caller can cause is answered with a 4xx JSON body in the OpenAI shape
(``{"error": {"message", "type", "param", "code"}}``); an unexpected failure is a 500 in the same
shape with no traceback, and the server keeps serving. Requests wait for the model one at a time
(the engine's lock); more than `max_pending` waiting ones are refused with a 429.

A request is checked in order of cost: body size, JSON, fields, counts and lengths (no template
rendered, no image decoded), then the queue (429), then image headers (format, pixels; nothing
decoded), then the prompt's token length, and only then are images decoded, one at a time, each
shrunk to the vision tower's size at once. A client that disconnects (before or after the headers,
streaming or not) cancels its generation within one decoding step and frees its place.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from wings.data.formats import ContentPartError, content_parts
from wings.data.images import ImageLoadError, check_pixels, fit_within, image_header, load_image
from wings.serving.engine import (
    EngineBusy,
    GenerationCancelled,
    GenerationEngine,
    Prompt,
    PromptTooLong,
    SamplingOptions,
    TokenStream,
)

logger = logging.getLogger("wings.serve")


@dataclass
class ServerLimits:
    """What one request may ask for; anything over a limit is refused with a 4xx, never truncated silently."""

    max_request_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 16_000_000
    max_request_pixels: int = 32_000_000  # all images of one request together (width x height, summed)
    max_images: int = 8
    max_messages: int = 256
    max_text_chars: int = 262_144  # all text parts of one request together
    max_tokens: int = 2048
    default_max_tokens: int = 512
    max_stop_strings: int = 4  # as OpenAI
    max_stop_chars: int = 128  # per stop string
    retry_after_s: int = 1  # Retry-After of a 429
    concurrent_decodes: int = 2  # images decoded at once, all requests together (each up to max_image_pixels)
    remote_image_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"server limit {name} must be a positive number, got {value!r}")


class APIError(Exception):
    """An error answered in the OpenAI shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# ---------------------------------------------------------------------------------------- request schema
class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat completion request that a WINGS model can honour; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)  # what torch.manual_seed accepts
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1


# ------------------------------------------------------------------------------------------ translation
@dataclass
class ImageRef:
    """An image part not yet loaded: its URL and where it is in the request."""

    url: str
    where: str


@dataclass
class ParsedRequest:
    """A request's messages (images as placeholders) and image parts, checked for counts and lengths only."""

    messages: list[dict[str, str]]
    images: list[ImageRef]


class RequestTranslator:
    """Turns a validated request into the engine's `Prompt` and `SamplingOptions`, cheapest checks first.

    `options` and `parse` read only the request (no template, no image); `load_images` reads every image's
    header (format, size) before decoding any, and decodes them one at a time, each shrunk at once.
    """

    def __init__(
        self, engine: GenerationEngine, limits: ServerLimits, allow_local_images: bool, allow_remote_images: bool
    ):
        self.engine = engine
        self.limits = limits
        self.allow_local_images = allow_local_images
        self.allow_remote_images = allow_remote_images
        self.placeholder = engine.processor.image_token
        self._decoding = threading.BoundedSemaphore(limits.concurrent_decodes)

    def options(self, request: ChatCompletionRequest) -> SamplingOptions:
        if request.n != 1:
            raise APIError(400, "only n=1 is supported; send several requests instead", param="n")
        max_tokens = request.max_completion_tokens or request.max_tokens or self.limits.default_max_tokens
        if max_tokens > self.limits.max_tokens:
            raise APIError(
                400,
                f"max_tokens={max_tokens} is over this server's limit of {self.limits.max_tokens}",
                param="max_tokens",
            )
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        if len(stop) > self.limits.max_stop_strings:
            raise APIError(
                400, f"at most {self.limits.max_stop_strings} stop strings are allowed, got {len(stop)}", param="stop"
            )
        for index, text in enumerate(stop):
            if len(text) > self.limits.max_stop_chars:
                raise APIError(
                    400,
                    f"stop strings may be at most {self.limits.max_stop_chars} characters long; "
                    f"stop[{index}] has {len(text)}",
                    param="stop",
                )
        temperature = 1.0 if request.temperature is None else request.temperature  # OpenAI's default
        top_p = 1.0 if request.top_p is None else request.top_p
        return SamplingOptions(
            max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=request.seed
        )

    def parse(self, request: ChatCompletionRequest) -> ParsedRequest:
        """Messages with placeholders and the image parts; refuses too many messages, images or characters and a
        conversation whose images and messages alone cannot fit the context (linear, nothing rendered)."""
        limits = self.limits
        if len(request.messages) > limits.max_messages:
            raise APIError(
                400,
                f"{len(request.messages)} messages, over this server's limit of {limits.max_messages}",
                param="messages",
                code="context_length_exceeded",
            )
        messages, images, characters = [], [], 0
        for index, message in enumerate(request.messages):
            role = "system" if message.role == "developer" else message.role
            if isinstance(message.content, list):
                parts = content_parts([part.model_dump() for part in message.content], f"messages[{index}].content")
            else:
                parts = iter([("text", message.content or "", f"messages[{index}].content")])
            pieces = []
            try:
                for kind, value, where in parts:
                    if kind == "text":
                        characters += len(value)
                        if characters > limits.max_text_chars:
                            raise APIError(
                                400,
                                f"the messages' text is over this server's limit of {limits.max_text_chars} characters",
                                param=where,
                                code="context_length_exceeded",
                            )
                        if self.placeholder in value:
                            raise APIError(
                                400,
                                f"text may not contain {self.placeholder!r}; send images as image_url parts",
                                param=where,
                            )
                        pieces.append(value)
                    else:
                        if len(images) >= limits.max_images:
                            raise APIError(400, f"at most {limits.max_images} images per request", param=where)
                        images.append(ImageRef(value, where))
                        pieces.append(self.placeholder)
            except ContentPartError as error:
                raise APIError(400, error.reason, param=error.field) from None
            messages.append({"role": role, "content": "".join(pieces)})
        context = self.engine.max_context
        least = len(images) * self.engine.processor.image_seq_length + len(messages)  # a message is >= 1 token
        if context is not None and least >= context:
            raise APIError(
                400,
                f"{len(images)} image(s) and {len(messages)} message(s) take at least {least} tokens "
                f"but the model's context is {context}; send fewer",
                param="messages",
                code="context_length_exceeded",
            )
        return ParsedRequest(messages, images)

    def prompt(self, parsed: ParsedRequest, cancel: threading.Event | None = None) -> Prompt:
        """The engine's prompt: image headers checked, then the token length, then images decoded one by one."""
        payloads = [self.fetch_payload(ref) for ref in parsed.images]  # bytes or a local path; nothing decoded
        total = 0
        for ref, payload in zip(parsed.images, payloads):
            try:
                _, width, height = image_header(payload)
                check_pixels("the image", width, height, self.limits.max_image_pixels)
            except ImageLoadError as error:
                raise APIError(400, f"image: {error}", param=ref.where, code="invalid_image") from error
            total += width * height
            if total > self.limits.max_request_pixels:
                raise APIError(
                    400,
                    f"the request's images are over this server's limit of "
                    f"{self.limits.max_request_pixels:,} pixels in all",
                    param=ref.where,
                    code="invalid_image",
                )
        length = self.engine.prompt_length(Prompt(parsed.messages, payloads))
        context = self.engine.max_context
        if context is not None and length >= context:
            raise APIError(
                400,
                f"the prompt is {length} tokens but the model's context is {context}; shorten the "
                "conversation or send fewer images",
                param="messages",
                code="context_length_exceeded",
            )
        images = []
        processor = self.engine.processor
        for index, (ref, payload) in enumerate(zip(parsed.images, payloads)):
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled("the request was cancelled while its images were decoded")
            with self._decoding:  # full-size pixels exist for at most `concurrent_decodes` images at a time
                try:
                    image = load_image(payload, self.limits.max_image_pixels)
                except ImageLoadError as error:
                    raise APIError(400, f"image: {error}", param=ref.where, code="invalid_image") from error
                if processor.image_preprocess == "pad":  # what the processor does first: keep only the small image
                    image = fit_within(image, processor.image_size)
            payloads[index] = None  # the encoded bytes are no longer needed
            images.append(image)
        return Prompt(parsed.messages, images)

    def fetch_payload(self, ref: ImageRef) -> bytes | str:
        """The image's encoded bytes (a data URL, or a fetched http(s) URL) or its local path, when allowed."""
        url = ref.url
        try:
            if url.startswith("data:"):
                header, _, payload = url.partition(",")
                if ";base64" not in header:
                    raise ImageLoadError("only base64 data URLs are supported (data:image/png;base64,...)")
                try:
                    return base64.b64decode(payload, validate=True)
                except (binascii.Error, ValueError) as error:
                    raise ImageLoadError(f"the data URL is not valid base64 ({error})") from error
            if url.startswith(("http://", "https://")):
                if not self.allow_remote_images:
                    raise ImageLoadError(
                        "remote image URLs are disabled on this server; send a base64 data URL "
                        "(or start the server with --allow-remote-images)"
                    )
                return self.fetch(url)
            if not self.allow_local_images:
                raise ImageLoadError(
                    "local image paths are disabled on this server; send a base64 data URL "
                    "(or start the server with --allow-local-images)"
                )
            return url
        except ImageLoadError as error:
            raise APIError(400, f"image: {error}", param=ref.where, code="invalid_image") from error

    def fetch(self, url: str) -> bytes:
        limit = self.limits.max_request_bytes
        try:
            with urllib.request.urlopen(url, timeout=self.limits.remote_image_timeout_s) as response:  # noqa: S310
                data = response.read(limit + 1)
        except OSError as error:
            raise ImageLoadError(f"{url}: could not be fetched ({error})") from error
        if len(data) > limit:
            raise ImageLoadError(f"{url}: larger than {limit} bytes")
        return data


# ----------------------------------------------------------------------------------------------- the app
def create_app(
    engine: GenerationEngine,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    allow_local_images: bool = False,
    allow_remote_images: bool = False,
) -> FastAPI:
    """The FastAPI app serving `engine`; run it with uvicorn (see `wings serve`)."""
    limits = limits or ServerLimits()
    translator = RequestTranslator(engine, limits, allow_local_images, allow_remote_images)
    app = FastAPI(title="wings", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return APIError(error.status_code, str(error.detail), code=code).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _validation_api_error(error.errors()).response()

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s", request.url.path)  # the traceback stays in the server's log
        return APIError(500, "internal server error; see the server log", type="server_error").response()

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(
                401, "missing or incorrect API key; send 'Authorization: Bearer <key>'", code="invalid_api_key"
            )

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": engine.model_id}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request)
        return {
            "object": "list",
            "data": [{"id": engine.model_id, "object": "model", "created": created, "owned_by": "wings"}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = await _read_body(request, limits.max_request_bytes)
        payload = _parse_json(body)
        try:
            chat = ChatCompletionRequest.model_validate(payload)
        except ValidationError as error:
            raise _validation_api_error(error.errors()) from error
        if chat.model != engine.model_id:
            raise APIError(
                404,
                f"model {chat.model!r} is not served here; use {engine.model_id!r}",
                param="model",
                code="model_not_found",
            )
        options = translator.options(chat)
        parsed = translator.parse(chat)
        try:  # the queue, before any image is decoded
            admission = engine.admit()
        except EngineBusy as error:
            raise APIError(
                429,
                str(error),
                type="rate_limit_error",
                code="server_busy",
                headers={"Retry-After": str(limits.retry_after_s)},
            ) from error
        cancel = threading.Event()
        watcher = asyncio.create_task(_cancel_on_disconnect(request, cancel))
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        done = loop.create_future()

        def on_piece(piece: str | None) -> None:  # from the generation thread
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        def on_done() -> None:  # from the generation thread, once it has let go of the model
            admission.release()
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        started = False
        try:
            prompt = await run_in_threadpool(translator.prompt, parsed, cancel)
            stream = await run_in_threadpool(_prepare, engine.stream, prompt, options, cancel, on_piece, on_done)
            started = True
            completion_id = f"chatcmpl-{uuid.uuid4().hex}"
            if chat.stream:
                include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
                events = _sse_events(stream, pieces, completion_id, engine.model_id, include_usage, watcher)
                watcher = None  # the event stream stops it when it ends
                return StreamingResponse(events, media_type="text/event-stream")
            await done
            if stream.error is not None:
                if isinstance(stream.error, GenerationCancelled):
                    raise APIError(499, "the client closed the request", code="client_closed")
                raise stream.error
        except GenerationCancelled as error:
            raise APIError(499, "the client closed the request", code="client_closed") from error
        finally:
            if not started:
                admission.release()
            if watcher is not None:
                watcher.cancel()
        completion = stream.completion
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": engine.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text},
                    "finish_reason": completion.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage(completion),
        }

    return app


async def _cancel_on_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set `cancel` when the client goes away (the body is read already: the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


def _parse_json(body: bytes) -> Any:
    """The request's JSON; malformed or absurdly nested JSON is the client's mistake (400)."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise APIError(400, f"the request body is not valid JSON ({error})", code="invalid_json") from error
    except RecursionError as error:
        raise APIError(400, "the request body's JSON nests too deeply", code="invalid_json") from error


def _prepare(function, *args):
    """Call the engine, turning prompt problems (too long, placeholder mismatch) into 400s."""
    try:
        return function(*args)
    except PromptTooLong as error:
        raise APIError(400, str(error), param="messages", code="context_length_exceeded") from error
    except ValueError as error:
        raise APIError(400, str(error), param="messages") from error


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with a 413 as soon as it is known to be over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(
            413, f"the request body is {declared} bytes, over the limit of {limit}", code="request_too_large"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body is over the limit of {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _validation_api_error(errors: list[dict[str, Any]]) -> APIError:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
    return APIError(400, f"{param or 'request'}: {first.get('msg')}", param=param)


def _usage(completion) -> dict[str, int]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }


async def _sse_events(
    stream: TokenStream,
    pieces: asyncio.Queue,
    completion_id: str,
    model_id: str,
    include_usage: bool,
    watcher: asyncio.Task,
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`.

    Pieces arrive on an asyncio queue (no worker thread waits for them); the generation is cancelled when
    this stream is closed early, and by `watcher` when the client disconnects, whichever comes first."""
    created = int(time.time())

    def chunk(delta: dict | None, finish_reason: str | None = None, **extra: Any) -> str:
        choices = (
            [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
        )
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_id,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        while (piece := await pieces.get()) is not None:
            yield chunk({"content": piece})
        if stream.error is None:
            completion = stream.completion
            yield chunk({}, completion.finish_reason)
            if include_usage:
                yield chunk(None, usage=_usage(completion))
            yield "data: [DONE]\n\n"
        elif not isinstance(stream.error, GenerationCancelled):  # headers are sent: report in the stream
            logger.error("generation failed while streaming", exc_info=stream.error)
            error = {
                "message": "generation failed; see the server log",
                "type": "server_error",
                "param": None,
                "code": None,
            }
            yield f"data: {json.dumps({'error': error})}\n\n"
    finally:
        stream.cancel()  # a stream closed early (client gone) stops the generation after its current step
        watcher.cancel()


__all__ = ["create_app", "ServerLimits", "APIError", "ChatCompletionRequest"]
