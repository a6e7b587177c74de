"""`wings generate`: answer every conversation of a file in batches, resumably.

Input: any conversation file `wings data` reads (LLaVA, "messages", OpenAI content parts; JSON or
JSON Lines). Each record is answered after its last message; when that last message is the
assistant's (an evaluation set with references), it is left out of the prompt and written to the
output as `reference`. Output: JSON Lines, one ``{"id", "answer", "finish_reason", "prompt_tokens",
"completion_tokens"[, "reference"]}`` per record, appended batch by batch, so a rerun skips the ids
already answered.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from wings.data.formats import IMAGE_PLACEHOLDER, RecordError, RecordFile, normalize_record, read_jsonl
from wings.serving.engine import Prompt
from wings.serving.options import add_model_arguments, add_sampling_arguments, load_engine, sampling_options


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    """Register `wings generate`."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    add_model_arguments(parser)
    parser.add_argument("--input", required=True, help="conversations to answer (LLaVA / messages, JSON or JSONL)")
    parser.add_argument(
        "--out", "--output", dest="output", required=True, help="answers, JSON Lines (appended to: reruns resume)"
    )
    parser.add_argument("--image-folder", help="folder relative image paths resolve against (default: the input's)")
    parser.add_argument("--batch-size", type=int, default=8, help="conversations per generate call (default: 8)")
    add_sampling_arguments(parser, temperature=0.0)
    parser.set_defaults(func=run_generate)
    return parser


@dataclass
class Request:
    """One record to answer: its id, the prompt's messages and images, and the reference answer if any."""

    id: str
    messages: list[dict[str, str]]
    images: list[str]
    reference: str | None = None


def read_requests(
    path: str | os.PathLike, image_folder: str | os.PathLike | None = None
) -> tuple[list[Request], list[str]]:
    """The requests of a conversation file, and one message per record that cannot be used."""
    source = os.fspath(path)
    image_folder = image_folder if image_folder is not None else Path(source).resolve().parent
    requests, problems, seen = [], [], set()
    records = RecordFile(source)
    for index in range(len(records)):
        try:
            conversation = normalize_record(records.record(index), image_folder, source, index)
        except (RecordError, ValueError) as error:
            problems.append(str(error))
            continue
        request_id = conversation.id if conversation.id is not None else str(index)
        if request_id in seen:
            problems.append(f"{source}: record {index}: id {request_id!r} is used twice; ids must be unique to resume")
            continue
        seen.add(request_id)
        messages = conversation.to_chat()
        reference = None
        if messages and messages[-1]["role"] == "assistant":
            reference = messages.pop()["content"]
        if not messages or messages[-1]["role"] != "user":
            problems.append(f"{source}: record {index}: the prompt must end with a user message")
            continue
        used = sum(
            m["content"].count(IMAGE_PLACEHOLDER) for m in messages
        )  # images of a dropped reference: never shown
        requests.append(Request(request_id, messages, conversation.images[:used], reference))
    return requests, problems


def answered_ids(path: str | os.PathLike) -> set[str]:
    """Ids already answered in an output file; a last line cut short by a crash is removed."""
    path = Path(path)
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):  # an interrupted write: drop the partial line so appends stay valid
        data = data[: data.rfind(b"\n") + 1]
        path.write_bytes(data)
    records = read_jsonl(path)  # a line that is not a JSON object is an error naming it
    missing = next((number for number, record in enumerate(records, start=1) if "id" not in record), None)
    if missing is not None:
        raise ValueError(f"{path}: answer record {missing} has no 'id'; fix or move the file")
    return {str(record["id"]) for record in records}


def generate_file(
    engine, input_path, output_path, options, batch_size: int = 8, image_folder=None, log: TextIO = sys.stderr
) -> tuple[int, int, list[str]]:
    """Answer the requests of `input_path` not yet in `output_path`.

    Returns (answered now, skipped as already answered, problems). A batch that fails on one
    request is retried request by request, so one bad image costs only its own answer.
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    requests, problems = read_requests(input_path, image_folder)
    done = answered_ids(output_path)
    pending = [request for request in requests if request.id not in done]
    skipped = len(requests) - len(pending)
    answered = 0
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    with (
        open(output_path, "a", encoding="utf-8") as output,
        tqdm(total=len(pending), desc="generate", unit="conv", file=log, disable=not pending) as progress,
    ):
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            try:
                results = list(zip(batch, engine.complete([Prompt(r.messages, r.images) for r in batch], options)))
            except ValueError:  # find which request is bad; the others still get answers
                results = []
                for request in batch:
                    try:
                        results.append(
                            (request, engine.complete([Prompt(request.messages, request.images)], options)[0])
                        )
                    except ValueError as error:
                        problems.append(f"{input_path}: id {request.id!r}: {error}")
            for request, completion in results:
                record = {
                    "id": request.id,
                    "answer": completion.text,
                    "finish_reason": completion.finish_reason,
                    "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                }
                if request.reference is not None:
                    record["reference"] = request.reference
                output.write(json.dumps(record, ensure_ascii=False) + "\n")
                answered += 1
            output.flush()  # a crash loses at most the batch in flight
            progress.update(len(batch))
    return answered, skipped, problems


def run_generate(args: argparse.Namespace) -> int:
    if not Path(args.input).is_file():
        raise FileNotFoundError(f"{args.input}: input file not found")
    options = sampling_options(args)
    engine = load_engine(args)
    answered, skipped, problems = generate_file(
        engine, args.input, args.output, options, args.batch_size, args.image_folder
    )
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    print(f"{answered} answered, {skipped} already in {args.output}, {len(problems)} skipped", file=sys.stderr)
    return 1 if problems else 0
