"""The ``jobgate`` command: run the gateway, or talk to one over HTTP.

    jobgate serve
    jobgate invoke FILE [--profile P] [--async] [--input JSON] [--timeout S] [--stdin]
                        [-- ARGS...]
    jobgate get ID | logs [-f] ID | list | cancel ID | artifacts ID [--out DIR]
    jobgate usage [--all]       (this tenant's usage and limits; --all: every tenant's)
    jobgate keys new TENANT | keys hash KEY
    jobgate mcp                 (the gateway's MCP tools over stdio)

Client commands read JOBGATE_URL (default http://127.0.0.1:8080) and JOBGATE_API_KEY, and
talk to the gateway through gateway.client.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from gateway.auth.keys import hash_key, new_key
from gateway.client import Client, InvokeOptions, JobgateError, LogEnd
from gateway.models import Invocation, Status

EXTENSIONS = {".py": "python3.11", ".sh": "bash", ".bash": "bash", ".js": "node20",
              ".mjs": "node20"}
EXIT_FOR_STATUS = {Status.timeout: 124, Status.cancelled: 130, Status.error: 70}


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

# The CLI waits for a sync invocation as long as a person would: the profiles' longest
# timeout (900 s) plus a long queue.
CLI_WAIT_S = 3600.0


def _client() -> Client:
    return Client(wait_timeout_s=CLI_WAIT_S)


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\x1b[2K{message}")
        sys.stderr.flush()


def _exit_code(status: Status, exit_code: int | None) -> int:
    """The invocation's own exit code when it ran to an end; else one per status."""
    if exit_code is not None and status in (Status.succeeded, Status.failed):
        return exit_code & 0xFF
    return EXIT_FOR_STATUS.get(status, 0 if status is Status.succeeded else 1)


def _print_ending(record: Invocation) -> int:
    """What only the end of an invocation tells (its output was shown as it came): its
    truncation, a failure's reason; the exit status."""
    if record.stdout_truncated or record.stderr_truncated:
        sys.stderr.write("\njobgate: output was truncated; see `jobgate logs`\n")
    if record.status is not Status.succeeded and record.reason not in (None, "NonZeroExit"):
        sys.stderr.write(f"jobgate: {record.status}: {record.reason}: "
                         f"{record.message or ''}\n")
    return _exit_code(record.status, record.exit_code)


def cmd_invoke(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        code = path.read_text()
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None
    profile = args.profile or EXTENSIONS.get(path.suffix)
    if profile is None:
        raise CliError(f"cannot tell the profile from {path.name!r}: use --profile")
    options: InvokeOptions = {"files": {path.name: code}, "entrypoint": path.name,
                              "args": args.args}
    if args.input is not None:
        try:
            options["input"] = json.loads(args.input)
        except json.JSONDecodeError as e:
            raise CliError(f"--input is not JSON: {e}") from None
    if args.timeout is not None:
        options["timeout_s"] = args.timeout
    if not sys.stdin.isatty() and args.stdin:
        options["stdin"] = sys.stdin.read()
    with _client() as client:
        if args.async_:
            print(client.submit(profile, **options).id)
            return 0
        # Run once, as a sync call would, and show the output as it comes (live logs);
        # then what only the end tells (a failure's reason, truncation), from the record.
        options["max_attempts"] = 1
        accepted = client.submit(profile, **options)
        _progress(f"{accepted.id}: {accepted.status}")
        shown = False
        for item in client.follow_logs(accepted.id):
            if isinstance(item, LogEnd):
                break
            if not shown:
                _progress("")
                shown = True
            out = sys.stdout if item.stream == "stdout" else sys.stderr
            out.write(item.data)
            out.flush()
        record = client.wait(accepted.id, CLI_WAIT_S)
    _progress("")
    return _print_ending(record)


def cmd_get(args: argparse.Namespace) -> int:
    with _client() as client:
        print(client.get(args.id).model_dump_json(indent=2))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    with _client() as client:
        if not args.follow:
            logs = client.logs(args.id)
            sys.stdout.write(logs.stdout)
            sys.stderr.write(logs.stderr)
            return 0
        for item in client.follow_logs(args.id):
            if isinstance(item, LogEnd):
                if item.stdout_truncated or item.stderr_truncated:
                    sys.stderr.write("\njobgate: output was truncated\n")
                return _exit_code(item.status, item.exit_code)
            out = sys.stdout if item.stream == "stdout" else sys.stderr
            out.write(item.data)
            out.flush()
    raise CliError("the log stream ended without its end")


def cmd_list(args: argparse.Namespace) -> int:
    limit = args.limit or 50
    with _client() as client:
        # One more than shown: to tell whether there are more.
        items = list(client.list(args.status, args.profile, limit=limit + 1,
                                 page_size=min(limit + 1, 200)))
    for item in items[:limit]:
        print(f"{item.id}  {item.status:<10} {item.profile:<12} "
              f"{item.created_at.isoformat()}  {item.reason or ''}")
    if len(items) > limit:
        print(f"# more: --limit {limit * 2}", file=sys.stderr)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client() as client:
        record = client.cancel(args.id)
    print(f"{record.id}: {record.status}")
    return 0


def cmd_artifacts(args: argparse.Namespace) -> int:
    with _client() as client:
        if args.out is None:
            for item in client.artifacts(args.id):
                print(f"{item.size:>12}  {item.sha256[:16]}  {item.name}")
            return 0
        for target in client.download_artifacts(args.id, args.out):
            print(target)
    return 0


USAGE_COLUMNS = ("tenant", "running", "queued", "max_running", "max_queued", "rate_per_s",
                 "burst", "max_ttl_s", "weight")


def cmd_usage(args: argparse.Namespace) -> int:
    with _client() as client:
        items = client.all_usage() if args.all else [client.usage()]
    print("  ".join(f"{c:>11}" for c in USAGE_COLUMNS) + f"  (replica {items[0].replica})"
          if items else "no tenants")
    for item in items:
        row = {**item.limits.model_dump(), **item.model_dump(exclude={"limits"})}
        print("  ".join(f"{'-' if row[c] is None else row[c]:>11}" for c in USAGE_COLUMNS))
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
        if name == "logs":
            p.add_argument("-f", "--follow", action="store_true",
                           help="print the output as it is written, until the end")
    p = sub.add_parser("list", help="list recent invocations")
    p.add_argument("--status")
    p.add_argument("--profile")
    p.add_argument("--limit", type=int)
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("artifacts", help="list or download artifacts")
    p.add_argument("id")
    p.add_argument("--out", help="download into this directory")
    p.set_defaults(func=cmd_artifacts)
    p = sub.add_parser("usage", help="this tenant's running and queued calls, and its limits")
    p.add_argument("--all", action="store_true",
                   help="every tenant's (an operator tenant: JOBGATE_OPERATOR_TENANTS)")
    p.set_defaults(func=cmd_usage)
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
    except (CliError, JobgateError) as e:
        _progress("")
        print(f"jobgate: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
