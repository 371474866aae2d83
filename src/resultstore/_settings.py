"""Settings of a result store, read from arguments or ``RESULTSTORE_*`` environment variables.

Validation is pure (no file or network access). The URL's user name, password, db and query
options are merged into the fields, so after validation the fields hold the resolved values and
``url`` holds the URL without its password.
"""

from __future__ import annotations

import contextlib
import ssl as _ssl
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from datetime import timedelta
from functools import partial
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from resultstore._url import ParsedURL, parse_url, remove_password

__all__ = ["CertReqs", "SentinelSettings", "StoreSettings", "TLSSettings"]

CertReqs = Literal["required", "optional", "none"]
_DEFAULT_URL = "redis://localhost:6379/0"
# Set only while StoreSettings.from_url runs: build from its arguments, not the environment.
_ARGUMENTS_ONLY: ContextVar[bool] = ContextVar("resultstore_arguments_only", default=False)


def _cert_reqs(value: object) -> object:
    """Normalise Celery's and the ssl module's spellings of cert_reqs to the lower-case word."""
    if isinstance(value, _ssl.VerifyMode):
        return value.name.removeprefix("CERT_").lower()
    if isinstance(value, str):
        word = value.strip().lower().removeprefix("ssl.").removeprefix("cert_")
        if word in ("required", "optional", "none"):
            return word
    raise ValueError(
        "cert_reqs must be required, optional or none (CERT_REQUIRED, CERT_OPTIONAL, CERT_NONE"
        " or an ssl.VerifyMode also work); fix ssl_cert_reqs"
    )


_CertReqsIn = Annotated[CertReqs, BeforeValidator(_cert_reqs)]
_Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_NonNegSeconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _without_inputs(error: ValidationError) -> ValidationError:
    """The same errors with every input hidden, so ``errors()`` and ``json()`` hold no secret."""
    details: list[InitErrorDetails] = []
    for found in error.errors(include_url=False):
        detail = InitErrorDetails(type=found["type"], loc=found["loc"], input="<hidden>")
        if "ctx" in found:
            detail["ctx"] = found["ctx"]
        details.append(detail)
    try:
        return ValidationError.from_exception_data(error.title, details, hide_input=True)
    except Exception:  # pragma: no cover - an error type pydantic cannot rebuild
        return error


def _validate_hiding_inputs(validate: Callable[[], None]) -> None:
    """Run a model's validation; its ValidationError comes out with every input hidden."""
    try:
        validate()
    except ValidationError as exc:
        error = _without_inputs(exc)
    else:
        return
    raise error  # outside the except block, so the original (with inputs) is not chained


class _HiddenInputsModel(BaseModel):
    """A model whose ``ValidationError`` hides every input, in ``errors()`` and ``json()`` too."""

    def __init__(self, **values: Any) -> None:
        """Validate ``values``.

        Raises:
            pydantic.ValidationError: naming the field and the fix, with every input hidden.
        """
        _validate_hiding_inputs(partial(super().__init__, **values))


