"""Typed, frozen configuration: loaded from one YAML file and validated once at start-up.

Each section is a frozen dataclass; a field's ``metadata`` carries its range (``min``, ``max``)
and a one-line ``doc``. :func:`load_config` walks the YAML against these dataclasses and raises
:class:`~driftwatch.errors.ConfigError` with one message that names the file and the dotted key
(``alerts.rate_per_s``) for: unknown keys, wrong types, values out of range and missing required
keys. Relative paths are resolved against the folder of the YAML file, so a config can travel
with its data.

Secrets (Slack webhook URLs) are never read from the YAML. They are looked up, by name, in the
systemd credentials directory (``$CREDENTIALS_DIRECTORY/<name>``, see ``LoadCredential=``) and
then in the environment (``DRIFTWATCH_<NAME>``, upper case, ``-`` as ``_``), and are held in a
:class:`Secret` whose ``repr`` and ``str`` are masked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from driftwatch.errors import ConfigError

#: The DECam science CCDs, in CCDNUM order (reference/decam.md).
DECAM_CCDS: tuple[str, ...] = (
    "S29", "S30", "S31", "S25", "S26", "S27", "S28", "S20", "S21", "S22", "S23", "S24",
    "S14", "S15", "S16", "S17", "S18", "S19", "S8", "S9", "S10", "S11", "S12", "S13",
    "S1", "S2", "S3", "S4", "S5", "S6", "S7",
    "N1", "N2", "N3", "N4", "N5", "N6", "N7", "N8", "N9", "N10", "N11", "N12", "N13", "N14",
    "N15", "N16", "N17", "N18", "N19", "N20", "N21", "N22", "N23", "N24", "N25", "N26", "N27",
    "N28", "N29", "N30", "N31",
)

_REQUIRED = dataclasses.MISSING


def _f(default: Any = _REQUIRED, *, doc: str, min: float | None = None,  # noqa: A002
       max: float | None = None, factory: Any = None) -> Any:  # noqa: A002
    """Declare a config field with its documentation and range."""
    meta = {"doc": doc, "min": min, "max": max}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    if default is _REQUIRED:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


class Secret:
    """A secret string (a webhook URL) that never shows itself when printed or logged."""

    __slots__ = ("_value", "name")

    def __init__(self, value: str, name: str) -> None:
        self._value = value
        self.name = name

    def reveal(self) -> str:
        """Return the secret itself: only for the one call that needs it (the HTTP request)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.name}=****)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):  # keep secrets out of pickles sent to workers
        raise TypeError("a Secret is not sent to workers")


def secret_env_name(name: str) -> str:
    """Return the environment variable that may hold the credential ``name``."""
    return "DRIFTWATCH_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def resolve_secret(name: str, environ: Mapping[str, str] | None = None) -> Secret | None:
    """Find the credential ``name`` in $CREDENTIALS_DIRECTORY, then in the environment."""
    environ = os.environ if environ is None else environ
    cred_dir = environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / name
        if path.is_file():
            value = path.read_text().strip()
            if value:
                return Secret(value, name)
    value = environ.get(secret_env_name(name), "").strip()
    return Secret(value, name) if value else None


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PathsConfig:
    watch: tuple[Path, ...] = _f(doc="folders where new exposures arrive (searched recursively)")
    products: Path = _f(doc="folder where per-CCD products, catalogues and stamps are written")
    state: Path = _f(doc="local folder for the database, logs and runtime state (local disk)")
    database_url: str = _f("", doc="SQLAlchemy URL; empty means sqlite:///<state>/driftwatch.sqlite")
    catalogue: Path | None = _f(None, doc="a fixed reference catalogue for every field (else built)")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state / 'driftwatch.sqlite'}"


