"""Least privilege for the agent's processes (THREAT-MODEL.md: only the probe is privileged).

Two moves, both checked against /proc/self/status afterwards:
- `drop_to_user`: the aggregator and the live view become an unprivileged user with no
  supplementary groups (or only the API socket's group), no capabilities in any set (the
  bounding set included) and no_new_privs, so nothing they exec can regain privileges.
- `keep_only`: the probe stays uid 0 (it holds the BPF programs) but keeps only the
  capabilities its work after attaching needs (PROBE_CAPS, with why), no supplementary
  groups, and no_new_privs.

Run as `python -m sensor.privileges --user NAME [--group GROUP] [--parent-death] -- CMD...`,
it drops and then execs CMD: the agent starts its unprivileged processes through it.
"""

from __future__ import annotations

import argparse
import ctypes
import grp
import os
import pwd
import signal
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sensor.errors import GpusentryError

# linux/capability.h
CAP_KILL = 5
CAP_SETGID = 6
CAP_SETPCAP = 8
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_DAC_READ_SEARCH = 2
CAP_NAMES = {CAP_DAC_READ_SEARCH: "cap_dac_read_search", CAP_KILL: "cap_kill", CAP_SYS_PTRACE: "cap_sys_ptrace",
             CAP_SYS_ADMIN: "cap_sys_admin"}

# What the probe needs once its programs are attached, measured on this kernel
# (tests/kernel/test_privileges.py shows each one is needed and that nothing else is):
# BPF map reads, updates and deletes and ring-buffer polling on fds it already holds need
# no capability at all; CAP_BPF, CAP_PERFMON and the rest go.
PROBE_CAPS: dict[int, str] = {
    CAP_SYS_PTRACE: "open /proc/PID/exe and /proc/PID/ns/net of processes of other users (or with more "
                    "capabilities): binary identity and the routing table of a process's network namespace",
    CAP_DAC_READ_SEARCH: "read an executable the file mode hides (an execute-only copy of ssh) to identify it "
                         "by content",
    CAP_SYS_ADMIN: "setns into a process's network namespace to ask its routing table where a connection goes; "
                   "open a watched process's libcuda through /proc/PID/map_files and attach its launch uprobes "
                   "(perf_event_open of the uprobe PMU)",
}
# The agent's probe also signals its unprivileged processes: SIGHUP (reload) to the
# aggregator, SIGTERM to the live view. `record` has no such processes.
AGENT_PROBE_CAPS: dict[int, str] = {
    **PROBE_CAPS,
    CAP_KILL: "signal the aggregator (SIGHUP: reload the rules) and the live view (stop), which run as "
              "another user",
}

_PR_SET_PDEATHSIG = 1
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_VERSION_3 = 0x20080522


class PrivilegeError(GpusentryError):
    """Privileges could not be dropped as asked: the process must not go on."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"cannot drop privileges: {what} failed: {os.strerror(err)}",
                             "run the agent as root (it starts its processes and drops their privileges)")


def _prctl(option: int, arg: int, what: str) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), what)


def last_cap() -> int:
    return int(Path("/proc/sys/kernel/cap_last_cap").read_text())


def _drop_bounding_set(keep: Iterable[int] = ()) -> None:
    """Needs CAP_SETPCAP: so before setuid, which clears the effective set."""
    kept = set(keep)
    for cap in range(last_cap() + 1):
        if cap not in kept:
            _prctl(_PR_CAPBSET_DROP, cap, f"dropping capability {cap} from the bounding set")


def _set_caps(caps: Iterable[int]) -> None:
    """Effective and permitted become exactly `caps`; inheritable becomes empty."""
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = mask & 0xFFFFFFFF
    data[1].effective = data[1].permitted = mask >> 32
    header = _CapHeader(_CAP_VERSION_3, 0)
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def _seal() -> None:
    """No ambient capabilities, and nothing exec'd later gains any (setuid files, file caps)."""
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "clearing the ambient capabilities")
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, "setting no_new_privs")


@dataclass(frozen=True)
class Account:
    uid: int
    gid: int
    groups: tuple[int, ...]


