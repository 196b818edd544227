"""Replay fixtures: ioctl sequences as data, checked before anything runs.

A fixture is YAML: metadata (name, the driver release it models, the GPU architecture, where
its sequence comes from, what a replay must produce) and `steps`, each a one-key mapping
from an operation to its arguments. Nothing in a fixture is executed as code; every mistake
is reported with the file, the step and what is wrong.

    format: 1
    name: hopper-bringup
    driver: "595.45.04"
    arch: hopper
    source: NVIDIA-ABI.md, "What a CUDA process does, in order"
    expect: {compute: [{class: 0xCBC0, architecture: Hopper, device_id: 0}]}
    steps:
      - open: {dev: nvidiactl, as: ctl}
      - alloc: {fd: ctl, class: 0x41, as: client}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sensor.errors import GpusentryError
from sensor.fakegpu import abi

FORMAT = 1
DEVICES = ("nvidiactl", "nvidia0", "nvidia-uvm")

# operation -> (required arguments, optional arguments)
OPERATIONS: dict[str, tuple[set[str], set[str]]] = {
    "open": ({"dev", "as"}, set()),
    "dup": ({"fd", "as"}, set()),
    "close": ({"fd"}, set()),
    "frontend": ({"fd", "esc"}, {"size"}),
    "alloc": ({"fd", "class"}, {"parent", "as", "handle", "size", "device_id", "event_class", "bytes", "virtual"}),
    "alloc_memory": ({"fd", "class", "bytes"}, {"parent", "as"}),
    "free": ({"fd", "object"}, {"parent"}),
    "control": ({"fd", "object", "cmd"}, {"boost"}),
    "uvm": ({"fd", "cmd"}, {"channel", "bytes"}),
    "xfer": ({"fd", "step"}, set()),
    "repeat": ({"times", "steps"}, set()),
    "fork": ({"steps"}, set()),
    "hold": ({"seconds"}, set()),
}
MAX_HOLD_S = 30


class FixtureError(GpusentryError):
    """A fixture file that cannot be replayed."""


@dataclass
class Fixture:
    path: Path
    name: str
    driver: str
    arch: str
    source: str
    steps: list[dict[str, Any]]
    expect: dict[str, Any] = field(default_factory=dict)
    models: str = ""


def load(path: Path) -> Fixture:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise FixtureError(f"cannot read fixture {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise FixtureError(f"{path}: not valid YAML ({exc})", "fix the YAML syntax") from exc
    if not isinstance(raw, dict):
        raise FixtureError(f"{path}: a fixture is a mapping with `steps`", "see sensor/fakegpu/fixtures.py")
    if raw.get("format") != FORMAT:
        raise FixtureError(f"{path}: format {raw.get('format')!r} is not {FORMAT}", f"set `format: {FORMAT}`")
    for key in ("name", "driver", "arch", "source", "steps"):
        if key not in raw:
            raise FixtureError(f"{path}: missing `{key}`", f"add `{key}:`")
    steps = list(_included(path, raw.get("include", []))) + raw["steps"]
    _check_steps(path, steps, "steps")
    return Fixture(path=path, name=str(raw["name"]), driver=str(raw["driver"]), arch=str(raw["arch"]),
                   source=str(raw["source"]), steps=steps, expect=raw.get("expect") or {},
                   models=str(raw.get("models", "")))


def _included(path: Path, includes: list[str]) -> list[dict[str, Any]]:
    """Steps of other fixtures (relative paths), run first: a long job starts with a bring-up."""
    steps: list[dict[str, Any]] = []
    for name in includes:
        steps += load(path.parent / name).steps
    return steps


def _check_steps(path: Path, steps: Any, where: str) -> None:
    if not isinstance(steps, list) or not steps:
        raise FixtureError(f"{path}: {where} must be a non-empty list of steps")
    for index, step in enumerate(steps):
        _check_step(path, step, f"{where}[{index}]")


def _check_step(path: Path, step: Any, where: str) -> None:
    if not isinstance(step, dict) or len(step) != 1:
        raise FixtureError(f"{path}: {where} must be a mapping with one operation", f"one of {sorted(OPERATIONS)}")
    op, args = next(iter(step.items()))
    if op not in OPERATIONS:
        raise FixtureError(f"{path}: {where}: unknown operation {op!r}", f"use one of {sorted(OPERATIONS)}")
    if not isinstance(args, dict):
        raise FixtureError(f"{path}: {where}: `{op}` takes a mapping of arguments")
    required, optional = OPERATIONS[op]
    missing = required - args.keys()
    unknown = args.keys() - required - optional
    if missing:
        raise FixtureError(f"{path}: {where}: `{op}` needs {', '.join(sorted(missing))}")
    if unknown:
        raise FixtureError(f"{path}: {where}: `{op}` has no argument {', '.join(sorted(unknown))}",
                           f"allowed: {', '.join(sorted(required | optional))}")
    _check_values(path, op, args, where)


def _check_values(path: Path, op: str, args: dict[str, Any], where: str) -> None:
    def fail(what: str) -> FixtureError:
        return FixtureError(f"{path}: {where}: {what}")

    if op == "open" and args["dev"] not in DEVICES:
        raise fail(f"unknown device {args['dev']!r} (the fake serves {', '.join(DEVICES)})")
    if op == "frontend" and args["esc"] not in abi.ESCAPES:
        raise fail(f"unknown escape {args['esc']!r}")
    if op == "uvm" and args["cmd"] not in abi.UVM_COMMANDS:
        raise fail(f"unknown UVM command {args['cmd']!r}")
    integers = {"class", "handle", "device_id", "event_class", "times", "size"}
    if op == "control":
        integers.add("cmd")
    for key in sorted(integers & args.keys()):
        value = args[key]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFFFFFF:
            raise fail(f"`{key}` must be an integer from 0 to 0xFFFFFFFF, not {value!r}")
    if op == "uvm" and "bytes" in args and args["cmd"] != "MAP_EXTERNAL_ALLOCATION":
        raise fail("`bytes` of a UVM command is for MAP_EXTERNAL_ALLOCATION")
    if op == "alloc_memory" and (args["class"] not in (0x3E, 0x71) or not isinstance(args["bytes"], int)
                                 or isinstance(args["bytes"], bool) or not 1 <= args["bytes"] < 1 << 64):
        raise fail("`alloc_memory` takes class 0x3E or 0x71 and `bytes` from 1 to 2**64 - 1")
    if op == "alloc" and "bytes" in args:
        size = args["bytes"]
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size < 1 << 64:
            raise fail(f"`bytes` must be an integer from 1 to 2**64 - 1, not {size!r}")
        if abi.memory_params(args["class"], size) is None:
            raise fail(f"`bytes` is for memory classes (0x3E, 0x3F, 0x40, 0x70, 0x71, 0xC2, 0xF8, 0x50A0), "
                       f"not {args['class']:#x}")
    if "virtual" in args and not isinstance(args["virtual"], bool):
        raise fail("`virtual` is true or false")
    for key in sorted({"fd", "parent", "object", "as", "channel"} & args.keys()):
        if not isinstance(args[key], str | int) or isinstance(args[key], bool):
            raise fail(f"`{key}` must be a name or a handle, not {args[key]!r}")
    if op == "hold" and (not isinstance(args["seconds"], int | float) or isinstance(args["seconds"], bool)
                         or not 0 < args["seconds"] <= MAX_HOLD_S):
        raise fail(f"`hold` takes `seconds` from 0 to {MAX_HOLD_S}")
    if op == "repeat":
        if args["times"] > 100_000:
            raise fail("`times` is at most 100000")
        _check_steps(path, args["steps"], f"{where}.steps")
    if op == "fork":
        _check_steps(path, args["steps"], f"{where}.steps")
    if op == "xfer":
        step = args["step"]
        if not isinstance(step, dict) or len(step) != 1:
            raise fail("`xfer` wraps one step")
        inner, inner_args = next(iter(step.items()))
        if inner not in ("alloc", "free", "control") or not isinstance(inner_args, dict):
            raise fail("`xfer` wraps an alloc, free or control")
        # the wrapped call goes to the xfer's fd
        _check_step(path, {inner: {**inner_args, "fd": args["fd"]}}, f"{where}.step")
