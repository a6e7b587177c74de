"""The server under unfriendly clients: disconnects cancel within one step, the queue and the cheap limits come
before any image is decoded or template rendered, and every client mistake is a 4xx naming its field."""

from __future__ import annotations

import base64
import io
import json
import socket

import httpx
import pytest
from PIL import Image

from tests.fixtures.serving import png_bytes, serving, wait_until

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def image_part(data: bytes, mime: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64," + base64.b64encode(data).decode()}}


def request_body(engine, content="Hello", **options) -> dict:
    return {"model": engine.model_id, "messages": [{"role": "user", "content": content}], **options}


@pytest.fixture
def app_factory(engine):
    from wings.serving.server import ServerLimits, create_app

    def make(**limits):
        defaults = dict(
            max_image_pixels=64 * 64,
            max_request_pixels=3 * 64 * 64,
            max_images=4,
            max_tokens=256,
            default_max_tokens=16,
            max_messages=32,
            max_text_chars=2000,
        )
        return create_app(engine, limits=ServerLimits(**{**defaults, **limits}))

    return make


@pytest.fixture
def client(app_factory):
    from fastapi.testclient import TestClient

    return TestClient(app_factory())


@pytest.fixture
def spies(engine, monkeypatch):
    """Counts of image headers read, images decoded and templates rendered."""
    import wings.serving.server as server

    counts = {"header": 0, "decode": 0, "render": 0}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(server, "image_header", counting("header", server.image_header))
    monkeypatch.setattr(server, "load_image", counting("decode", server.load_image))
    monkeypatch.setattr(engine.processor, "render", counting("render", engine.processor.render))
    return counts


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


# ------------------------------------------------------------------------------------------------- cheap limits
def test_a_full_queue_is_a_429_with_retry_after_before_any_image_is_read(client, engine, spies, monkeypatch):
    monkeypatch.setattr(engine, "max_pending", 0)
    response = client.post("/v1/chat/completions", json=request_body(engine, [image_part(png_bytes())] * 3))
    error = error_of(response, 429)
    assert error["type"] == "rate_limit_error" and error["code"] == "server_busy"
    assert response.headers["retry-after"] == "1"
    assert spies == {"header": 0, "decode": 0, "render": 0}


def test_over_long_conversations_are_refused_before_rendering_or_decoding(client, engine, spies):
    many = {"model": engine.model_id, "messages": [{"role": "user", "content": "hi"}] * 4001}
    error = error_of(client.post("/v1/chat/completions", json=many), 400)
    assert error["param"] == "messages" and "4001 messages" in error["message"]
    long_text = request_body(engine, [image_part(png_bytes()), {"type": "text", "text": "x" * 2001}])
    error = error_of(client.post("/v1/chat/completions", json=long_text), 400)
    assert error["param"] == "messages[0].content[1]" and "2000 characters" in error["message"]
    # 30 messages and 4 images cannot fit in a 256-token context: known without any template
    crowded = {
        "model": engine.model_id,
        "messages": [{"role": "user", "content": [image_part(png_bytes())] * 4}]
        + [{"role": "user", "content": "hi"}] * 29,
    }
    engine.max_context, saved = 40, engine.max_context
    try:
        error = error_of(client.post("/v1/chat/completions", json=crowded), 400)
    finally:
        engine.max_context = saved
    assert error["code"] == "context_length_exceeded" and "at least" in error["message"]
    assert spies == {"header": 0, "decode": 0, "render": 0}


def test_a_prompt_too_long_for_the_context_is_refused_before_images_are_decoded(client, engine, spies):
    body = request_body(engine, [image_part(png_bytes()), {"type": "text", "text": "Hello there " * 150}])
    error = error_of(client.post("/v1/chat/completions", json=body), 400)
    assert error["code"] == "context_length_exceeded" and "tokens" in error["message"]
    assert spies["header"] == 1 and spies["decode"] == 0


def test_image_count_and_pixel_budgets_are_checked_from_headers(client, engine, spies):
    four = request_body(engine, [image_part(png_bytes(size=(64, 64)))] * 4)  # each allowed, 4 x 4096 over 12288
    error = error_of(client.post("/v1/chat/completions", json=four), 400)
    assert error["param"] == "messages[0].content[3]" and "12,288 pixels in all" in error["message"]
    assert spies["decode"] == 0 and spies["header"] == 4
    five = request_body(engine, [image_part(png_bytes())] * 5)
    assert error_of(client.post("/v1/chat/completions", json=five), 400)["param"] == "messages[0].content[4]"
    big = request_body(engine, [image_part(png_bytes(size=(65, 64)))])
    assert "over the limit of 4,096" in error_of(client.post("/v1/chat/completions", json=big), 400)["message"]
    assert spies["decode"] == 0


def test_a_long_thin_image_is_shrunk_before_padding(client, engine, monkeypatch):
    import wings.model.processing_wings as processing

    sides = []
    original = processing.pad_to_square
    monkeypatch.setattr(
        processing, "pad_to_square", lambda image, fill: sides.append(image.size) or original(image, fill)
    )
    body = request_body(
        engine, [image_part(png_bytes(size=(4000, 1))), {"type": "text", "text": "What?"}], max_tokens=2
    )
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert sides == [(engine.processor.image_size, 1)]


def test_only_png_jpeg_webp_gif_and_bmp_are_opened(client, engine):
    image = Image.new("RGB", (8, 8), (10, 200, 30))
    for format in ("PNG", "JPEG", "WEBP", "GIF", "BMP"):
        buffer = io.BytesIO()
        image.save(buffer, format=format)
        body = request_body(engine, [image_part(buffer.getvalue()), {"type": "text", "text": "Hi"}], max_tokens=1)
        assert client.post("/v1/chat/completions", json=body).status_code == 200, format
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    tiff = io.BytesIO()
    image.save(tiff, format="TIFF")
    for payload in (eps, tiff.getvalue()):
        error = error_of(client.post("/v1/chat/completions", json=request_body(engine, [image_part(payload)])), 400)
        assert error["code"] == "invalid_image" and "PNG, JPEG, WebP, GIF or BMP" in error["message"]


def test_stop_strings_are_bounded_in_number_and_length(client, engine):
    five = error_of(client.post("/v1/chat/completions", json=request_body(engine, stop=["a", "b", "c", "d", "e"])), 400)
    assert five["param"] == "stop" and "at most 4" in five["message"]
    long = error_of(client.post("/v1/chat/completions", json=request_body(engine, stop=["x" * 129])), 400)
    assert long["param"] == "stop" and "128 characters" in long["message"]
    assert (
        client.post("/v1/chat/completions", json=request_body(engine, stop=["x" * 128], max_tokens=2)).status_code
        == 200
    )


def test_client_mistakes_are_4xx_naming_the_field(client, engine):
    deep = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    error = error_of(
        client.post("/v1/chat/completions", content=deep, headers={"content-type": "application/json"}), 400
    )
    assert error["code"] == "invalid_json" and "nests too deeply" in error["message"]
    for stream in (False, True):
        error = error_of(client.post("/v1/chat/completions", json=request_body(engine, seed=2**70, stream=stream)), 400)
        assert error["param"] == "seed"
    assert (
        error_of(client.post("/v1/chat/completions", json=request_body(engine, max_tokens=2**70)), 400)["param"]
        == "max_tokens"
    )
    assert client.post("/v1/chat/completions", json=request_body(engine, seed=2**63, max_tokens=1)).status_code == 200


def test_server_limits_must_be_positive():
    from wings.serving.server import ServerLimits

    with pytest.raises(ValueError, match="max_stop_chars must be a positive number, got 0"):
        ServerLimits(max_stop_chars=0)


# -------------------------------------------------------------------------------------------------- disconnects
def send_raw(port: int, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    connection = socket.create_connection(("127.0.0.1", port))
    connection.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    connection.settimeout(0.05)
    return connection


def read_available(connection: socket.socket) -> bytes:
    try:
        return connection.recv(1 << 16)
    except TimeoutError:
        return b""


def steps_of(engine, runs_before: int) -> int:
    return engine.recent[-1].steps if len(engine.recent) > runs_before else 0


def test_a_streaming_client_that_leaves_cancels_within_one_step(app_factory, engine, gate):
    with serving(app_factory()) as port:
        runs = len(engine.recent)
        connection = send_raw(port, request_body(engine, max_tokens=200, stream=True))
        received, released = b"", 0
        while received.count(b"data: ") < 5 and released < 150:  # the role chunk and 4 pieces
            gate.release()
            released += 1
            assert wait_until(lambda: steps_of(engine, runs) == released)
            received += read_available(connection)
        assert received.count(b"data: ") >= 5
        record = engine.recent[-1]
        connection.close()
        assert wait_until(lambda: record.cancel.is_set())
        assert record.steps == released  # the model is held at the gate: nothing ran meanwhile
        gate.release(500)
        assert wait_until(lambda: engine.pending == 0 and not engine.busy)
        assert record.cancelled and record.steps <= released + 1  # at most the step the gate held
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", json=request_body(engine, max_tokens=2), timeout=60
        )
        assert answer.status_code == 200 and engine.recent[-1].steps == 2


def test_clients_that_leave_before_the_headers_free_their_place(app_factory, engine, gate):
    with serving(app_factory()) as port:
        runs = len(engine.recent)
        holder = send_raw(port, request_body(engine, max_tokens=200, stream=True))
        gate.release()
        assert wait_until(lambda: steps_of(engine, runs) == 1)
        waiting = [send_raw(port, request_body(engine, max_tokens=200)) for _ in range(2)]
        assert wait_until(lambda: engine.pending == 3)
        for connection in waiting:
            connection.close()
        assert wait_until(lambda: engine.pending == 1)  # both gave up their place while the model was busy
        assert len(engine.recent) == runs + 1
        holder.close()
        assert wait_until(lambda: engine.recent[-1].cancel.is_set())
        gate.release()
        assert wait_until(lambda: engine.pending == 0 and not engine.busy)
        # a plain request whose client leaves during generation
        runs = len(engine.recent)
        plain = send_raw(port, request_body(engine, max_tokens=200))
        gate.release(3)
        assert wait_until(lambda: steps_of(engine, runs) == 3)
        plain.close()
        record = engine.recent[-1]
        assert wait_until(lambda: record.cancel.is_set())
        gate.release(500)
        assert wait_until(lambda: engine.pending == 0 and not engine.busy)
        assert record.cancelled and record.steps <= 4


def test_a_malformed_content_part_is_a_400_naming_it_as_data_files_do(client, engine):
    content = [{"type": "text", "text": "What is it?"}, {"type": "image_url"}, {"type": "text"}]
    error = error_of(client.post("/v1/chat/completions", json=request_body(engine, content)), 400)
    assert error["param"] == "messages[0].content[1]"
    assert error["message"].startswith("an image_url part needs a URL or path string")
    error = error_of(client.post("/v1/chat/completions", json=request_body(engine, content[:1] + content[2:])), 400)
    assert error["param"] == "messages[0].content[1]" and error["message"] == "a text part needs a 'text' string"