def account(user: str, group: str | None = None) -> Account:
    """The user to run as, and the one extra group it may keep (the API socket's)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise PrivilegeError(f"no user {user!r}", "give an existing unprivileged user (scripts/install "
                             "creates gpusentry)") from exc
    extra: tuple[int, ...] = ()
    if group is not None:
        try:
            extra = (grp.getgrnam(group).gr_gid,)
        except KeyError as exc:
            raise PrivilegeError(f"no group {group!r}", "give an existing group") from exc
    return Account(entry.pw_uid, entry.pw_gid, tuple(g for g in extra if g != entry.pw_gid))


def drop_to_user(who: Account) -> None:
    """Become `who`, with no capabilities in any set and no_new_privs; verified afterwards."""
    _drop_bounding_set()
    os.setgroups(list(who.groups))
    os.setresgid(who.gid, who.gid, who.gid)
    os.setresuid(who.uid, who.uid, who.uid)  # clears the effective and permitted sets
    _set_caps(())  # and the inheritable set, which setuid keeps
    _seal()
    _verify(ProcStatus.read("self"), who, ())


def keep_only(caps: Iterable[int]) -> None:
    """Stay who we are, with exactly these capabilities (bounding set included); verified.
    Without CAP_SETPCAP (a probe given only CAP_BPF and CAP_PERFMON) the bounding set stays."""
    kept = tuple(sorted(set(caps)))
    effective = ProcStatus.read("self").cap_eff
    bounded = bool(effective >> CAP_SETPCAP & 1)
    if bounded:
        _drop_bounding_set(kept)
    if effective >> CAP_SETGID & 1:
        os.setgroups([])  # root's groups would grant file access of their own
    _set_caps(kept)
    _seal()
    status = ProcStatus.read("self")
    if status.cap_eff != _mask(kept) or status.cap_prm != _mask(kept) or \
            (bounded and status.cap_bnd != _mask(kept)):
        raise PrivilegeError(f"capabilities not as asked: {status}", "report it: this kernel refused a drop")


def _mask(caps: Iterable[int]) -> int:
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    return mask


def _verify(status: ProcStatus, who: Account, caps: tuple[int, ...]) -> None:
    ok = (status.uids == (who.uid,) * 4 and status.gids == (who.gid,) * 4 and set(status.groups) == set(who.groups)
          and status.cap_eff == status.cap_prm == status.cap_inh == status.cap_amb == _mask(caps)
          and status.cap_bnd == _mask(caps) and status.no_new_privs)
    if not ok:
        raise PrivilegeError(f"privileges not dropped as asked: {status}", "report it: this kernel refused a drop")


@dataclass(frozen=True)
class ProcStatus:
    """The privilege lines of /proc/PID/status."""

    uids: tuple[int, ...]
    gids: tuple[int, ...]
    groups: tuple[int, ...]
    cap_inh: int
    cap_prm: int
    cap_eff: int
    cap_bnd: int
    cap_amb: int
    no_new_privs: bool

    @classmethod
    def read(cls, pid: int | str) -> ProcStatus:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)

        def ints(name: str) -> tuple[int, ...]:
            return tuple(int(x) for x in fields[name].split())

        def caps(name: str) -> int:
            return int(fields[name].strip(), 16)

        return cls(ints("Uid"), ints("Gid"), ints("Groups"), caps("CapInh"), caps("CapPrm"), caps("CapEff"),
                   caps("CapBnd"), caps("CapAmb"), fields["NoNewPrivs"].strip() == "1")


def cap_names(mask: int) -> list[str]:
    return [CAP_NAMES.get(cap, f"cap_{cap}") for cap in range(64) if mask >> cap & 1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sensor.privileges",
                                     description="drop to a user, then exec a command")
    parser.add_argument("--user", required=True)
    parser.add_argument("--group", help="the one supplementary group to keep")
    parser.add_argument("--parent-death", action="store_true", help="get SIGTERM when the parent dies")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    try:
        drop_to_user(account(args.user, args.group))
        if args.parent_death:  # after setuid, which clears it; exec keeps it
            _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, "asking for the parent's death signal")
            if os.getppid() == 1:
                return 1  # the parent is already gone
    except (PrivilegeError, OSError) as exc:
        print(f"gpusentry: error: {exc}", file=sys.stderr)
        return 2
    os.execv(command[0], command)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
