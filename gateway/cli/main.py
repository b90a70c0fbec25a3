"""The ``jobgate`` command: run the gateway, or talk to one over HTTP.

    jobgate serve
    jobgate invoke FILE [--profile P] [--async] [--input JSON] [--timeout S] [--stdin]
                        [-- ARGS...]
    jobgate get ID | logs ID | list | cancel ID | artifacts ID [--out DIR]
    jobgate keys new TENANT | keys hash KEY
    jobgate mcp                 (the gateway's MCP tools over stdio)

Client commands read JOBGATE_URL (default http://127.0.0.1:8080) and JOBGATE_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from gateway.auth.keys import hash_key, new_key

EXTENSIONS = {".py": "python3.11", ".sh": "bash", ".bash": "bash", ".js": "node20",
              ".mjs": "node20"}
TERMINAL = {"succeeded", "failed", "timeout", "cancelled", "error"}
EXIT_FOR_STATUS = {"timeout": 124, "cancelled": 130, "error": 70}


class CliError(Exception):
    pass


# -- serve ---------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from gateway.api.app import StartupError, create_app
    from gateway.api.serve import GatewayServer
    from gateway.config.settings import Settings, describe

    try:
        settings = Settings()
    except ValidationError as e:
        print(f"jobgate: invalid configuration:\n{describe(e)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per runner call and callback attempt is noise, not information.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        app = create_app(settings)
    except (StartupError, ValueError, OSError) as e:
        print(f"jobgate: {e}", file=sys.stderr)
        return 2
    GatewayServer(app, settings).run()
    return 0


# -- client --------------------------------------------------------------------------------


class Client:
    def __init__(self) -> None:
        self.base = os.environ.get("JOBGATE_URL", "http://127.0.0.1:8080").rstrip("/")
        key = os.environ.get("JOBGATE_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=120.0)

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise CliError(f"cannot reach the gateway at {self.base}: {e}") from None
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                msg = f"{err['code']}: {err['message']}"
            except (ValueError, KeyError, TypeError):
                msg = resp.text[:500]
            raise CliError(f"HTTP {resp.status_code}: {msg}")
        return resp

    def json(self, method: str, path: str, **kw: Any) -> Any:
        return self.call(method, path, **kw).json()


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\x1b[2K{message}")
        sys.stderr.flush()


def _wait(client: Client, inv_id: str, started: float) -> dict[str, Any]:
    """Long-poll until the invocation ends, showing progress on a terminal."""
    while True:
        record: dict[str, Any] = client.json("GET", f"/v1/invocations/{inv_id}",
                                             params={"wait": 10})
        if record["status"] in TERMINAL:
            _progress("")
            return record
        _progress(f"{inv_id}: {record['status']} ({time.monotonic() - started:.0f}s)")


def _print_result(record: dict[str, Any]) -> int:
    sys.stdout.write(record.get("stdout") or "")
    sys.stdout.flush()
    sys.stderr.write(record.get("stderr") or "")
    if record.get("stdout_truncated") or record.get("stderr_truncated"):
        sys.stderr.write("\njobgate: output was truncated; see `jobgate logs`\n")
    status = record["status"]
    if status != "succeeded" and record.get("reason") not in (None, "NonZeroExit"):
        sys.stderr.write(f"jobgate: {status}: {record.get('reason')}: "
                         f"{record.get('message') or ''}\n")
    if record.get("exit_code") is not None and status in ("succeeded", "failed"):
        return int(record["exit_code"]) & 0xFF
    return EXIT_FOR_STATUS.get(status, 0 if status == "succeeded" else 1)


def cmd_invoke(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        code = path.read_text()
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None
    profile = args.profile or EXTENSIONS.get(path.suffix)
    if profile is None:
        raise CliError(f"cannot tell the profile from {path.name!r}: use --profile")
    body: dict[str, Any] = {"profile": profile, "files": {path.name: code},
                            "entrypoint": path.name, "args": args.args,
                            "mode": "async" if args.async_ else "sync"}
    if args.input is not None:
        try:
            body["input"] = json.loads(args.input)
        except json.JSONDecodeError as e:
            raise CliError(f"--input is not JSON: {e}") from None
    if args.timeout is not None:
        body["timeout_s"] = args.timeout
    if not sys.stdin.isatty() and args.stdin:
        body["stdin"] = sys.stdin.read()
    client = Client()
    started = time.monotonic()
    resp = client.call("POST", "/v1/invocations", json=body)
    record = resp.json()
    if args.async_:
        print(record["id"])
        return 0
    if resp.status_code == 202:
        record = _wait(client, record["id"], started)
    return _print_result(record)


def cmd_get(args: argparse.Namespace) -> int:
    print(json.dumps(Client().json("GET", f"/v1/invocations/{args.id}"), indent=2))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    logs = Client().json("GET", f"/v1/invocations/{args.id}/logs")
    sys.stdout.write(logs["stdout"])
    sys.stderr.write(logs["stderr"])
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("status", args.status), ("profile", args.profile),
                                ("limit", args.limit)) if v}
    page = Client().json("GET", "/v1/invocations", params=params)
    for item in page["items"]:
        print(f"{item['id']}  {item['status']:<10} {item['profile']:<12} "
              f"{item['created_at']}  {item.get('reason') or ''}")
    if page.get("next_cursor"):
        print(f"# more: --cursor {page['next_cursor']}", file=sys.stderr)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    record = Client().json("POST", f"/v1/invocations/{args.id}/cancel")
    print(f"{record['id']}: {record['status']}")
    return 0


def cmd_artifacts(args: argparse.Namespace) -> int:
    client = Client()
    items = client.json("GET", f"/v1/invocations/{args.id}/artifacts")["items"]
    out = Path(args.out) if args.out else None
    for item in items:
        if out is None:
            print(f"{item['size']:>12}  {item['sha256'][:16]}  {item['name']}")
            continue
        target = (out / item["name"]).resolve()
        if out.resolve() not in target.parents:
            raise CliError(f"refusing to write {item['name']!r} outside {out}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with client.http.stream("GET", f"/v1/invocations/{args.id}/artifacts/{item['name']}",
                                follow_redirects=True) as resp:
            if resp.status_code != 200:
                raise CliError(f"HTTP {resp.status_code} for artifact {item['name']}")
            with open(target, "wb") as f:
                for chunk in resp.iter_bytes():
                    f.write(chunk)
        print(target)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    if args.action == "new":
        key = new_key()
        print(f"key:    {key}")
        print(f"config: JOBGATE_API_KEYS={args.value}:{hash_key(key)}")
    else:
        print(hash_key(args.value))
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    from gateway.mcp.stdio import main as serve_mcp_stdio

    return serve_mcp_stdio()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobgate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gateway (configured by JOBGATE_* variables)"
                   ).set_defaults(func=cmd_serve)
    p = sub.add_parser("invoke", help="run a file and print its output as if run locally")
    p.add_argument("file")
    p.add_argument("--profile")
    p.add_argument("--async", dest="async_", action="store_true", help="print the id only")
    p.add_argument("--input", help="JSON given to the code as input.json")
    p.add_argument("--timeout", type=float)
    p.add_argument("--stdin", action="store_true", help="send this command's stdin")
    p.set_defaults(func=cmd_invoke, args=[])
    for name, func, help_ in (("get", cmd_get, "show an invocation as JSON"),
                              ("logs", cmd_logs, "print stdout and stderr"),
                              ("cancel", cmd_cancel, "cancel an invocation")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("id")
        p.set_defaults(func=func)
    p = sub.add_parser("list", help="list recent invocations")
    p.add_argument("--status")
    p.add_argument("--profile")
    p.add_argument("--limit", type=int)
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("artifacts", help="list or download artifacts")
    p.add_argument("id")
    p.add_argument("--out", help="download into this directory")
    p.set_defaults(func=cmd_artifacts)
    sub.add_parser("mcp", help="serve the gateway's MCP tools over stdio (docs/mcp.md)"
                   ).set_defaults(func=cmd_mcp)
    p = sub.add_parser("keys", help="make an API key, or hash one")
    p.add_argument("action", choices=["new", "hash"])
    p.add_argument("value", help="tenant (new) or key (hash)")
    p.set_defaults(func=cmd_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after `--` goes to the invoked code, untouched by option parsing.
    code_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, code_args = argv[:split], argv[split + 1:]
    args = build_parser().parse_args(argv)
    if code_args:
        args.args = code_args
    try:
        code: int = args.func(args)
        return code
    except CliError as e:
        _progress("")
        print(f"jobgate: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