@dataclass(frozen=True)
class WatchConfig:
    observer: Literal["inotify", "polling"] = _f("inotify", doc="polling for NFS/CIFS mounts")
    poll_interval_s: float = _f(2.0, min=0.1, max=600, doc="polling observer period")
    patterns: tuple[str, ...] = _f(
        factory=lambda: ("*.fits", "*.fits.fz"),
        doc="file-name patterns of exposures (raw DECam_* and CP c4d_*)",
    )
    ignore_patterns: tuple[str, ...] = _f(
        factory=lambda: (".*", "*.tmp", "*.part", "*~"),
        doc="temporary names used by transfers; their rename into place is the event",
    )
    settle_s: float = _f(3.0, min=0.0, max=3600, doc="size and mtime must be stable this long")
    trust_rename: bool = _f(
        True, doc="a file renamed into place is checked at once, without settling first",
    )
    complete_timeout_s: float = _f(900.0, min=1.0, doc="report a file that never completes")
    rescan_interval_s: float = _f(60.0, min=1.0, doc="reconciliation scan period")
    dq_wait_s: float = _f(300.0, min=0.0, doc="how long an image waits for its DQ mask")
    verify_checksum: bool = _f(True, doc="verify CHECKSUM/DATASUM where the file has them")


@dataclass(frozen=True)
class PipelineConfig:
    drift_rate_arcsec_s: float = _f(
        0.5, min=-60.0, max=60.0,
        doc="telescope drift rate in Declination (arcsec/s; sign = direction of Dec change)",
    )
    drift_bands: tuple[str, ...] = _f(factory=lambda: ("VR",), doc="bands taken drifting")
    pointed_bands: tuple[str, ...] = _f(factory=lambda: ("g", "r"), doc="catalogue bands")
    obstypes: tuple[str, ...] = _f(factory=lambda: ("object",), doc="OBSTYPE values reduced")
    ccds: tuple[str, ...] = _f(factory=lambda: DECAM_CCDS, doc="CCDs to reduce")
    skip_ccds: tuple[str, ...] = _f(factory=lambda: ("N30",), doc="dead CCDs, skipped")
    observatory_longitude_deg: float = _f(
        -70.81489, min=-180, max=180, doc="east longitude, for the night of a DATE-OBS"
    )
    detect_threshold_sigma: float = _f(5.0, min=2.0, max=100, doc="trail detection threshold")
    pointing_tolerance_arcsec: float = _f(5.0, min=0.0, max=60, doc="largest pointing error")
    match_radius_px: float = _f(2.0, min=0.1, max=20, doc="trail-to-star match tolerance")
    event_threshold_sigma: float = _f(6.0, min=3.0, max=100, doc="event candidate threshold")
    event_min_duration_s: float = _f(0.3, min=0.05, doc="shortest event searched")
    event_max_duration_s: float = _f(5.0, min=0.1, doc="longest event searched")
    stamps: bool = _f(True, doc="write a PNG per candidate")


@dataclass(frozen=True)
class WorkersConfig:
    backend: Literal["local", "dask"] = _f("local", doc="process pool here, or Dask distributed")
    count: int = _f(2, min=1, max=1024, doc="worker processes (local backend)")
    max_tasks_per_worker: int = _f(50, min=1, doc="recycle a worker process after this many")
    dask_scheduler: str = _f("local", doc="tcp://host:8786, or 'local' for a LocalCluster")
    max_attempts: int = _f(3, min=1, max=100, doc="tries per CCD job before it fails for good")
    retry_backoff_s: float = _f(30.0, min=0.0, doc="first retry delay (doubles each try)")
    grace_period_s: float = _f(60.0, min=0.0, doc="on SIGTERM, wait this long for running CCDs")


