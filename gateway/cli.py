"""The `podium` command: serve, check."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.config import ConfigError, GatewayConfig, load_config

DEFAULT_CONFIG = "config/gateway.yaml"


def _config_path(arg: str | None) -> Path:
    """--config, then PODIUM_CONFIG, then ./config/gateway.yaml, then the embedded default."""
    chosen = arg or os.environ.get("PODIUM_CONFIG")
    if chosen:
        return Path(chosen)
    local = Path(DEFAULT_CONFIG)
    if local.is_file():
        return local
    return Path(__file__).resolve().parent.parent / DEFAULT_CONFIG


def _load(arg: str | None) -> tuple[Path, GatewayConfig | None, list[str]]:
    path = _config_path(arg)
    try:
        return path, load_config(path), []
    except ConfigError as err:
        return path, None, err.problems


def cmd_check(args: argparse.Namespace) -> int:
    path, cfg, problems = _load(args.config)
    if cfg is None:
        print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    groups = {e.model_name for e in cfg.model_list}
    print(f"{path}: OK ({len(cfg.model_list)} deployments in {len(groups)} groups, "
          f"{len(cfg.keys)} keys)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    path, cfg, problems = _load(args.config)
    if cfg is None:
        print(f"{path}: cannot serve, {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    from aiohttp import web

    from gateway.app import build_app

    host = args.host or os.environ.get("PODIUM_HOST") or "127.0.0.1"
    port = int(args.port or os.environ.get("PODIUM_PORT") or 4000)
    logging.getLogger("podium").info("serving %s on http://%s:%d", path, host, port)
    web.run_app(build_app(cfg), host=host, port=port, access_log=None, loop=_new_loop(),
                print=lambda msg: print(msg, flush=True))
    return 0


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # uvloop does not exist on Windows; asyncio's loop works everywhere
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podium", description="Podium AI gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help=f"config file (default {DEFAULT_CONFIG})")
    serve.add_argument("--host", help="bind address (default 127.0.0.1, or PODIUM_HOST)")
    serve.add_argument("--port", type=int, help="port (default 4000, or PODIUM_PORT)")
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("--config", help=f"config file (default {DEFAULT_CONFIG})")
    check.set_defaults(func=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("PODIUM_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # litellm logs every call at INFO through its own handler; Podium's own logs say what matters.
    logging.getLogger("LiteLLM").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    return int(args.func(args))
