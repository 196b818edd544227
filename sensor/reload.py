"""SIGHUP: read the configuration file and the rule files again, and apply what can change
while the agent runs: the rules and the egress allowlist; and reopen the sinks' files. Any
other key that changed is named as waiting for a restart (the probe's limits, where the API
listens, the sinks...). Whatever is invalid changes nothing: the current settings and rules
stay, and the line says why.

The signal handler only sets a flag: the aggregator's loop reloads between two events, so
that no event meets half of the old rules and half of the new.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path

from sensor import config
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.detector import Detector
from sensor.api.state import ApiState
from sensor.rules.loader import RuleError, load_rules
from sensor.rules.model import RuleSet


class Reloader:
    """Reloads on request; `args.settings` (sensor/config.py) says which file to read again,
    without it only the rule files of `args.rules` are."""

    def __init__(self, args: argparse.Namespace, aggregator: Aggregator, state: ApiState | None = None) -> None:
        self.settings: config.Settings | None = getattr(args, "settings", None)  # those in effect
        self.rule_paths: list[str] = list(args.rules)
        self.egress_allow: list[str] = list(args.egress_allow)
        self.aggregator = aggregator
        self.state = state
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGHUP, self._request)

    def _request(self, *_: object) -> None:
        self.requested = True

    def reload_if_requested(self) -> None:
        if self.requested:
            self.requested = False
            print(self.reload(), file=sys.stderr, flush=True)
            if self.state is not None and self.state.sinks is not None:
                self.state.sinks.reopen()  # files reopen: logrotate moved them and sent SIGHUP

    def reload(self) -> str:
        """Reload now; the one line that says what happened."""
        detector = self.aggregator.detector
        current = len(detector.engine.ruleset.rules) if detector is not None else 0
        try:
            settings = self.settings.reread() if self.settings is not None else None
        except config.ConfigError as exc:
            self._failed(exc.problems)
            return (f"gpusentry: configuration not reloaded, keeping the current configuration and {current} rules: "
                    f"{exc}")
        if settings is not None:
            self.rule_paths = list(settings["detection.rules"])
            self.egress_allow = list(settings["detection.egress_allow"])
        try:
            ruleset = load_rules(Path(p) for p in self.rule_paths)
        except RuleError as exc:
            self._failed([str(p) for p in exc.problems])
            return f"gpusentry: rules not reloaded, keeping the current {current} rules: {exc}"
        if detector is not None:
            self._apply(detector, ruleset)
        return self._done(ruleset, settings, self._waiting(settings))

    def _apply(self, detector: Detector, ruleset: RuleSet) -> None:
        lock = self.state.lock if self.state is not None else contextlib.nullcontext()
        with lock:
            detector.egress_flags = tuple(self.egress_allow)  # joined with the rules' allowed_egress list
            detector.reload(ruleset)
        if self.state is not None:
            self.state.load_errors = []
            self.state.rule_files = ruleset.files

    def _failed(self, problems: list[str]) -> None:
        if self.state is not None:
            self.state.load_errors = problems

    def _waiting(self, settings: config.Settings | None) -> list[str]:
        """The changed keys that only a restart applies; the others are in effect from now on."""
        if self.settings is None or settings is None:
            return []
        waiting = [key.dotted for key in config.changed(self.settings, settings) if not key.reloads]
        if settings.sinks != self.settings.sinks:
            waiting.append(config.SINKS)
        self.settings = config.with_values(self.settings, (key for key in config.KEYS if key.reloads), settings)
        return waiting

    def _done(self, ruleset: RuleSet, settings: config.Settings | None, waiting: list[str]) -> str:
        detector = self.aggregator.detector
        allowed = len(detector.egress.allowlist) if detector is not None else len(self.egress_allow)
        line = (f"gpusentry: rules reloaded: {len(ruleset.rules)} rules from {len(ruleset.files)} file(s); "
                f"egress allowlist: {allowed} network{'' if allowed == 1 else 's'}")
        if settings is not None and settings.loaded:
            line += f"; configuration: {settings.file}"
        if waiting:
            line += f"; changed, waiting for a restart: {', '.join(waiting)}"
        return line