@dataclass(frozen=True)
class AlertsConfig:
    enabled: bool = _f(True, doc="queue alerts at all")
    dry_run: bool = _f(False, doc="write the JSON to the log and products instead of sending")
    quiet: bool = _f(False, doc="queue and record, but send only operations messages")
    min_significance: float = _f(8.0, min=0.0, doc="candidates below this are not alerted")
    kinds: tuple[str, ...] = _f(
        factory=lambda: ("brightening", "dip", "flash"), doc="candidate kinds that alert"
    )
    routes: dict[str, str] = _f(
        factory=lambda: {"default": "slack-webhook"},
        doc="route name -> credential name of its webhook URL ('default' is required)",
    )
    kind_routes: dict[str, str] = _f(factory=dict, doc="candidate kind or 'ops' -> route name")
    rate_per_s: float = _f(1.0, min=0.01, max=10, doc="messages per second per webhook")
    burst: int = _f(3, min=1, max=50, doc="token bucket size")
    max_attempts: int = _f(20, min=1, doc="give up on a message after this many server errors")
    retry_backoff_s: float = _f(2.0, min=0.01, max=3600,
                                doc="first retry delay after a 5xx or network error (doubles)")
    retry_max_backoff_s: float = _f(120.0, min=0.01, max=86400, doc="longest retry delay")
    timeout_s: float = _f(10.0, min=0.1, max=300, doc="HTTP timeout of one webhook request")
    failure_rate_threshold: float = _f(0.2, min=0.0, max=1.0, doc="ops alert above this")
    summary_time_utc: str = _f("12:00", doc="HH:MM UTC of the nightly summary")
    products_url: str = _f("", doc="base URL where products are served (else local paths)")
    webhooks: dict[str, Secret] = _f(factory=dict, doc="resolved at load time, never from YAML")


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _f("INFO", doc="log level")
    file: Path | None = _f(None, doc="also log to this file (rotated daily)")
    format: Literal["text", "json"] = _f("text", doc="json for log shippers")


