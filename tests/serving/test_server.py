"""The OpenAI-compatible server, driven over loopback by the official `openai` client."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.fixtures.serving import png_bytes, serving

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

API_KEY = "test-key"


@pytest.fixture(scope="module")
def base_url(engine):
    from wings.serving.server import ServerLimits, create_app

    limits = ServerLimits(
        max_request_bytes=200_000, max_image_pixels=64 * 64, max_images=2, max_tokens=64, default_max_tokens=16
    )
    with serving(create_app(engine, api_key=API_KEY, limits=limits)) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def ask(client, engine, content, **options):
    options.setdefault("max_tokens", 8)
    options.setdefault("temperature", 0)
    return client.chat.completions.create(
        model=engine.model_id, messages=[{"role": "user", "content": content}], **options
    )


def streamed(client, engine, content, **options) -> tuple[str, list]:
    options.setdefault("max_tokens", 8)
    options.setdefault("temperature", 0)
    chunks = list(
        client.chat.completions.create(
            model=engine.model_id, messages=[{"role": "user", "content": content}], stream=True, **options
        )
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    return text, chunks


def test_health_and_models(base_url, client, engine):
    assert httpx.get(f"{base_url}/health").json()["status"] == "ok"
    assert [model.id for model in client.models.list()] == [engine.model_id]


def test_plain_completion_honours_max_tokens(client, engine):
    answer = ask(client, engine, "Hello there, how are you?", max_tokens=5)
    choice = answer.choices[0]
    assert answer.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= answer.usage.completion_tokens <= 5
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    if choice.finish_reason == "length":
        assert answer.usage.completion_tokens == 5


def test_an_image_part_adds_its_visual_tokens_whatever_the_image(client, engine):
    text = ask(client, engine, [{"type": "text", "text": "What is in the image?"}])
    with_image = ask(
        client,
        engine,
        [
            {"type": "text", "text": "What is in the image?"},
            {"type": "image_url", "image_url": {"url": data_url(png_bytes())}},
        ],
    )
    seq = engine.processor.image_seq_length
    assert with_image.usage.prompt_tokens == text.usage.prompt_tokens + seq
    other_image = ask(
        client,
        engine,
        [
            {"type": "text", "text": "What is in the image?"},
            {"type": "image_url", "image_url": {"url": data_url(png_bytes((0, 0, 250)))}},
        ],
    )
    assert with_image.usage.prompt_tokens == other_image.usage.prompt_tokens


@pytest.mark.parametrize("options", [{"temperature": 0}, {"temperature": 1.0, "top_p": 0.9, "seed": 7}])
def test_stream_concatenates_to_the_same_answer(client, engine, options):
    content = [
        {"type": "image_url", "image_url": {"url": data_url(png_bytes())}},
        {"type": "text", "text": "Who are they?"},
    ]
    whole = ask(client, engine, content, max_tokens=10, **options)
    text, chunks = streamed(client, engine, content, max_tokens=10, stream_options={"include_usage": True}, **options)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert {chunk.id for chunk in chunks} == {chunks[0].id}


def test_same_seed_same_sample(client, engine):
    first = ask(client, engine, "Hello", temperature=1.0, seed=11, max_tokens=10)
    second = ask(client, engine, "Hello", temperature=1.0, seed=11, max_tokens=10)
    assert first.choices[0].message.content == second.choices[0].message.content


def test_stop_string_cuts_the_answer(client, engine):
    full = ask(client, engine, "Hello", max_tokens=16).choices[0].message.content
    # a stop string from the middle of the greedy answer, free of replacement characters
    start = next(i for i in range(2, len(full) - 2) if "\ufffd" not in full[i : i + 2] and full[i : i + 2].strip())
    stop = full[start : start + 2]
    expected = full[: full.find(stop)]
    cut = ask(client, engine, "Hello", max_tokens=16, stop=[stop, "never-generated"])
    assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
    text, chunks = streamed(client, engine, "Hello", max_tokens=16, stop=stop)
    assert text == expected and chunks[-1].choices[0].finish_reason == "stop"


def test_concurrent_requests_are_queued_and_each_answered_alone(client, engine):
    prompts = ["Hello", "What is in the image?", "Who are they?", "Hello there"]
    alone = [ask(client, engine, prompt).choices[0].message.content for prompt in prompts]
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        together = list(pool.map(lambda prompt: ask(client, engine, prompt).choices[0].message.content, prompts * 2))
    assert together == alone * 2


def error_of(call) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    body = caught.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    return caught.value


def test_error_cases_answer_openai_shaped_4xx(base_url, client, engine):
    image = {"type": "image_url", "image_url": {"url": data_url(png_bytes())}}
    wrong_key = openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0)
    assert error_of(lambda: wrong_key.models.list()).status_code == 401
    assert error_of(lambda: ask(wrong_key, engine, "Hello")).status_code == 401
    missing = error_of(
        lambda: client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    )
    assert missing.status_code == 404 and missing.code == "model_not_found"
    too_many = error_of(lambda: ask(client, engine, "Hello", max_tokens=65))
    assert too_many.status_code == 400 and too_many.param == "max_tokens"
    bad_base64 = error_of(
        lambda: ask(client, engine, [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}])
    )
    assert bad_base64.status_code == 400 and bad_base64.code == "invalid_image"
    not_image = error_of(
        lambda: ask(
            client,
            engine,
            [
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"hello").decode()},
                }
            ],
        )
    )
    assert not_image.code == "invalid_image" and not_image.param == "messages[0].content[0]"
    huge = error_of(
        lambda: ask(client, engine, [{"type": "image_url", "image_url": {"url": data_url(png_bytes(size=(65, 64)))}}])
    )
    assert huge.status_code == 400 and "pixels" in huge.message
    for url in ("https://example.com/cat.png", "/etc/passwd", "file:///etc/hostname"):
        refused = error_of(lambda: ask(client, engine, [{"type": "image_url", "image_url": {"url": url}}]))
        assert refused.status_code == 400 and "disabled" in refused.message
    assert error_of(lambda: ask(client, engine, [image, image, image])).status_code == 400
    placeholder = error_of(lambda: ask(client, engine, "look: <image>"))
    assert placeholder.status_code == 400
    long_prompt = error_of(lambda: ask(client, engine, "Hello there " * 200))
    assert long_prompt.status_code == 400 and long_prompt.code == "context_length_exceeded"
    assert error_of(lambda: ask(client, engine, "Hello", n=2)).param == "n"
    assert error_of(lambda: ask(client, engine, "Hello", temperature=5)).status_code == 400
    bad_role = error_of(
        lambda: client.chat.completions.create(model=engine.model_id, messages=[{"role": "robot", "content": "hi"}])
    )
    assert bad_role.status_code == 400
    assert error_of(lambda: client.chat.completions.create(model=engine.model_id, messages=[])).status_code == 400
    oversized = error_of(lambda: ask(client, engine, "x" * 300_000))
    assert oversized.status_code == 413

    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    for body in (b"{not json", b"\xff\xfe", b"[]", b'{"model": 3}'):
        response = httpx.post(f"{base_url}/v1/chat/completions", content=body, headers=headers)
        assert response.status_code == 400 and set(response.json()["error"]) == {"message", "type", "param", "code"}
    unknown = httpx.get(f"{base_url}/v1/nothing-here", headers=headers)
    assert unknown.status_code == 404 and "error" in unknown.json()
    # none of that hurt the server
    assert ask(client, engine, "Hello").choices[0].finish_reason in ("stop", "length")


def test_a_failing_generation_is_a_500_in_openai_shape_and_the_server_keeps_serving(engine, monkeypatch):
    from fastapi.testclient import TestClient

    from wings.serving.server import create_app

    client = TestClient(create_app(engine), raise_server_exceptions=False)
    request = {"model": engine.model_id, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3}
    with monkeypatch.context() as patch:
        patch.setattr(engine.model, "generate", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("boom")))
        failed = client.post("/v1/chat/completions", json=request)
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
    assert "boom" not in failed.text and "Traceback" not in failed.text
    assert client.post("/v1/chat/completions", json=request).status_code == 200


def test_a_full_queue_answers_429(engine, monkeypatch):
    from fastapi.testclient import TestClient

    from wings.serving.server import create_app

    client = TestClient(create_app(engine))
    monkeypatch.setattr(engine, "max_pending", 0)
    busy = client.post(
        "/v1/chat/completions", json={"model": engine.model_id, "messages": [{"role": "user", "content": "Hello"}]}
    )
    assert busy.status_code == 429 and busy.json()["error"]["code"] == "server_busy"
