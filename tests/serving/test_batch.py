"""`wings generate`: answers per record, references kept, resume skips what is done, bad records reported."""

from __future__ import annotations

import json

from wings.cli import main
from wings.serving.batch import answered_ids, generate_file, read_requests
from wings.serving.engine import Prompt, SamplingOptions


def write_requests(path, image_name: str) -> None:
    records = [
        {
            "id": "a",
            "image": image_name,
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is in the image?"},
                {"from": "gpt", "value": "A red circle."},
            ],
        },
        {"id": "b", "messages": [{"role": "user", "content": "Hello there"}]},
        {
            "id": "c",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Who are they?"},
                        {"type": "image_url", "image_url": {"url": image_name}},
                    ],
                }
            ],
        },
        {"id": "d", "messages": [{"role": "user", "content": "How are you?"}]},
        {"id": "e", "image": "missing.png", "conversations": [{"from": "human", "value": "<image> what color?"}]},
    ]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def read_answers(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generate_answers_each_record_like_a_single_request(engine, tmp_path, image_file):
    requests_path, answers_path = tmp_path / "requests.jsonl", tmp_path / "answers.jsonl"
    write_requests(requests_path, image_file.name)
    options = SamplingOptions(max_new_tokens=6)
    answered, skipped, problems = generate_file(engine, requests_path, answers_path, options, batch_size=2)
    assert (answered, skipped) == (4, 0)
    assert len(problems) == 1 and "'e'" in problems[0] and "missing.png" in problems[0]
    answers = {answer["id"]: answer for answer in read_answers(answers_path)}
    assert set(answers) == {"a", "b", "c", "d"}
    assert answers["a"]["reference"] == "A red circle." and "reference" not in answers["b"]
    # batching (left padding) gives each record the answer it gets alone
    requests = {request.id: request for request in read_requests(requests_path)[0]}
    for request_id in ("a", "c"):
        alone = engine.complete([Prompt(requests[request_id].messages, requests[request_id].images)], options)[0]
        assert answers[request_id]["answer"] == alone.text
        assert answers[request_id]["completion_tokens"] <= 6


def test_generate_resumes_after_an_interrupted_run(engine, tmp_path, image_file):
    requests_path, answers_path = tmp_path / "requests.jsonl", tmp_path / "answers.jsonl"
    write_requests(requests_path, image_file.name)
    # a previous run answered "a" and died while writing "b"
    answers_path.write_text(json.dumps({"id": "a", "answer": "earlier"}) + "\n" + '{"id": "b", "ans')
    code = main(
        [
            "generate",
            "--model",
            str(engine_folder(engine)),
            "--input",
            str(requests_path),
            "--output",
            str(answers_path),
            "--max-new-tokens",
            "4",
            "--batch-size",
            "3",
            "--device",
            "cpu",
        ]
    )
    assert code == 1  # record "e" has a missing image
    answers = read_answers(answers_path)
    assert [answer["id"] for answer in answers][0] == "a" and answers[0]["answer"] == "earlier"
    assert sorted(answer["id"] for answer in answers) == ["a", "b", "c", "d"]
    assert answered_ids(answers_path) == {"a", "b", "c", "d"}
    # a second rerun has nothing left to do but the broken record
    answered, skipped, _ = generate_file(engine, requests_path, answers_path, SamplingOptions(max_new_tokens=4))
    assert (answered, skipped) == (0, 4)
    assert len(read_answers(answers_path)) == 4


def engine_folder(engine):
    return engine.model.name_or_path
