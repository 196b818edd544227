"""exec records from the real kernel: argv, limits, failures, identity, and non-resident argv."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

from sensor import events as ev
from tests.kernel.conftest import LiveProbe, exec_of

NOBODY = 65534


def spawn_true(args: list[bytes], **kwargs: object) -> int:
    child = subprocess.Popen([b"/bin/true", *args], **kwargs)  # type: ignore[call-overload]
    assert child.wait(timeout=10) == 0
    return int(child.pid)


def test_known_arguments_exact_with_uid_and_parent(live: LiveProbe) -> None:
    args = [b"plain", b"non-utf8 \xff\xfe\x80", b"", b"spaces and\ttabs", "ünïcode".encode()]
    pid = spawn_true(args, user=NOBODY, group=NOBODY, extra_groups=[])
    (event,) = live.wait_for(exec_of(pid), what=f"exec of pid {pid}")
    assert isinstance(event, ev.Exec)
    assert event.filename == b"/bin/true"
    assert event.argv == [b"/bin/true", *args]
    assert event.argc == len(args) + 1
    assert event.flags == ev.CGROUPS_INHERITED  # nothing cut or unread; in this process's cgroups
    assert event.result == 0
    assert event.uid == NOBODY
    assert event.gid == NOBODY
    assert event.ppid == os.getpid()
    assert event.comm == b"true"
    st = os.stat("/bin/true")
    assert (event.exe_dev, event.exe_ino) == (st.st_dev, st.st_ino)
    # audit login identity and network namespace, inherited from this process
    assert event.loginuid == int(Path("/proc/self/loginuid").read_text())
    assert event.sessionid == int(Path("/proc/self/sessionid").read_text())
    assert event.netns == os.stat("/proc/self/ns/net").st_ino
    proc = live.aggregator.table.lookup(pid, event.start_ns)
    assert proc is not None and proc.argv == event.argv and proc.execs == 1


def test_two_hundred_arguments_cut_at_the_limit_keep_the_real_count(live: LiveProbe) -> None:
    args = [f"arg-{i:03d}".encode() for i in range(200)]
    pid = spawn_true(args)
    (event,) = live.wait_for(exec_of(pid))
    assert isinstance(event, ev.Exec)
    limit = live.probe.config.max_args
    assert event.argv == [b"/bin/true", *args][:limit]
    assert event.argc == 201
    assert event.flags & ev.ARGV_TRUNCATED
    assert not event.flags & ev.ARG_CUT


def test_ten_kib_argument_cut_at_arg_len(live: LiveProbe) -> None:
    big = bytes(ord("a") + i % 26 for i in range(10 * 1024))
    pid = spawn_true([b"before", big, b"after"])
    (event,) = live.wait_for(exec_of(pid))
    assert isinstance(event, ev.Exec)
    arg_len = live.probe.config.arg_len
    assert event.argv == [b"/bin/true", b"before", big[:arg_len], b"after"]
    assert event.argc == 4
    assert event.flags & ev.ARG_CUT
    assert not event.flags & ev.ARGV_TRUNCATED


def test_argument_of_exactly_arg_len_is_not_marked_cut(live: LiveProbe) -> None:
    exact = b"x" * live.probe.config.arg_len
    pid = spawn_true([exact])
    (event,) = live.wait_for(exec_of(pid))
    assert isinstance(event, ev.Exec)
    assert event.argv == [b"/bin/true", exact]
    assert event.flags == ev.CGROUPS_INHERITED


def test_exec_of_missing_path_reports_errno(live: LiveProbe, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-binary").encode()
    helper = subprocess.run(
        ["/usr/bin/python3", "-c",
         "import os,sys\ntry: os.execv(sys.argv[1], [sys.argv[1], 'x'])\nexcept OSError as e: print(os.getpid())",
         missing], capture_output=True, check=True)
    pid = int(helper.stdout)
    (event,) = live.wait_for(lambda e: isinstance(e, ev.Exec) and e.tgid == pid and e.result != 0)
    assert isinstance(event, ev.Exec)
    assert event.result == -errno.ENOENT
    assert event.filename == missing
    # The process is still the Python helper: a failed exec changes nothing.
    proc = live.aggregator.table.by_pid(pid)
    assert proc is not None and proc.exe == b"/usr/bin/python3" and proc.execs == 1


def test_exec_of_non_executable_reports_eacces(live: LiveProbe, tmp_path: Path) -> None:
    target = tmp_path / "not-executable"
    target.write_text("#!/bin/sh\n")
    helper = subprocess.run(
        ["/usr/bin/python3", "-c",
         "import os,sys\ntry: os.execv(sys.argv[1], [sys.argv[1]])\nexcept OSError: print(os.getpid())",
         str(target)], capture_output=True, check=True)
    pid = int(helper.stdout)
    (event,) = live.wait_for(lambda e: isinstance(e, ev.Exec) and e.tgid == pid and e.result != 0)
    assert isinstance(event, ev.Exec)
    assert event.result == -errno.EACCES
    assert event.filename == str(target).encode()
    assert event.argv == [str(target).encode()]


LITERALS_C = r"""
#include <stdio.h>
#include <unistd.h>
#include <sys/wait.h>
/* Each child execs with string literals nobody touched before: the parent only reads the
 * pointer table, never the strings, so their pages are not resident in the child at
 * execve entry. */
static const char *const table[][2] = {
%(rows)s
};
int main(void)
{
	for (unsigned i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
		pid_t pid = fork();
		if (pid == 0) {
			execl("/bin/true", "true", table[i][0], table[i][1], (char *)0);
			_exit(127);
		}
		int status;
		waitpid(pid, &status, 0);
		if (status != 0)
			return 1;
	}
	return 0;
}
"""


def literal(i: int, part: int) -> str:
    return f"gpusentry-literal-{i:04d}-{part}-" + "q" * (i % 37)


def test_a_thousand_execs_with_untouched_literals_all_exact(live: LiveProbe, tmp_path: Path) -> None:
    count = 1000
    rows = ",\n".join(f'{{"{literal(i, 0)}", "{literal(i, 1)}"}}' for i in range(count))
    source = tmp_path / "literals.c"
    source.write_text(LITERALS_C % {"rows": rows})
    binary = tmp_path / "literals"
    subprocess.run(["gcc", "-O1", "-o", str(binary), str(source)], check=True)
    helper = subprocess.Popen([str(binary)])
    assert helper.wait(timeout=120) == 0

    def from_helper(e: ev.Event) -> bool:
        return isinstance(e, ev.Exec) and e.ppid == helper.pid and e.filename == b"/bin/true"

    events = live.wait_for(from_helper, count=count, timeout=60, what="1000 execs")
    assert len(events) == count
    got = sorted((e.argv, e.flags) for e in events if isinstance(e, ev.Exec))
    want = sorted(([b"true", literal(i, 0).encode(), literal(i, 1).encode()], ev.CGROUPS_INHERITED)
                  for i in range(count))
    assert got == want