@dataclass(frozen=True)
class Config:
    paths: PathsConfig
    watch: WatchConfig = field(default_factory=WatchConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: Path | None = field(default=None, compare=False)

    def to_dict(self, *, mask_secrets: bool = True) -> dict[str, Any]:
        """Return plain data for printing (secrets masked) and hashing."""
        return _to_plain(self, mask_secrets)

    def pipeline_hash(self) -> str:
        """Return a short hash of the settings that change science products."""
        blob = json.dumps(_to_plain(self.pipeline, True), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_NOT_FROM_YAML = {("alerts", "webhooks")}


def _to_plain(obj: Any, mask: bool) -> Any:
    if dataclasses.is_dataclass(obj):
        return {
            f.name: _to_plain(getattr(obj, f.name), mask)
            for f in dataclasses.fields(obj) if f.name != "source"
        }
    if isinstance(obj, Secret):
        return repr(obj) if mask else obj.reveal()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (tuple, list)):
        return [_to_plain(v, mask) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v, mask) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
class _Invalid(Exception):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_type_name(typing.get_args(tp)[1])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is Path:
        return "a path"
    if tp is type(None):
        return "null"
    return {"int": "an integer", "float": "a number", "bool": "true or false",
            "str": "a string"}.get(getattr(tp, "__name__", ""), str(tp))


def _convert(value: Any, tp: Any, key: str, base: Path) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key, base)
            except _Invalid:
                continue
        raise _Invalid(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise _Invalid(key, f"expected {_type_name(tp)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if isinstance(value, (str, Path)):
            value = [value]  # a single folder or pattern is a list of one
        if not isinstance(value, list):
            raise _Invalid(key, f"expected {_type_name(tp)}, got {value!r}")
        return tuple(_convert(v, args[0], f"{key}[{i}]", base) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _Invalid(key, f"expected {_type_name(tp)}, got {value!r}")
        return {str(k): _convert(v, args[1], f"{key}.{k}", base) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, base)
    if tp is bool:
        if not isinstance(value, bool):
            raise _Invalid(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _Invalid(key, f"expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value.strip():
            raise _Invalid(key, f"expected a path, got {value!r}")
        path = Path(os.path.expandvars(value)).expanduser()
        return path if path.is_absolute() else (base / path).resolve()
    raise _Invalid(key, f"unsupported type {tp!r}")  # pragma: no cover - schema bug


def _build(cls: type, data: Any, prefix: str, base: Path) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _Invalid(prefix or "(top level)", f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    section = prefix.split(".")[0] if prefix else ""
    for name in data:
        if name not in fields or (section, name) in _NOT_FROM_YAML:
            known = ", ".join(n for n in fields if (section, n) not in _NOT_FROM_YAML)
            raise _Invalid(f"{prefix}.{name}" if prefix else str(name),
                           f"unknown key (known keys here: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                if dataclasses.is_dataclass(hints[name]):
                    kwargs[name] = _build(hints[name], {}, key, base)
                    continue
                raise _Invalid(key, "required key is missing")
            continue
        value = _convert(data[name], hints[name], key, base)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        for v in (value if isinstance(value, tuple) else (value,)):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if lo is not None and v < lo:
                    raise _Invalid(key, f"{v} is below the minimum {lo}")
                if hi is not None and v > hi:
                    raise _Invalid(key, f"{v} is above the maximum {hi}")
        kwargs[name] = value
    return cls(**kwargs)


def _cross_checks(cfg: Config) -> None:
    if not cfg.paths.watch:
        raise _Invalid("paths.watch", "at least one folder is required")
    for name in (*cfg.pipeline.ccds, *cfg.pipeline.skip_ccds):
        if name not in DECAM_CCDS:
            raise _Invalid("pipeline.ccds", f"{name!r} is not a DECam science CCD")
    if cfg.pipeline.event_min_duration_s >= cfg.pipeline.event_max_duration_s:
        raise _Invalid("pipeline.event_min_duration_s", "must be below event_max_duration_s")
    if "default" not in cfg.alerts.routes:
        raise _Invalid("alerts.routes", "a 'default' route is required")
    for kind, route in cfg.alerts.kind_routes.items():
        if route not in cfg.alerts.routes:
            raise _Invalid(f"alerts.kind_routes.{kind}", f"unknown route {route!r}")
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", cfg.alerts.summary_time_utc):
        raise _Invalid("alerts.summary_time_utc", "expected HH:MM (UTC)")
    url = cfg.paths.database_url
    if url and "://" not in url:
        raise _Invalid("paths.database_url", f"not an SQLAlchemy URL: {url!r}")


def config_from_dict(data: Any, *, base: Path, source: Path | None = None,
                     environ: Mapping[str, str] | None = None) -> Config:
    """Validate plain data (as parsed from YAML) into a :class:`Config`.

    Raises
    ------
    ConfigError
        Naming the file (when known) and the dotted key at fault.
    """
    where = f"{source}: " if source else ""
    try:
        cfg = _build(Config, data, "", base)
        _cross_checks(cfg)
    except _Invalid as exc:
        raise ConfigError(f"{where}{exc.key}: {exc.problem}") from None
    webhooks = {}
    for route, cred in cfg.alerts.routes.items():
        secret = resolve_secret(cred, environ)
        if secret is not None:
            webhooks[route] = secret
    alerts = dataclasses.replace(cfg.alerts, webhooks=webhooks)
    return dataclasses.replace(cfg, alerts=alerts, source=source)


def load_config(path: str | os.PathLike[str],
                environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the YAML configuration file at ``path``."""
    path = Path(path).expanduser().resolve()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    return config_from_dict(data, base=path.parent, source=path, environ=environ)


def check_paths(cfg: Config) -> list[str]:
    """Return problems with the folders the config names (missing watch folders, unwritable)."""
    problems = []
    for i, folder in enumerate(cfg.paths.watch):
        if not folder.is_dir():
            problems.append(f"paths.watch[{i}]: folder does not exist: {folder}")
    for key in ("products", "state"):
        folder: Path = getattr(cfg.paths, key)
        existing = folder
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not os.access(existing, os.W_OK):
            problems.append(f"paths.{key}: cannot create or write {folder}")
    if cfg.paths.catalogue is not None and not cfg.paths.catalogue.is_file():
        problems.append(f"paths.catalogue: file does not exist: {cfg.paths.catalogue}")
    return problems