class TLSSettings(_HiddenInputsModel):
    """TLS options; Celery's ``ssl_``-prefixed keys (``redis_backend_use_ssl``) are accepted too."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    cert_reqs: _CertReqsIn = Field(
        "required", validation_alias=AliasChoices("cert_reqs", "ssl_cert_reqs")
    )
    ca_certs: str | None = Field(None, validation_alias=AliasChoices("ca_certs", "ssl_ca_certs"))
    certfile: str | None = Field(None, validation_alias=AliasChoices("certfile", "ssl_certfile"))
    keyfile: str | None = Field(None, validation_alias=AliasChoices("keyfile", "ssl_keyfile"))
    check_hostname: bool | None = Field(
        None, validation_alias=AliasChoices("check_hostname", "ssl_check_hostname")
    )

    @model_validator(mode="after")
    def _check_hostname_needs_verification(self) -> TLSSettings:
        if self.check_hostname and self.cert_reqs == "none":
            raise ValueError(
                "ssl check_hostname=true cannot work with cert_reqs=none; set cert_reqs=required"
                " (recommended) or check_hostname=false"
            )
        return self

    @property
    def verify_hostname(self) -> bool:
        """Whether the server's host name is checked: ``check_hostname``, or when unset,
        whether ``cert_reqs`` is ``required``."""
        if self.check_hostname is None:
            return self.cert_reqs == "required"
        return self.check_hostname


class SentinelSettings(_HiddenInputsModel):
    """How to talk to the Sentinel processes themselves (the master uses StoreSettings' fields)."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    username: str | None = None
    password: SecretStr | None = None
    ssl: TLSSettings | None = None
    socket_timeout: _Seconds | None = None
    socket_connect_timeout: _Seconds | None = None


_SECONDS = (TypeAdapter(_Seconds), "a number of seconds above 0")
_NONNEG = (TypeAdapter(_NonNegSeconds), "a number of seconds, 0 or more")
_COUNT = (TypeAdapter(Annotated[int, Field(ge=1)]), "a whole number, 1 or more")
_COUNT0 = (TypeAdapter(Annotated[int, Field(ge=0)]), "a whole number, 0 or more")
_BOOL = (TypeAdapter(bool), "true or false")
_TEXT = (TypeAdapter(str), "text")
# url query option -> (the field it fills, the field's type, what a valid value looks like)
_URL_OPTIONS: dict[str, tuple[str, TypeAdapter[Any], str]] = {
    "socket_timeout": ("socket_timeout", *_SECONDS),
    "socket_connect_timeout": ("socket_connect_timeout", *_SECONDS),
    "socket_keepalive": ("socket_keepalive", *_BOOL),
    "retry_on_timeout": ("retry_on_timeout", *_BOOL),
    "health_check_interval": ("health_check_interval", *_NONNEG),
    "max_connections": ("max_connections", *_COUNT),
    "client_name": ("client_name", *_TEXT),
    "wait_replicas": ("wait_replicas", *_COUNT0),
    "wait_replicas_timeout": ("wait_replicas_timeout", *_SECONDS),
    "master_name": ("master_name", *_TEXT),
    "ssl_cert_reqs": ("cert_reqs", TypeAdapter(_CertReqsIn), "required, optional or none"),
    "ssl_ca_certs": ("ca_certs", *_TEXT),
    "ssl_certfile": ("certfile", *_TEXT),
    "ssl_keyfile": ("keyfile", *_TEXT),
    "ssl_check_hostname": ("check_hostname", *_BOOL),
}
_PLAIN: dict[str, TypeAdapter[Any]] = {
    "username": _TEXT[0],
    "password": _TEXT[0],
    "db": TypeAdapter(int),
}


def _convert(key: str, raw: str) -> Any:
    _, adapter, expected = _URL_OPTIONS[key]
    try:
        return adapter.validate_python(raw)
    except ValidationError:
        raise ValueError(f"url option `{key}` must be {expected}; fix it in the url") from None


def _merge(
    data: dict[str, Any], name: str, value: Any, adapter: TypeAdapter[Any], shown: str
) -> None:
    """Put the url's ``value`` in ``data[name]`` unless given; a different value is an error."""
    given = data.get(name)
    if given is None:
        data[name] = value
        return
    try:
        if isinstance(given, SecretStr):
            given = given.get_secret_value()
        given = adapter.validate_python(given)
    except ValidationError:
        return  # field validation reports the bad value
    if given != value:
        raise ValueError(f"a different {name} is given in both url and `{shown}`; give it once")


class StoreSettings(BaseSettings):
    """Everything a store needs to connect, from keyword arguments or ``RESULTSTORE_*`` variables.

    Raises ``pydantic.ValidationError`` naming the field and the fix; no secret ever appears in
    its text, nor in ``repr``, ``str`` or ``model_dump_json``.
    """

    model_config = SettingsConfigDict(
        env_prefix="RESULTSTORE_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        hide_input_in_errors=True,
    )

    url: str = _DEFAULT_URL
    master_name: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    db: int | None = Field(None, ge=0)
    ssl: TLSSettings | None = None
    sentinel_kwargs: SentinelSettings = SentinelSettings()
    min_other_sentinels: int = Field(0, ge=0)
    max_connections: int = Field(50, ge=1)
    socket_timeout: _Seconds | None = 10.0
    socket_connect_timeout: _Seconds | None = 5.0
    socket_keepalive: bool = True
    retry_on_timeout: bool = False
    health_check_interval: _NonNegSeconds = 0
    client_name: str | None = None
    reconnect_timeout: _Seconds = 30.0
    ping_interval: _Seconds = 5.0
    ping_timeout: _Seconds = 3.0
    result_expires: timedelta | None = timedelta(days=1)
    result_failure_expires: timedelta | None = None
    global_keyprefix: str = ""
    key_prefix: str = Field("celery-task-meta-", min_length=1)
    max_value_size: int = Field(512 * 1024 * 1024, ge=1)
    write_timeout: _Seconds | None = None
    wait_replicas: int = Field(0, ge=0)
    wait_replicas_timeout: _Seconds = 1.0

    def __init__(self, **values: Any) -> None:
        """Validate ``values`` merged with the ``RESULTSTORE_*`` environment variables.

        Raises:
            pydantic.ValidationError: naming the field and the fix, with every input hidden.
        """
        _validate_hiding_inputs(partial(super().__init__, **values))

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Settings from ``url`` and keyword ``options`` only: the environment is not read.

        Raises:
            pydantic.ValidationError: naming the field and the fix, with every input hidden.
        """
        token = _ARGUMENTS_ONLY.set(True)
        try:
            return cls(**options, url=url)
        finally:
            _ARGUMENTS_ONLY.reset(token)

    @classmethod
    def from_celery(cls, conf: Mapping[str, Any]) -> Self:
        """Settings from a Celery app's configuration: the same Redis, TLS, keys and expiry.

        Reads ``result_backend``, the ``redis_*`` settings, ``redis_backend_use_ssl``,
        ``result_backend_transport_options`` (``master_name``, ``sentinel_kwargs``,
        ``global_keyprefix``) and ``result_expires``; old upper-case names work too. Like
        ``from_url``, it does not read the environment. Example::

            store = ResultStore(StoreSettings.from_celery(celery_app.conf))

        Args:
            conf: ``app.conf`` of a Celery app, or any mapping of Celery setting names.

        Raises:
            ValueError: the result backend is not Redis/Valkey (``rpc://``, ``db+...``), or a
                setting has no resultstore equivalent; the message names the setting.
            pydantic.ValidationError: a translated value is invalid (a ``ValueError`` too).
        """
        from resultstore._celery_config import celery_settings

        url, options = celery_settings(conf)
        return cls.from_url(url, **options)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments first, then ``RESULTSTORE_*`` variables (unless in ``from_url``)."""
        if _ARGUMENTS_ONLY.get():
            return (init_settings,)
        return (init_settings, env_settings, dotenv_settings, file_secret_settings)

    @model_validator(mode="before")
    @classmethod
    def _merge_url(cls, data: Any) -> Any:
        """Merge the url's parts into the fields and drop the password from ``url``."""
        if not isinstance(data, dict):
            return data
        url = data.get("url")
        if url is None:  # the default url's /0 must not clash with a given db
            url = _DEFAULT_URL if data.get("db") is None else _DEFAULT_URL.removesuffix("/0")
        if not isinstance(url, str):
            return data
        try:
            target = parse_url(url)
        except ValueError as exc:
            raise ValueError(f"invalid `url`: {exc}") from None
        data = {**data, "url": remove_password(url)}
        for name in ("username", "password", "db"):
            if (value := getattr(target, name)) is not None:
                _merge(data, name, value, _PLAIN[name], name)
        for key, raw in target.query.items():
            field, adapter, _ = _URL_OPTIONS[key]
            if not key.startswith("ssl_"):
                _merge(data, field, _convert(key, raw), adapter, field)
        if target.kind == "tls":
            data["ssl"] = cls._merge_tls(data.get("ssl"), target)
        if data.get("db") is None:
            data["db"] = 0
        if data.get("result_failure_expires") is None:
            data["result_failure_expires"] = data.get("result_expires", timedelta(days=1))
        return data

    @staticmethod
    def _merge_tls(given: Any, target: ParsedURL) -> Any:
        """Combine the ``ssl`` field with the url's ``ssl_*`` options (``rediss://``)."""
        if isinstance(given, TLSSettings):
            given = given.model_dump(exclude_unset=True)
        if given is not None and not isinstance(given, dict):
            return given  # field validation reports it
        tls = dict(given or {})
        for key, raw in target.query.items():
            if key.startswith("ssl_"):
                field, adapter, _ = _URL_OPTIONS[key]
                if tls.get(field) is None and key in tls:  # Celery's spelling
                    tls[field] = tls.pop(key)
                _merge(tls, field, _convert(key, raw), adapter, f"ssl.{field}")
        return tls

    @field_validator("result_expires", "result_failure_expires", mode="before")
    @classmethod
    def _seconds_text(cls, value: Any) -> Any:
        """Read ``"3600"`` (say, from an environment variable) as seconds."""
        with contextlib.suppress(ValueError, TypeError):
            return float(value) if isinstance(value, str) else value
        return value

    @field_validator("result_expires", "result_failure_expires")
    @classmethod
    def _expiry(cls, value: timedelta | None) -> timedelta | None:
        """0 means no expiry (None); a negative expiry is an error."""
        if value is not None and value < timedelta(0):
            raise ValueError("expiry cannot be negative; give seconds above 0, or 0 for no expiry")
        return value or None

    @field_validator("global_keyprefix")
    @classmethod
    def _keyprefix(cls, value: str) -> str:
        """Celery's rule: append ``_`` unless empty or already ending in one of ``:_-.``."""
        return f"{value}_" if value and value[-1] not in ":_-." else value

    @model_validator(mode="after")
    def _check_topology(self) -> StoreSettings:
        """Reject options that do not fit the url's kind of connection."""
        kind = self.target.kind
        if self.ssl is not None and kind == "memory":
            raise ValueError("memory:// has no network connection; remove `ssl`")
        if self.ssl is not None and kind in ("tcp", "unix"):
            raise ValueError("`ssl` is set but the url is not a TLS url; use rediss:// for TLS")
        if kind == "sentinel":
            if not self.master_name:
                raise ValueError(
                    "sentinel URLs need master_name=...; set `master_name` or add"
                    " ?master_name=<name> to the url"
                )
        elif self.master_name is not None:
            raise ValueError("`master_name` only applies to sentinel:// urls; remove it")
        elif self.sentinel_kwargs != SentinelSettings():
            raise ValueError("`sentinel_kwargs` only applies to sentinel:// urls; remove it")
        return self

    @property
    def target(self) -> ParsedURL:
        """The parsed ``url`` (its password already removed; the fields hold resolved values)."""
        return parse_url(self.url)

    @property
    def is_memory(self) -> bool:
        """Whether this is the in-process ``memory://`` backend."""
        return self.target.kind == "memory"

    def security_warnings(self) -> list[str]:
        """One message per TLS configuration (data nodes, sentinels) that does not fully verify
        the server. The connection layer logs them each time a store is built."""
        found: list[str] = []
        for where, tls, setting in (
            ("the data nodes", self.ssl, "`ssl` or the url"),
            ("the sentinels", self.sentinel_kwargs.ssl, "`sentinel_kwargs.ssl`"),
        ):
            if tls is None or (tls.cert_reqs == "required" and tls.verify_hostname):
                continue
            problem = (
                f"uses cert_reqs={tls.cert_reqs}"
                if tls.cert_reqs != "required"
                else "does not check the server's host name"
            )
            found.append(
                f"TLS to {where} {problem}, which exposes the connection to man-in-the-middle"
                f" attacks; set ssl_cert_reqs=required with ssl_ca_certs=<CA file> and"
                f" ssl_check_hostname=true in {setting}"
            )
        return found
