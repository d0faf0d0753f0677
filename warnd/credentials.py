"""Secrets from systemd credentials (`$CREDENTIALS_DIRECTORY`), so they need not sit in warnd.toml.

warnd.service loads every file in /etc/warnd/credentials/ as `warnd_<file name>`:

- `warnd_<section>_<key>`: the value of `[<section>] <key>`, e.g. `warnd_twilio_auth_token`
  for `[twilio] auth_token`, `warnd_mqtt_password` for `[mqtt] password`. The file holds the
  bare value; a trailing newline is dropped.
- `warnd_ack_link_secret`: `[ack_links] secret`.
- `warnd_api_token_hashes`: a TOML fragment of `[[tokens]]` tables (name, role, hash), added to
  the `[[auth.tokens]]` of warnd.toml.

Precedence: WARND_* environment variables, then credentials, then warnd.toml. A credential
file whose name matches no key is an error (a typo must not silently drop a secret).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

PREFIX = "warnd_"
TOKENS = "api_token_hashes"
# Credential names that do not spell their key as <section>_<key>, as warnd.service documents them.
ALIASES = {"ack_link_secret": ("ack_links", "secret")}


# Here rather than in warnd.config: credentials are read while the settings are built, and
# warnd.config (which re-exports it) builds them with this module's source.
class ConfigError(Exception):
    """A config that cannot be used; `problems` are (dotted key, message) pairs."""

    def __init__(self, path: Path | None, problems: list[tuple[str, str]]) -> None:
        """Keep the problems for printing by key."""
        self.path = path
        self.problems = problems
        where = f"{path}: " if path else ""
        super().__init__(where + "; ".join(f"{k}: {m}" for k, m in problems))


def _sections(settings_cls: type[BaseSettings]) -> dict[str, type[BaseModel]]:
    """Top-level tables of the settings (http, mqtt, twilio …) that are single models."""
    out = {}
    for name, info in settings_cls.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out[name] = ann
    return out


def read_credentials(settings_cls: type[BaseSettings], directory: Path) -> dict[str, Any]:
    """The settings the credential files in `directory` provide, as nested dicts.

    Raises:
        ConfigError naming each credential that is unknown or unreadable.
    """
    values: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    sections = _sections(settings_cls)
    try:
        paths = sorted(directory.iterdir())
    except OSError as exc:
        raise ConfigError(
            directory, [("$CREDENTIALS_DIRECTORY", f"cannot be read: {exc.strerror or exc}")]
        ) from None
    for path in paths:
        name = path.name
        if not name.startswith(PREFIX) or not path.is_file():
            continue
        short = name.removeprefix(PREFIX)
        key = f"credential {name}"
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append((key, f"cannot read: {type(exc).__name__}"))
            continue
        if short == TOKENS:
            try:
                tokens = tomllib.loads(text).get("tokens", [])
            except tomllib.TOMLDecodeError as exc:
                problems.append((key, f"not valid TOML: {exc}"))
                continue
            if not isinstance(tokens, list):
                problems.append((key, "must hold [[tokens]] tables"))
                continue
            values.setdefault("auth", {}).setdefault("tokens", []).extend(tokens)
            continue
        if short in ALIASES:
            section, field = ALIASES[short]
            values.setdefault(section, {})[field] = text.rstrip("\r\n")
            continue
        for section, model in sections.items():
            field = short.removeprefix(section + "_")
            if short.startswith(section + "_") and field in model.model_fields:
                values.setdefault(section, {})[field] = text.rstrip("\r\n")
                break
        else:
            problems.append(
                (key, "matches no setting (expected warnd_<section>_<key> or warnd_api_token_hashes)")
            )
    if problems:
        raise ConfigError(directory, problems)
    return values


class CredentialsSource(PydanticBaseSettingsSource):
    """A pydantic-settings source reading `$CREDENTIALS_DIRECTORY`; tokens add to the file's.

    Args:
        settings_cls: the settings class.
        below: the source this one overrides (the TOML file), whose tokens are kept.
        environ: the environment (for tests).
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        below: PydanticBaseSettingsSource,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """Remember where to look."""
        super().__init__(settings_cls)
        self.below = below
        self.environ = os.environ if environ is None else environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: `__call__` reads the whole directory at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        """The credentials' settings, or nothing when systemd passed none."""
        raw = self.environ.get("CREDENTIALS_DIRECTORY")
        if not raw:
            return {}
        values = read_credentials(self.settings_cls, Path(raw))
        extra = values.get("auth", {}).get("tokens")
        if extra:
            # Lists are replaced, not merged, between sources: keep warnd.toml's tokens too.
            base = self.below().get("auth", {}).get("tokens", [])
            values["auth"]["tokens"] = [*base, *extra]
        return values
