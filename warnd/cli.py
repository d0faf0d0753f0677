"""`warnd`: run the daemon, check a config, make an API token."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from warnd import __version__
from warnd.config import ConfigError, Settings, config_path, load_settings


def _load(path_arg: str | None) -> tuple[Path, Settings]:
    """Settings from --config / $WARND_CONFIG / the default path."""
    path = config_path(path_arg)
    return path, load_settings(path)


def check_config(path_arg: str | None) -> int:
    """Validate the config and the directory it names; print each problem by key."""
    # Lazy, like every command's imports here: `warnd hash-token` should not load the API.
    from warnd.api.auth import SLOW_HASH_ADVICE, slow_hash_keys
    from warnd.directory import Directory

    path = config_path(path_arg)
    problems: list[tuple[str, str]] = []
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        problems = exc.problems
    else:
        try:
            directory = Directory.load(settings.directory.path)
        except ConfigError as exc:
            problems = [(f"directory ({settings.directory.path}): {k}", m) for k, m in exc.problems]
    if problems:
        print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        for key, message in problems:
            print(f"  {key}: {message}", file=sys.stderr)
        return 1
    print(
        f"{path}: ok — {len(directory.villages)} villages, {len(directory.people)} people, "
        f"{len(settings.auth.tokens)} API tokens"
    )
    slow = slow_hash_keys(settings)
    if slow:
        # Still accepted, so not a problem: a note on how to make them cheap to check.
        print(f"{path}: note — {len(slow)} hash(es) in the old PBKDF2 form:", file=sys.stderr)
        for key in slow:
            print(f"  {key}", file=sys.stderr)
        print(f"  {SLOW_HASH_ADVICE}", file=sys.stderr)
    return 0


def hash_token(rehash: bool = False) -> int:
    """Print a new random API token and the line to put in warnd.toml (or, to rehash, an old token's)."""
    # Lazy: this command needs no more than the hash (start-up speed, not a cycle).
    from warnd.tokenhash import MIN_REHASH_CHARS, hash_token, new_token

    if rehash:
        # An existing token, from stdin so that it stays out of the shell history and `ps`.
        token = sys.stdin.readline().strip()
        if len(token) < MIN_REHASH_CHARS:
            print(
                f"warnd: a token of {len(token)} characters is too short to be a random one "
                f"(at least {MIN_REHASH_CHARS}); make a new one with `warnd hash-token`",
                file=sys.stderr,
            )
            return 1
        print(f'hash = "{hash_token(token)}"')
        print("Put this line in place of the old hash; the holder keeps the token.", file=sys.stderr)
        return 0
    token = new_token()
    print(f"token: {token}")
    print(f'hash = "{hash_token(token)}"')
    print(
        "Give the token to its holder (e.g. WARND_TOKEN for warnctl); only the hash goes in the config.",
        file=sys.stderr,
    )
    return 0


def run(path_arg: str | None) -> int:
    """Run the daemon in the foreground until SIGTERM."""
    # Lazy: only `run` loads the whole daemon (the adapters, audio, MQTT); the other commands start fast.
    from warnd import log
    from warnd.daemon import run as run_daemon
    from warnd.instancelock import AlreadyRunning
    from warnd.store.errors import DatabaseInUse

    try:
        path, settings = _load(path_arg)
    except ConfigError as exc:
        print(f"warnd: cannot start: {exc}", file=sys.stderr)
        return 2
    log.configure(settings.log_level)
    try:
        asyncio.run(run_daemon(settings, config_path=path))
    except ConfigError as exc:
        print(f"warnd: cannot start: {exc}", file=sys.stderr)
        return 2
    except (AlreadyRunning, DatabaseInUse) as exc:
        print(f"warnd: {exc}", file=sys.stderr)
        # EX_TEMPFAIL: the other one may stop; under systemd, Restart=on-failure tries again.
        return os.EX_TEMPFAIL
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `warnd` command."""
    parser = argparse.ArgumentParser(prog="warnd", description="township emergency-warning daemon")
    parser.add_argument("--version", action="version", version=f"warnd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run the daemon"), ("check-config", "validate a config file")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help="TOML file (default: $WARND_CONFIG or /etc/warnd/warnd.toml)")
    p = sub.add_parser("hash-token", help="print a new API token and its hash for warnd.toml")
    p.add_argument(
        "--rehash",
        action="store_true",
        help="read an existing token from stdin and print its hash (to replace an old pbkdf2_sha256 one)",
    )
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.config)
    if args.command == "check-config":
        return check_config(args.config)
    return hash_token(args.rehash)


if __name__ == "__main__":
    sys.exit(main())
