"""Config versions as people read them: a digest, a view with every secret masked, and a diff.

A version keeps the config's YAML exactly as it was loaded, `${VAR}` references unexpanded, so
a secret kept in the environment is never stored, and a rollback expands the references again
from the environment of the process that restores it. What an operator is shown is never that
text itself but `masked_view(text)`: the YAML re-written with the value of every secret field
masked. Secret fields are found from the config's own models (every `SecretStr`: provider and
admin keys, virtual keys, DSNs, the Redis URL, the audit HMAC key, the simulator's key), plus,
where the config is open-ended (litellm's extra parameters, plugin options), any field whose
name says secret (`api_key`, `*_token`, `password`, `credentials`, ...); and the password of
any URL written `scheme://user:password@host`, wherever it is. A reference to the
environment (`${VAR}`, `os.environ/VAR`) is shown as it is: it names the variable, not its
value; a literal default in one (`${VAR:-...}`) is masked. A masked value shows a fingerprint
keyed per process, so a diff still shows that a secret changed and never what it is.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import re
import secrets
import types
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, SecretStr

from gateway.config import GatewayConfig
from gateway.config_base import load_yaml

# Names of open-ended fields that hold secrets (a word of the name, split on `_`).
_SECRET_NAME = re.compile(r"(?i)(^|_)(api_?key|key|secret|token|password|passwd|pwd|"
                          r"credentials?|dsn|private_key|auth_header)($|_)")
_WHOLE_REF = re.compile(r"^(\$\{[A-Za-z_][A-Za-z0-9_]*\}|os\.environ/[A-Za-z_][A-Za-z0-9_]*)$")
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)([^@\s/]+)(@)")
_DEFAULTED_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*):-[^}]*\}$")
_FINGERPRINT_KEY = secrets.token_bytes(32)   # per process: fingerprints never leave it usable
SHORT = 12                                   # hex digits of a digest shown to people


@dataclass(frozen=True, slots=True)
class VersionTag:
    """The version a runtime was compiled from, as every response, span, audit record and
    access-log line names it (0: not yet numbered, before start-up has recorded it)."""
    number: int = 0
    digest: str = ""

    @property
    def short(self) -> str:
        return self.digest[:SHORT]


def digest_of(text: str) -> str:
    """The version's content digest: sha256 of the YAML text, hex."""
    return hashlib.sha256(text.encode()).hexdigest()


def text_of(config: GatewayConfig) -> str:
    """A config built in memory (an embedding application, a test), as YAML: its secrets are
    already masked by pydantic, so a version of it can be shown but never restored."""
    dumped = config.model_dump(mode="json", exclude_defaults=True)
    return str(yaml.safe_dump(dumped, sort_keys=False, allow_unicode=True,
                              default_flow_style=False))


def masked_view(text: str) -> str:
    """The config `text` as YAML with every secret masked (see the module docstring). Text
    that is not a YAML mapping (never stored: only valid configs get a version) is withheld."""
    try:
        raw, _ = load_yaml(text)
    except yaml.YAMLError:
        return "# (not valid YAML: withheld)\n"
    if not isinstance(raw, dict):
        return "# (not a mapping: withheld)\n"
    masked = _mask(raw, GatewayConfig)
    return str(yaml.safe_dump(masked, sort_keys=False, allow_unicode=True,
                              default_flow_style=False))


def diff(old: str, new: str, old_name: str, new_name: str) -> str:
    """A unified diff of two versions' masked views ("" when they read the same)."""
    lines = difflib.unified_diff(masked_view(old).splitlines(), masked_view(new).splitlines(),
                                 fromfile=old_name, tofile=new_name, lineterm="")
    return "\n".join(lines)


def _mask(raw: Any, model: type[BaseModel] | None) -> Any:
    if isinstance(raw, dict):
        return {k: _mask_field(k, v, model) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_mask(v, model) for v in raw]
    if isinstance(raw, str):  # a password in any URL (an api_base with user:password@)
        return _URL_PASSWORD.sub(r"\1***\3", raw)
    return raw


def _mask_field(name: Any, value: Any, model: type[BaseModel] | None) -> Any:
    field = model.model_fields.get(str(name)) if model is not None else None
    if field is None:  # open-ended (litellm's extra parameters, plugin options): by its name
        if isinstance(name, str) and _SECRET_NAME.search(name) and _scalar(value):
            return _masked(value)
        return _mask(value, None)
    if _holds_secret(field.annotation):
        return _masked(value)
    return _by_annotation(value, field.annotation)


def _by_annotation(value: Any, annotation: Any) -> Any:
    """Walk `value` as the field's type says: into models, lists of them, maps of them."""
    args = get_args(annotation)
    if get_origin(annotation) is dict and len(args) == 2 and _model_in(args[1]) is not None:
        return {k: _mask(v, _model_in(args[1])) for k, v in value.items()} \
            if isinstance(value, dict) else value
    return _mask(value, _model_in(annotation))  # a map of anything: open-ended, by name


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType, tuple, list):
        for arg in get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _holds_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(_holds_secret(a) for a in get_args(annotation))


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _masked(value: Any) -> Any:
    if value is None or value == "":
        return value
    text = str(value)
    if _WHOLE_REF.match(text):
        return text                   # the variable's name, not its value
    defaulted = _DEFAULTED_REF.match(text)
    if defaulted:
        return f"${{{defaulted.group(1)}:-***}}"
    mark = hmac.new(_FINGERPRINT_KEY, text.encode(), hashlib.sha256).hexdigest()[:8]
    return f"*** (fingerprint {mark})"
