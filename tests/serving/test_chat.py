"""`wings chat` driven through its input stream: images, streaming, /reset, errors that do not end the chat."""

from __future__ import annotations

import io

from wings.cli import main
from wings.serving.chat import ChatSession, run_chat
from wings.serving.engine import Prompt, SamplingOptions

OPTIONS = SamplingOptions(max_new_tokens=5)


def chat(engine, lines: list[str], images=()) -> tuple[ChatSession, str]:
    session = ChatSession(engine, OPTIONS)
    output = io.StringIO()
    assert run_chat(session, io.StringIO("".join(line + "\n" for line in lines)), output, list(images)) == 0
    return session, output.getvalue()


def answer(engine, messages, images=()) -> str:
    return engine.complete([Prompt(messages, list(images))], OPTIONS)[0].text


def test_images_go_with_the_next_message_and_history_is_kept(engine, image_file):
    session, text = chat(
        engine,
        [
            "/image does-not-exist.png",
            f"/image {image_file}",
            "What is in the image?",
            f"/image {image_file}",
            "Who are they?",
            "/quit",
            "never read",
        ],
    )
    assert "does-not-exist.png: image file not found" in text
    assert [m["content"].count("<image>") for m in session.messages if m["role"] == "user"] == [1, 1]
    assert len(session.images) == 2 and text.count("wings> ") == 2
    first = answer(engine, session.messages[:1], session.images[:1])
    second = answer(engine, session.messages[:3], session.images)
    assert session.messages[1]["content"] == first and session.messages[3]["content"] == second
    assert f"wings> {first}\n" in text and f"wings> {second}\n" in text


def test_reset_starts_over_and_errors_do_not_end_the_chat(engine, image_file, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    session, text = chat(
        engine, ["Hello there", "/reset", f"/image {broken}", "look: <image>", "/nonsense", "Hello there"]
    )
    assert "(conversation reset)" in text and "not a readable image" in text
    assert "error: type /image PATH" in text and "unknown command /nonsense" in text
    assert len(session.messages) == 2 and session.images == []
    assert text.count(f"wings> {answer(engine, [{'role': 'user', 'content': 'Hello there'}])}\n") == 2


def test_chat_command_reads_stdin(engine, image_file, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is in the image?\n"))
    code = main(
        [
            "chat",
            "--model",
            engine.model.name_or_path,
            "--image",
            str(image_file),
            "--temperature",
            "0",
            "--max-new-tokens",
            "5",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    expected = answer(engine, [{"role": "user", "content": "<image>What is in the image?"}], [str(image_file)])
    assert "(image attached" in out and f"wings> {expected}\n" in out
