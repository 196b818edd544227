"""The agent's settings: one table of keys, and where each value comes from.

    probe:     max_args, arg_len, ringbuf_pages, queue_size
    detection: rules, egress_allow, incident_window
    output:    mode, json
    api:       socket, socket_group, listen, tls_cert, tls_key, tls_client_ca, insecure_plaintext,
               max_subscribers
    journal:   path, retention_days, retention_count
    agent:     user, view
    metrics:   listen
    containers: podman_socket, containerd_socket, kubelet_socket, pod_logs
    sinks:     a list of sinks (sensor/sinks/sinkset.py): files, syslog, webhooks, OTLP

Each key has a default, a line in a YAML file (/etc/gpusentry/config.yaml, or the one given
with -c FILE; sensor/config.example.yaml documents every key), an environment variable
GPUSENTRY_<SECTION>_<KEY> (lists comma-separated) and a flag. A flag beats the environment,
which beats the file, which beats the default; every value is remembered with where it came
from, and every mistake is reported with that place and what is accepted, before anything
starts. Relative paths in the file are relative to the file's directory.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sensor.errors import UsageError
from sensor.rules import source

DEFAULT_FILE = Path("/etc/gpusentry/config.yaml")
ENV_PREFIX = "GPUSENTRY_"
# The defaults of the places the API and the journal live; sensor/api/server.py and
# sensor/consume.py name them too (tests/unit/test_config_file.py checks they agree). Said
# here as text so that building the parser (shell completion) imports no gRPC.
DEFAULT_SOCKET = "/run/gpusentry/sensor.sock"
DEFAULT_JOURNAL = "/var/lib/gpusentry/journal.db"
DEFAULT = "default"


class Invalid(ValueError):
    """A value of the wrong type or out of range; the message says what is accepted."""


# -- kinds of value ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Integer:
    low: int | None = None  # None: the code that uses it checks its range (ProbeConfig)
    high: int | None = None

    @property
    def accepted(self) -> str:
        if self.low is None:
            return "an integer"
        return f"an integer from {self.low} to {self.high}" if self.high else f"an integer of at least {self.low}"

    def from_yaml(self, value: Any, _base: Path) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"{value!r} is not {self.accepted}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise Invalid(f"{value} is out of range: give {self.accepted}")
        return value

    def from_env(self, text: str) -> int:
        try:
            number = int(text.strip())
        except ValueError:
            raise Invalid(f"{text!r} is not {self.accepted}") from None
        return self.from_yaml(number, Path())


@dataclass(frozen=True)
class Seconds:
    accepted: str = "a number of seconds above 0"

    def from_yaml(self, value: Any, _base: Path) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise Invalid(f"{value!r} is not {self.accepted}")
        return float(value)

    def from_env(self, text: str) -> float:
        try:
            return self.from_yaml(float(text), Path())
        except ValueError:
            raise Invalid(f"{text!r} is not {self.accepted}") from None


TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class Boolean:
    auto: bool = False  # null (in the environment: auto) leaves the choice to the agent

    @property
    def accepted(self) -> str:
        return "true, false or null (decided at start)" if self.auto else "true or false"

    def from_yaml(self, value: Any, _base: Path) -> bool | None:
        if isinstance(value, bool) or (value is None and self.auto):
            return value
        raise Invalid(f"{value!r} is not {self.accepted}")

    def from_env(self, text: str) -> bool | None:
        word = text.strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        if self.auto and word in ("", "auto", "null"):
            return None
        raise Invalid(f"{text!r} is not {self.accepted} (in the environment: {', '.join(TRUE_WORDS + FALSE_WORDS)}"
                      + (", auto)" if self.auto else ")"))


@dataclass(frozen=True)
class Text:
    optional: bool = True  # null (an empty variable) leaves it unset
    path: bool = False  # relative to the configuration file's directory
    keep: tuple[str, ...] = ()  # words that are no path ('none')

    @property
    def accepted(self) -> str:
        what = "a path" if self.path else "text"
        return what + (" or null" if self.optional else "") + "".join(f" or {w}" for w in self.keep)

    def from_yaml(self, value: Any, base: Path) -> str | None:
        if value is None and self.optional:
            return None
        if not isinstance(value, str) or not value:
            raise Invalid(f"{value!r} is not {self.accepted}")
        if self.path and value not in self.keep:
            return str(base / value)  # an absolute value stays as it is
        return value

    def from_env(self, text: str) -> str | None:
        if not text and self.optional:
            return None
        return self.from_yaml(text, Path())


@dataclass(frozen=True)
class Choice:
    values: tuple[str, ...]

    @property
    def accepted(self) -> str:
        return "one of " + ", ".join(self.values)

    def from_yaml(self, value: Any, _base: Path) -> str:
        if value not in self.values:
            raise Invalid(f"{value!r} is not {self.accepted}")
        return str(value)

    def from_env(self, text: str) -> str:
        return self.from_yaml(text.strip(), Path())


@dataclass(frozen=True)
class TextList:
    path: bool = False  # each item relative to the configuration file's directory
    networks: bool = False  # each item a CIDR

    @property
    def accepted(self) -> str:
        item = "network (CIDR, like 10.0.0.0/8)" if self.networks else "path" if self.path else "text"
        return f"a list of {item}s (in the environment: comma-separated)"

    def from_yaml(self, value: Any, base: Path) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise Invalid(f"{value!r} is not {self.accepted}")
        return tuple(self._item(i, item, base) for i, item in enumerate(value))

    def _item(self, index: int, item: Any, base: Path) -> str:
        if not isinstance(item, str) or not item:
            raise Invalid(f"item {index}: {item!r} is not {self.accepted}")
        if self.networks:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise Invalid(f"item {index}: {item!r} is not a network; give a CIDR like 10.0.0.0/8") from None
        return str(base / item) if self.path else item

    def from_env(self, text: str) -> tuple[str, ...]:
        return self.from_yaml([item.strip() for item in text.split(",") if item.strip()], Path())


Kind = Integer | Seconds | Boolean | Text | Choice | TextList


# -- the keys ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    section: str
    name: str
    kind: Kind
    default: Any
    help: str
    dest: str = ""  # the flag's argparse dest: the key's name unless said
    reloads: bool = False  # SIGHUP applies it; a change to any other key waits for a restart

    def __post_init__(self) -> None:
        if not self.dest:
            object.__setattr__(self, "dest", self.name)

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section}_{self.name}".upper()

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")


OUTPUT_MODES = ("alerts", "incidents", "events", "none")

KEYS: tuple[Key, ...] = (
    Key("probe", "max_args", Integer(), 64, "arguments captured per exec"),
    Key("probe", "arg_len", Integer(), 256, "bytes captured per argument"),
    Key("probe", "ringbuf_pages", Integer(), 1024, "BPF ring buffer size in 4 KiB pages (a power of two)"),
    Key("probe", "queue_size", Integer(), 65536, "frames buffered between the probe's threads"),
    Key("detection", "rules", TextList(path=True), (), "a rule file, in addition to the built-in rules "
        "(repeatable)", reloads=True),
    Key("detection", "egress_allow", TextList(networks=True), (), "a network connections may reach without an "
        "egress alert, as a CIDR (repeatable)", reloads=True),
    Key("detection", "incident_window", Seconds(), 1800.0, "alerts that share a scope key (a lineage, a tunnel, "
        "a session...) within this many seconds join one incident"),
    Key("output", "mode", Choice(OUTPUT_MODES), "alerts", "what to print: alerts (incidents and alerts), "
        "incidents, events (every event too) or none", dest="output"),
    Key("output", "json", Boolean(), False, "print JSON lines, one record per line"),
    Key("api", "socket", Text(optional=False, path=True, keep=("none",)), DEFAULT_SOCKET,
        "the API's UNIX socket ('none' for no socket)"),
    Key("api", "socket_group", Text(), None, "the group allowed to use the socket (mode 0660)"),
    Key("api", "listen", Text(), None, "also serve the API over TCP on HOST:PORT"),
    Key("api", "tls_cert", Text(path=True), None, "the TLS certificate (PEM) for --listen"),
    Key("api", "tls_key", Text(path=True), None, "the TLS key (PEM) for --listen"),
    Key("api", "tls_client_ca", Text(path=True), None, "require client certificates signed by this CA (PEM): "
        "mTLS"),
    Key("api", "insecure_plaintext", Boolean(), False, "allow plain-text TCP on a non-loopback address"),
    Key("api", "max_subscribers", Integer(1, 4096), 64, "API subscribers at once"),
    Key("journal", "path", Text(optional=False, path=True), DEFAULT_JOURNAL, "the alert journal", dest="journal"),
    Key("journal", "retention_days", Integer(1), 30, "keep journaled alerts this many days"),
    Key("journal", "retention_count", Integer(1), 1_000_000, "keep at most this many journaled alerts"),
    Key("agent", "user", Text(), None, "run the aggregator, the API and the live view as this user (default: "
        "gpusentry, when it exists; 'root' keeps them privileged)"),
    Key("agent", "view", Boolean(auto=True), None, "show the live view (default: when the output is a terminal "
        "and not JSON)"),
    Key("metrics", "listen", Text(), None, "serve Prometheus metrics at http://HOST:PORT/metrics (e.g. "
        "127.0.0.1:9464)", dest="metrics_listen"),
    Key("containers", "podman_socket", Text(optional=False, path=True), "/run/podman/podman.sock",
        "podman's API socket: container names and images (used when present)"),
    Key("containers", "containerd_socket", Text(optional=False, path=True), "/run/containerd/containerd.sock",
        "containerd's API socket: container names, images and pod labels, docker's too (used when present)"),
    Key("containers", "kubelet_socket", Text(optional=False, path=True),
        "/var/lib/kubelet/pod-resources/kubelet.sock",
        "the kubelet's pod-resources socket: the GPUs allocated to each pod (used when present)"),
    Key("containers", "pod_logs", Text(optional=False, path=True), "/var/log/pods",
        "the kubelet's pod log directory: pod names and namespaces by pod UID (used when present)"),
)
KEY: dict[str, Key] = {key.dotted: key for key in KEYS}
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(key.section for key in KEYS))
SINKS = "sinks"  # a section that is a list, not keys: sensor/sinks/sinkset.py reads it
FILE_SECTIONS = (*SECTIONS, SINKS)
# The commands that read the configuration, and the sections each uses (and checks together
# before it starts): the others are only checked for their types.
SECTIONS_READ: dict[str, tuple[str, ...]] = {
    "run": SECTIONS, "aggregate": ("detection", "output", "api", "journal", "metrics"),
    "analyze": ("detection", "output"),
}


# -- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str  # "default", "FILE:LINE", "env VARIABLE" or "flag --name"

    @property
    def from_file(self) -> bool:
        return self.source != DEFAULT and not self.source.startswith(("env ", "flag "))

    @property
    def from_flag(self) -> bool:
        return self.source.startswith("flag ")


@dataclass(frozen=True)
class Settings:
    """The effective value of every key, with where it came from, and how to read them again."""

    values: dict[str, Setting]
    file: Path  # the configuration file in use (the default one may be missing)
    explicit: bool  # given with -c: it must exist
    loaded: bool  # it was read
    flags: Mapping[str, Any] = field(default_factory=dict)  # by dest: the flags given on the command line
    environ: Mapping[str, str] = field(default_factory=dict)  # the GPUSENTRY_ variables
    checked: tuple[str, ...] = SECTIONS  # the sections whose values were checked together
    sinks: tuple[Any, ...] = ()  # SinkSpec, from the file's `sinks:` list (only there: no flag, no variable)

    def __getitem__(self, dotted: str) -> Any:
        return self.values[dotted].value

    def reread(self) -> Settings:
        """What a start now would get: the file read again, the same flags and environment."""
        return load(self.file if self.explicit else None, self.flags, self.environ, self.checked)


class ConfigError(UsageError):
    """The configuration is invalid: every problem, each with where the value came from."""

    def __init__(self, problems: list[str],
                 fix: str = "correct it; `gpusentry config show` (or `config check FILE`) lists every problem") -> None:
        self.problems = problems
        head = problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        super().__init__(f"invalid configuration: {head}", fix)


def load(path: Path | None = None, flags: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None, checked: Sequence[str] = SECTIONS) -> Settings:
    """The settings from the defaults, the file (`path`, else the default file when it exists),
    the environment and the flags given (by dest); ConfigError lists every problem. The values of
    the `checked` sections are also checked together as the commands that use them will."""
    flags = dict(flags or {})
    environ = {k: v for k, v in (os.environ if environ is None else environ).items() if k.startswith(ENV_PREFIX)}
    file = path if path is not None else DEFAULT_FILE
    values = {key.dotted: Setting(key.default, DEFAULT) for key in KEYS}
    problems: list[str] = []
    sinks: list[Any] = []
    loaded = _read_file(file, explicit=path is not None, values=values, problems=problems, sinks=sinks)
    _read_environ(environ, values, problems)
    for key in KEYS:
        if key.dest in flags:
            values[key.dotted] = Setting(_from_flag(key, flags[key.dest]), f"flag {key.flag}")
    settings = Settings(values, file, path is not None, loaded, flags, environ, tuple(checked), tuple(sinks))
    problems += _checked_together(settings)  # the values that are well-formed, with defaults for the others
    if problems:
        raise ConfigError(problems)
    return settings


def _from_flag(key: Key, value: Any) -> Any:
    if isinstance(key.kind, Text) and key.kind.optional and value == "":
        return None  # --listen '' unsets what the file or the environment set
    return tuple(value) if isinstance(value, list) else value


def _read_file(file: Path, explicit: bool, values: dict[str, Setting], problems: list[str],
               sinks: list[Any]) -> bool:
    try:
        text = file.read_text()
    except FileNotFoundError:
        if explicit:
            raise ConfigError([f"{file}: no such file"], "give an existing file; sensor/config.example.yaml "
                              "documents every key") from None
        return False
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read it: {exc.strerror}"]) from None
    try:
        document = source.load(text)
    except source.YamlError as exc:
        problems.append(f"{file}:{exc.line}: {exc.message}")
        return True
    if document is None:
        return True  # empty, or only comments: every default
    if not isinstance(document, source.Located):
        problems.append(f"{file}:1: a configuration file is a mapping of sections ({', '.join(FILE_SECTIONS)})")
        return True
    for section, body in document.items():
        where = f"{file}:{document.line_of(section)}"
        if section == SINKS:
            problems += _read_sinks(file, body, document.line_of(section), sinks)
        elif section not in SECTIONS:
            problems.append(f"{where}: unknown section {section!r}{_did_you_mean(section, FILE_SECTIONS)}; "
                            f"the sections are {', '.join(FILE_SECTIONS)}")
        elif body is not None and not isinstance(body, source.Located):
            problems.append(f"{where}: {section}: a section is a mapping of keys ({', '.join(_names(section))})")
        else:
            problems += _read_section(file, section, body or source.Located(), values)
    return True


def _read_sinks(file: Path, body: Any, line: int, sinks: list[Any]) -> list[str]:
    from sensor.sinks.sinkset import parse  # the sink types' own checks; imported only for a file with sinks

    specs, problems = parse(body, file.absolute(), line)
    sinks += specs
    return problems


def _read_section(file: Path, section: str, body: source.Located, values: dict[str, Setting]) -> list[str]:
    problems = []
    names = _names(section)
    for name, raw in body.items():
        where = f"{file}:{body.line_of(name)}"
        key = KEY.get(f"{section}.{name}")
        if key is None:
            problems.append(f"{where}: unknown key {section}.{name}{_did_you_mean(name, names)}; "
                            f"the {section} keys are {', '.join(names)}")
            continue
        try:
            values[key.dotted] = Setting(key.kind.from_yaml(raw, file.parent.absolute()), where)
        except Invalid as exc:
            problems.append(f"{where}: {key.dotted}: {exc}")
    return problems


def _read_environ(environ: Mapping[str, str], values: dict[str, Setting], problems: list[str]) -> None:
    by_env = {key.env: key for key in KEYS}
    for variable, text in sorted(environ.items()):
        key = by_env.get(variable)
        if key is None:
            _unknown_variable(variable, problems)
            continue
        try:
            values[key.dotted] = Setting(key.kind.from_env(text), f"env {variable}")
        except Invalid as exc:
            problems.append(f"env {variable}: {key.dotted}: {exc}")


def _unknown_variable(variable: str, problems: list[str]) -> None:
    """GPUSENTRY_<SECTION>_... with a known section and an unknown key is a mistake; other
    GPUSENTRY_ variables (GPUSENTRY_BPF_DIR) are not settings."""
    rest = variable[len(ENV_PREFIX):].lower()
    section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
    if section is not None:
        known = [key.env for key in KEYS if key.section == section]
        problems.append(f"env {variable}: unknown setting{_did_you_mean(variable, known)}; "
                        f"the {section} variables are {', '.join(known)}")


def _names(section: str) -> list[str]:
    return [key.name for key in KEYS if key.section == section]


def _did_you_mean(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- values checked together, by the code that uses them ------------------------------------


def _checked_together(settings: Settings) -> list[str]:
    """The checks the probe and the API make (ranges, power of two, TLS pairs, plain text off
    loopback), run on these values before anything starts. A problem is reported at the place
    of the first value it names that came from the file or the environment (or, naming none,
    of the first such value of its section); one that only flags cause is the command's own
    error, unchanged."""
    problems = []
    if "probe" in settings.checked:
        problems += _attributed(settings, "probe", lambda: _probe(settings).validate())
    if "api" in settings.checked:
        problems += _attributed(settings, "api", lambda: _endpoint(settings).validate())
    return problems


def _probe(settings: Settings) -> Any:
    from sensor.probe.program import ProbeConfig

    return ProbeConfig(**{key.name: settings[key.dotted] for key in KEYS if key.section == "probe"})


def _endpoint(settings: Settings) -> Any:
    from sensor.api.endpoint import Endpoint

    def path(dotted: str) -> Path | None:
        value = settings[dotted]
        return Path(value) if value else None

    socket = settings["api.socket"]
    return Endpoint(socket=None if socket == "none" else Path(socket), socket_group=settings["api.socket_group"],
                    listen=settings["api.listen"], tls_cert=path("api.tls_cert"), tls_key=path("api.tls_key"),
                    tls_client_ca=path("api.tls_client_ca"), insecure_plaintext=settings["api.insecure_plaintext"])


def _attributed(settings: Settings, section: str, check: Callable[[], None]) -> list[str]:
    """The first problem `check` finds, at its place (it stops at its first)."""
    try:
        check()
    except UsageError as exc:
        return [_placed(settings, section, exc)]
    return []


def _placed(settings: Settings, section: str, error: UsageError) -> str:
    named = [key for *_, key in sorted((error.problem.find(key.flag), key.dotted, key) for key in KEYS
                                       if _names_flag(error.problem, key.flag))]
    for key in named or [key for key in KEYS if key.section == section]:
        setting = settings.values[key.dotted]
        if setting.from_file or setting.source.startswith("env "):
            return f"{setting.source}: {key.dotted}: {error.problem}; {error.fix}"
    raise error


def _names_flag(text: str, flag: str) -> bool:
    at = text.find(flag)
    end = at + len(flag)
    return at >= 0 and (end == len(text) or not (text[end].isalnum() or text[end] == "-"))


# -- using the settings -----------------------------------------------------------------------


def apply(settings: Settings, args: Any) -> None:
    """Each key's value onto the command's namespace, for the flags the command has."""
    for key in KEYS:
        if hasattr(args, key.dest):
            value = settings[key.dotted]
            setattr(args, key.dest, list(value) if isinstance(value, tuple) else value)


def render(value: Any) -> str:
    """A value as it would be written in the file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(render(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def changed(before: Settings, after: Settings) -> list[Key]:
    """The keys whose value differs."""
    return [key for key in KEYS if before[key.dotted] != after[key.dotted]]


def with_values(settings: Settings, keys: Iterable[Key], source_settings: Settings) -> Settings:
    """`settings` with these keys' values (and sources) taken from `source_settings`."""
    values = dict(settings.values)
    for key in keys:
        values[key.dotted] = source_settings.values[key.dotted]
    return replace(settings, values=values)
