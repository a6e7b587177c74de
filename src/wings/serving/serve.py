"""`wings serve`: the OpenAI-compatible server (needs the `serve` extra: pip install -e '.[serve]')."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from wings.serving.options import add_model_arguments, load_engine


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    """Register `wings serve`."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--model-name", help="model id reported by /v1/models (default: the folder's name)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("WINGS_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $WINGS_API_KEY; none when unset)",
    )
    parser.add_argument(
        "--allow-local-images",
        action="store_true",
        help="accept local file paths as image URLs (lets callers read this machine's files)",
    )
    parser.add_argument(
        "--allow-remote-images",
        action="store_true",
        help="fetch http(s) image URLs (lets callers make this server send requests)",
    )
    parser.add_argument("--max-request-bytes", type=int, default=20 * 1024 * 1024, help="largest request body")
    parser.add_argument("--max-image-pixels", type=int, default=16_000_000, help="largest image (width x height)")
    parser.add_argument("--max-images", type=int, default=8, help="most images per request")
    parser.add_argument(
        "--max-request-pixels", type=int, default=32_000_000, help="most pixels of all images of one request together"
    )
    parser.add_argument("--max-messages", type=int, default=256, help="most messages per request")
    parser.add_argument("--max-text-chars", type=int, default=262_144, help="most characters of text per request")
    parser.add_argument("--max-stop-chars", type=int, default=128, help="longest stop string (at most 4 per request)")
    parser.add_argument("--max-tokens-limit", type=int, default=2048, help="largest max_tokens a request may ask")
    parser.add_argument("--default-max-tokens", type=int, default=512, help="max_tokens when a request gives none")
    parser.add_argument("--max-pending", type=int, default=64, help="requests waiting at once before 429s")
    parser.set_defaults(func=run_serve)
    return parser


def run_serve(args: argparse.Namespace) -> int:
    try:  # the server's packages are an optional extra: imported only when `wings serve` runs
        import uvicorn

        from wings.serving.server import ServerLimits, create_app
    except ImportError as error:
        raise ValueError(f"{error.name} is missing; install the server with: pip install -e '.[serve]'") from error
    if not _is_loopback(args.host) and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can use it", file=sys.stderr)
    kwargs = {"max_pending": args.max_pending}
    if args.model_name:
        kwargs["model_id"] = args.model_name
    limits = ServerLimits(
        max_request_bytes=args.max_request_bytes,
        max_image_pixels=args.max_image_pixels,
        max_images=args.max_images,
        max_tokens=args.max_tokens_limit,
        default_max_tokens=args.default_max_tokens,
        max_request_pixels=args.max_request_pixels,
        max_messages=args.max_messages,
        max_text_chars=args.max_text_chars,
        max_stop_chars=args.max_stop_chars,
    )
    engine = load_engine(args, **kwargs)
    app = create_app(
        engine,
        api_key=args.api_key,
        limits=limits,
        allow_local_images=args.allow_local_images,
        allow_remote_images=args.allow_remote_images,
    )
    print(f"serving {engine.model_id} on http://{args.host}:{args.port}/v1", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
