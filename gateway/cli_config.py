"""`podium config versions` and `podium config rollback N`: the admin API of a running gateway
(`/admin/config/...`), from the command line.

They talk to the gateway over HTTP rather than to its store: the gateway checks the version
against its own environment (where its `${VAR}` secrets are) and applies it at once, and every
other worker and machine on the same store follows within a second. `--url` defaults to where
`podium serve` listens (`PODIUM_HOST`, `PODIUM_PORT`); the admin key comes from `--admin-key`
or `PODIUM_ADMIN_KEY`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

ADMIN_KEY_ENV = "PODIUM_ADMIN_KEY"


def add_config_commands(sub: Any) -> None:
    config = sub.add_parser("config", help="config versions of a running gateway")
    commands = config.add_subparsers(dest="config_command", required=True)
    versions = commands.add_parser("versions", help="list the config versions")
    versions.add_argument("--diff", nargs="+", type=int, metavar="N",
                          help="the diff from version A to B (default: the current one)")
    versions.add_argument("--json", action="store_true", help="print the API's JSON")
    versions.set_defaults(func=cmd_versions)
    rollback = commands.add_parser("rollback", help="restore an earlier config version")
    rollback.add_argument("version", type=int, help="the version to restore")
    rollback.set_defaults(func=cmd_rollback)
    for parser in (versions, rollback):
        parser.add_argument("--url", help="the gateway (default http://PODIUM_HOST:PODIUM_PORT, "
                                          "i.e. http://127.0.0.1:4000)")
        parser.add_argument("--admin-key", help=f"an admin key (default ${ADMIN_KEY_ENV})")


def _url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    host = os.environ.get("PODIUM_HOST") or "127.0.0.1"
    return f"http://{host}:{os.environ.get('PODIUM_PORT') or 4000}"


def _call(args: argparse.Namespace, method: str, path: str,
          body: dict[str, Any] | None = None) -> Any:
    key = args.admin_key or os.environ.get(ADMIN_KEY_ENV)
    if not key:
        raise SystemExit(f"podium config: give --admin-key or set {ADMIN_KEY_ENV}")
    request = urllib.request.Request(
        _url(args) + path, method=method, data=json.dumps(body).encode() if body else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        message = json.loads(err.read() or b"{}").get("error", {}).get("message", err.reason)
        raise SystemExit(f"podium config: {err.code}: {message}") from None
    except (urllib.error.URLError, OSError) as err:
        raise SystemExit(f"podium config: cannot reach {_url(args)}: {err}") from None


def cmd_versions(args: argparse.Namespace) -> int:
    query = ""
    if args.diff:
        query = f"?from={args.diff[0]}" + (f"&to={args.diff[1]}" if len(args.diff) > 1 else "")
    listed = _call(args, "GET", "/admin/config/versions" + query)
    if args.json:
        print(json.dumps(listed, indent=2))
        return 0
    for v in listed["data"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["loaded_at"]))
        mark = "*" if v["current"] else " "
        note = f" (rollback to {v['rollback_of']})" if v["rollback_of"] else ""
        print(f"{mark} {v['number']:>4}  {v['digest'][:12]}  {when}  {v['action']:<8} "
              f"{v['loaded_by']}{note}")
    if "diff" in listed:
        print(listed["diff"]["text"] or "(no difference)")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    done = _call(args, "POST", "/admin/config/rollback", {"version": args.version})
    version = done["version"]
    print(f"version {args.version} restored as version {version['number']} "
          f"({version['digest'][:12]})")
    for warning in done.get("warnings", ()):
        print(f"warning: {warning}", file=sys.stderr)
    if done.get("restart_required"):
        print("restart needed for: " + ", ".join(done["restart_required"]), file=sys.stderr)
    return 0
