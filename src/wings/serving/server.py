"""An OpenAI-compatible HTTP server for a WINGS model (FastAPI): `/v1/chat/completions`, `/v1/models`, `/health`.

Every failure a caller can cause is answered with a 4xx JSON body in the OpenAI shape
(``{"error": {"message", "type", "param", "code"}}``); an unexpected failure is a 500 in the same
shape with no traceback, and the server keeps serving. Requests wait for the model one at a time
(the engine's lock); more than `max_pending` waiting ones are refused with a 429.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import time
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any, Iterator, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from wings.data.images import ImageLoadError, load_image
from wings.serving.engine import EngineBusy, GenerationEngine, Prompt, PromptTooLong, SamplingOptions

logger = logging.getLogger("wings.serve")


@dataclass
class ServerLimits:
    """What one request may ask for; anything over a limit is refused with a 4xx, never truncated silently."""

    max_request_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 16_000_000
    max_images: int = 8
    max_tokens: int = 2048
    default_max_tokens: int = 512
    max_stop_strings: int = 4
    remote_image_timeout_s: float = 10.0


class APIError(Exception):
    """An error answered in the OpenAI shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


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
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1


# ------------------------------------------------------------------------------------------ translation
class RequestTranslator:
    """Turns a validated request into the engine's `Prompt` and `SamplingOptions` (images loaded and checked)."""

    def __init__(self, engine: GenerationEngine, limits: ServerLimits, allow_local_images: bool,
                 allow_remote_images: bool):
        self.engine = engine
        self.limits = limits
        self.allow_local_images = allow_local_images
        self.allow_remote_images = allow_remote_images
        self.placeholder = engine.processor.image_token

    def options(self, request: ChatCompletionRequest) -> SamplingOptions:
        if request.n != 1:
            raise APIError(400, "only n=1 is supported; send several requests instead", param="n")
        max_tokens = request.max_completion_tokens or request.max_tokens or self.limits.default_max_tokens
        if max_tokens > self.limits.max_tokens:
            raise APIError(400, f"max_tokens={max_tokens} is over this server's limit of {self.limits.max_tokens}",
                           param="max_tokens")
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        if len(stop) > self.limits.max_stop_strings:
            raise APIError(400, f"at most {self.limits.max_stop_strings} stop strings are allowed", param="stop")
        temperature = 1.0 if request.temperature is None else request.temperature  # OpenAI's default
        top_p = 1.0 if request.top_p is None else request.top_p
        return SamplingOptions(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop,
                               seed=request.seed)

    def prompt(self, request: ChatCompletionRequest) -> Prompt:
        messages, images = [], []
        for index, message in enumerate(request.messages):
            role = "system" if message.role == "developer" else message.role
            parts = message.content if isinstance(message.content, list) else [
                ContentPart(type="text", text=message.content or "")]
            pieces = []
            for part_index, part in enumerate(parts):
                where = f"messages[{index}].content" + (f"[{part_index}]" if isinstance(message.content, list) else "")
                if part.type == "text":
                    if part.text is None:
                        raise APIError(400, "a text part needs a 'text' string", param=where)
                    if self.placeholder in part.text:
                        raise APIError(400, f"text may not contain {self.placeholder!r}; send images as image_url "
                                            "parts", param=where)
                    pieces.append(part.text)
                else:
                    if part.image_url is None:
                        raise APIError(400, "an image_url part needs {'image_url': {'url': ...}}", param=where)
                    if len(images) >= self.limits.max_images:
                        raise APIError(400, f"at most {self.limits.max_images} images per request", param=where)
                    images.append(self.load(part.image_url.url, where))
                    pieces.append(self.placeholder)
            messages.append({"role": role, "content": "".join(pieces)})
        return Prompt(messages, images)

    def load(self, url: str, where: str) -> Image.Image:
        """A checked RGB image from a data URL, or (when enabled) a local path or an http(s) URL."""
        max_pixels = self.limits.max_image_pixels
        try:
            if url.startswith("data:"):
                header, _, payload = url.partition(",")
                if ";base64" not in header:
                    raise ImageLoadError("only base64 data URLs are supported (data:image/png;base64,...)")
                try:
                    data = base64.b64decode(payload, validate=True)
                except (binascii.Error, ValueError) as error:
                    raise ImageLoadError(f"the data URL is not valid base64 ({error})") from error
                return load_image(data, max_pixels)
            if url.startswith(("http://", "https://")):
                if not self.allow_remote_images:
                    raise ImageLoadError("remote image URLs are disabled on this server; send a base64 data URL "
                                         "(or start the server with --allow-remote-images)")
                return load_image(self.fetch(url), max_pixels)
            if not self.allow_local_images:
                raise ImageLoadError("local image paths are disabled on this server; send a base64 data URL "
                                     "(or start the server with --allow-local-images)")
            return load_image(url, max_pixels)
        except ImageLoadError as error:
            raise APIError(400, f"image: {error}", param=where, code="invalid_image") from error

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
            raise APIError(401, "missing or incorrect API key; send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": engine.model_id}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request)
        return {"object": "list", "data": [{"id": engine.model_id, "object": "model", "created": created,
                                            "owned_by": "wings"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = await _read_body(request, limits.max_request_bytes)
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise APIError(400, f"the request body is not valid JSON ({error})", code="invalid_json") from error
        try:
            chat = ChatCompletionRequest.model_validate(payload)
        except ValidationError as error:
            raise _validation_api_error(error.errors()) from error
        if chat.model != engine.model_id:
            raise APIError(404, f"model {chat.model!r} is not served here; use {engine.model_id!r}", param="model",
                           code="model_not_found")
        options = translator.options(chat)
        prompt = await run_in_threadpool(translator.prompt, chat)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        admission = engine.admitted()
        try:
            admission.__enter__()
        except EngineBusy as error:
            raise APIError(429, str(error), type="rate_limit_error", code="server_busy") from error
        try:
            if chat.stream:
                stream = await run_in_threadpool(_prepare, engine.stream, prompt, options)
                include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
                events = _sse_events(stream, completion_id, engine.model_id, include_usage, admission)
                admission = None  # the event generator releases it when the stream ends
                return StreamingResponse(events, media_type="text/event-stream")
            [completion] = await run_in_threadpool(_prepare, engine.complete, [prompt], options)
        finally:
            if admission is not None:
                admission.__exit__(None, None, None)
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": engine.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                         "finish_reason": completion.finish_reason, "logprobs": None}],
            "usage": _usage(completion),
        }

    return app


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
        raise APIError(413, f"the request body is {declared} bytes, over the limit of {limit}",
                       code="request_too_large")
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
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}


def _sse_events(stream, completion_id: str, model_id: str, include_usage: bool, admission) -> Iterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    created = int(time.time())

    def chunk(delta: dict, finish_reason: str | None = None, **extra: Any) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                             "logprobs": None}]
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                "choices": choices, **extra}
        return f"data: {json.dumps(body)}\n\n"

    pieces = iter(stream)
    try:
        yield chunk({"role": "assistant", "content": ""})
        for piece in pieces:
            yield chunk({"content": piece})
        completion = stream.completion
        yield chunk({}, completion.finish_reason)
        if include_usage:
            yield chunk(None, usage=_usage(completion))
        yield "data: [DONE]\n\n"
    except Exception:  # headers are sent already: report in the stream, keep the server up
        logger.exception("generation failed while streaming")
        error = {"message": "generation failed; see the server log", "type": "server_error", "param": None,
                 "code": None}
        yield f"data: {json.dumps({'error': error})}\n\n"
    finally:
        pieces.close()  # a client that went away stops the generation at its next token
        admission.__exit__(None, None, None)


__all__ = ["create_app", "ServerLimits", "APIError", "ChatCompletionRequest"]
