"""`wings chat`: talk to a WINGS model in the terminal, with images, tokens shown as they come.

Commands typed at the prompt:
    /image PATH   attach an image to your next message (repeatable; any turn may have images)
    /reset        forget the conversation and its images
    /help         list the commands
    /quit         leave (Ctrl-D too)
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from wings.data.images import load_image
from wings.serving.engine import Prompt
from wings.serving.options import add_model_arguments, add_sampling_arguments, load_engine, sampling_options

HELP = """commands:
  /image PATH   attach an image to your next message
  /reset        start a new conversation
  /help         this list
  /quit         leave (or Ctrl-D)"""


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    """Register `wings chat`."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    add_model_arguments(parser)
    parser.add_argument(
        "--image", action="append", default=[], metavar="PATH", help="attach an image to the first message (repeatable)"
    )
    parser.add_argument("--system", help="system prompt")
    add_sampling_arguments(parser, temperature=0.7)
    parser.set_defaults(func=run_chat_command)
    return parser


class ChatSession:
    """A conversation in progress: messages with `<image>` placeholders, their images, and images to attach next."""

    def __init__(self, engine, options, system: str | None = None):
        self.engine = engine
        self.options = options
        self.system = system
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict[str, str]] = [{"role": "system", "content": self.system}] if self.system else []
        self.images: list = []
        self.attached: list = []

    def attach(self, path: str) -> None:
        """Open and check an image now (a missing file is reported at once), to go with the next message."""
        self.attached.append(load_image(path, self.engine.processor.max_pixels))

    def ask(self, text: str, output: TextIO) -> str:
        """Send a user message; stream the answer to `output`; keep both in the history."""
        placeholder = self.engine.processor.image_token
        if placeholder in text:
            raise ValueError(f"type /image PATH to attach an image instead of writing {placeholder}")
        content = placeholder * len(self.attached) + text
        messages = self.messages + [{"role": "user", "content": content}]
        images = self.images + self.attached
        stream = self.engine.stream(Prompt(messages, images), self.options)  # raises before any output if too long
        pieces = []
        for piece in stream:
            output.write(piece)
            output.flush()
            pieces.append(piece)
        answer = "".join(pieces)
        self.messages = messages + [{"role": "assistant", "content": answer}]
        self.images, self.attached = images, []
        return answer


def run_chat(session: ChatSession, input_stream: TextIO, output: TextIO, images: list[str] = ()) -> int:
    """The read-answer loop over `input_stream` (a terminal or any text stream); returns an exit code."""
    for path in images:
        _attach(session, path, output)
    output.write("wings chat: /image PATH attaches an image, /reset starts over, /quit leaves.\n")
    while True:
        output.write("you> ")
        output.flush()
        line = input_stream.readline()
        if not line:  # end of input (Ctrl-D)
            output.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        command, _, argument = text.partition(" ")
        if command in ("/quit", "/exit"):
            return 0
        if command == "/help":
            output.write(HELP + "\n")
        elif command == "/reset":
            session.reset()
            output.write("(conversation reset)\n")
        elif command == "/image":
            _attach(session, argument.strip(), output)
        elif command.startswith("/") and " " not in command and len(command) > 1 and command[1:].isalpha():
            output.write(f"unknown command {command}; type /help\n")
        else:
            output.write("wings> ")
            try:
                session.ask(text, output)
            except ValueError as error:  # too long, bad placeholder: the turn is dropped, the chat goes on
                output.write(f"\nerror: {error}\n")
                continue
            output.write("\n")


def _attach(session: ChatSession, path: str, output: TextIO) -> None:
    if not path:
        output.write("usage: /image PATH\n")
        return
    try:
        session.attach(path)
    except ValueError as error:  # ImageLoadError: missing, unreadable, too large
        output.write(f"error: {error}\n")
        return
    count = len(session.attached)
    output.write(f"(image attached: {path}; {count} waiting for your next message)\n")


def run_chat_command(args: argparse.Namespace) -> int:
    engine = load_engine(args)
    session = ChatSession(engine, sampling_options(args), args.system)
    try:
        return run_chat(session, sys.stdin, sys.stdout, args.image)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 0
