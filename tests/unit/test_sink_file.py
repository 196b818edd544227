"""The file sink: a real worker reading a real journal while alerts are appended, rotation
under load (no line lost, none twice, in order), reopening after logrotate moved the file,
write errors, and option errors with their lines."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from google.protobuf import json_format

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.journal import Journal
from sensor.outward import as_dict, record
from sensor.rules import source
from sensor.sinks import file as file_sink
from sensor.sinks.base import CursorFile, Invalid, Sink, SinkError, SinkSpec
from tests.waiting import wait_until

HOST = pb.Host(hostname="gpu-7", machine_id="0f" * 16)


def alert(n: int) -> pb.Alert:
    message = pb.Alert(id=f"alert-{n:05d}", rule_id="gpu-miner", severity=pb.SEVERITY_HIGH,
                       title=f"miner {n} – ünïcode", scope="lineage", scope_key=f"lineage:{n}")
    message.time.FromNanoseconds(time.time_ns())
    return message


def lines_of(*paths: Path) -> list[str]:
    return [line for path in paths if path.exists() for line in path.read_text().splitlines()]


def written_lines_of(*paths: Path) -> list[str]:
    """The lines written whole so far: a file read while the sink appends may end mid-line, and
    one may be renamed by a rotation between the listing and the read (the next poll sees it)."""
    lines = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            lines += path.read_text().split("\n")[:-1]
    return lines


def alert_ids(lines: list[str]) -> list[str]:
    return [json.loads(line)["alert"]["id"] for line in lines]


def rotated(path: Path) -> list[Path]:
    """PATH.N (the oldest) .. PATH.1, then PATH: the order the lines were written in."""
    numbers = sorted(int(p.name.rsplit(".", 1)[1]) for p in path.parent.glob(f"{path.name}.*"))
    return [file_sink.numbered(path, n) for n in reversed(numbers)] + [path]


class Running:
    """A file sink's real worker on a real journal, with a thread appending alerts to it."""

    def __init__(self, tmp_path: Path, options: file_sink.Options, batch: int = 7) -> None:
        self.journal = Journal(tmp_path / "journal.db")
        spec = SinkSpec(type="file", name="alerts-file", options=options, where="config.yaml:3", batch=batch)
        self.delivery = file_sink.Delivery(options, HOST)
        self.sink = Sink(spec, self.delivery, self.journal, CursorFile(tmp_path / "alerts-file.cursor"), HOST)
        self.sink.start()

    def append(self, numbers: range) -> None:
        for n in numbers:
            self.journal.append(alert(n))
            self.sink.wake()

    def stop(self) -> None:
        self.sink.stop()
        self.journal.close()


def test_rotation_under_load_loses_no_line(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    options = file_sink.Options(path=path, max_bytes=8 * 1024, keep=500)
    running = Running(tmp_path, options)
    total = 600
    writer = threading.Thread(target=running.append, args=(range(total),))
    try:
        writer.start()
        expected = [f"alert-{n:05d}" for n in range(total)]
        wait_until(lambda: alert_ids(written_lines_of(*rotated(path))) == expected, timeout=120,
                   what="every alert in the file and its rotations")
    finally:
        writer.join()
        running.stop()
    files = rotated(path)
    assert len(files) > 10, "the test must rotate many times"
    assert all(f.stat().st_size <= options.max_bytes for f in files)
    assert all(f.read_bytes().endswith(b"\n") for f in files[:-1] if f.stat().st_size)
    assert running.sink.counters.sent == total and running.sink.counters.retried == 0


def test_each_line_is_the_outward_record(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    running = Running(tmp_path, file_sink.Options(path=path))
    try:
        running.append(range(3))
        wait_until(lambda: len(lines_of(path)) == 3, what="three lines")
    finally:
        running.stop()
    reader = Journal(tmp_path / "journal.db")
    journaled = reader.read()
    reader.close()
    for line, item in zip(lines_of(path), journaled, strict=True):
        envelope = json_format.ParseDict(json.loads(line), pb.Record())
        assert envelope == record(item, HOST)
        assert line == json.dumps(as_dict(record(item, HOST)), ensure_ascii=False, separators=(",", ":"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_reopen_after_logrotate_moved_the_file(tmp_path: Path) -> None:
    path, moved = tmp_path / "alerts.jsonl", tmp_path / "alerts.jsonl-20250101"
    running = Running(tmp_path, file_sink.Options(path=path, max_bytes=0))
    ids = [f"alert-{n:05d}" for n in range(90)]
    try:
        running.append(range(30))
        wait_until(lambda: alert_ids(lines_of(path)) == ids[:30], what="the first 30 alerts")
        # logrotate's `create`: move the file, make an empty one in its place, then SIGHUP
        path.rename(moved)
        path.touch(mode=0o600)
        running.sink.reopen()
        running.append(range(30, 60))  # these may still meet the moved file, which the sink held open
        wait_until(lambda: alert_ids(lines_of(moved, path)) == ids[:60], what="alerts 30 to 59")
        running.append(range(60, 90))  # the reopen was done before any of these was read
        wait_until(lambda: alert_ids(lines_of(moved, path)) == ids, what="alerts 60 to 89")
    finally:
        running.stop()
    assert alert_ids(lines_of(moved))[:30] == ids[:30]
    assert alert_ids(lines_of(path))[-30:] == ids[60:]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the new file's mode is logrotate's


def test_reopen_writes_to_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    delivery = file_sink.Delivery(file_sink.Options(path=path), HOST)
    delivery.send([record(alert(1), HOST)])
    path.rename(tmp_path / "old")
    delivery.send([record(alert(2), HOST)])
    delivery.reopen()
    delivery.send([record(alert(3), HOST)])
    delivery.close()
    assert alert_ids(lines_of(tmp_path / "old")) == ["alert-00001", "alert-00002"]
    assert alert_ids(lines_of(path)) == ["alert-00003"]


def test_a_line_longer_than_max_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    delivery = file_sink.Delivery(file_sink.Options(path=path, max_bytes=100, keep=2), HOST)
    delivery.send([record(alert(n), HOST) for n in range(4)])
    delivery.close()
    # four one-line files: the oldest rotation (alert 0) fell off the end of keep: 2
    assert [alert_ids(lines_of(p)) for p in rotated(path)] == [["alert-00001"], ["alert-00002"], ["alert-00003"]]


def test_keep_zero_keeps_no_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    delivery = file_sink.Delivery(file_sink.Options(path=path, max_bytes=100, keep=0), HOST)
    delivery.send([record(alert(n), HOST) for n in range(3)])
    delivery.close()
    assert rotated(path) == [path]
    assert alert_ids(lines_of(path)) == ["alert-00002"]


def test_a_full_disk_is_a_sink_error_naming_the_file() -> None:
    delivery = file_sink.Delivery(file_sink.Options(path=Path("/dev/full")), HOST)
    with pytest.raises(SinkError) as failed:
        delivery.send([record(alert(1), HOST)])
    delivery.close()
    assert str(failed.value) == "cannot write /dev/full: No space left on device"
    assert not failed.value.permanent


def test_a_missing_directory_is_a_sink_error_and_the_next_send_tries_again(tmp_path: Path) -> None:
    path = tmp_path / "later" / "alerts.jsonl"
    delivery = file_sink.Delivery(file_sink.Options(path=path), HOST)
    with pytest.raises(SinkError) as failed:
        delivery.send([record(alert(1), HOST)])
    assert str(failed.value) == f"cannot write {path}: No such file or directory"
    path.parent.mkdir()
    delivery.send([record(alert(2), HOST)])
    delivery.close()
    assert alert_ids(lines_of(path)) == ["alert-00002"]


def test_the_umask_does_not_narrow_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    old = os.umask(0o077)
    try:
        delivery = file_sink.Delivery(file_sink.Options(path=path, mode=0o640), HOST)
        delivery.send([record(alert(1), HOST)])
        delivery.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# -- options ----------------------------------------------------------------------------------------


def parse(text: str, tmp_path: Path) -> file_sink.Options:
    return file_sink.options(source.load(text), tmp_path / "config.yaml")


def test_options_defaults_and_a_relative_path(tmp_path: Path) -> None:
    parsed = parse("type: file\nname: f\nkinds: [alert]\nhorizon: 1h\nqueue_size: 5\nbatch: 2\n"
                   "path: logs/alerts.jsonl\n", tmp_path)
    assert parsed == file_sink.Options(path=tmp_path / "logs/alerts.jsonl", max_bytes=100 * 1024 * 1024, keep=5,
                                       mode=0o640)


@pytest.mark.parametrize(("text", "expected"), [
    ("max_bytes: 0", {"max_bytes": 0}),
    ("max_bytes: 10M", {"max_bytes": 10 * 1024 * 1024}),
    ("max_bytes: 512KiB", {"max_bytes": 512 * 1024}),
    ("max_bytes: 4096", {"max_bytes": 4096}),
    ("keep: 0", {"keep": 0}),
    ("mode: 0600", {"mode": 0o600}),
    ("mode: '640'", {"mode": 0o640}),
    ("mode: '0o644'", {"mode": 0o644}),
    ("sync: true", {"sync": True}),
])
def test_options_values(tmp_path: Path, text: str, expected: dict[str, int | bool]) -> None:
    parsed = parse(f"type: file\npath: /var/log/a.jsonl\n{text}\n", tmp_path)
    assert {key: getattr(parsed, key) for key in expected} == expected


@pytest.mark.parametrize(("text", "line", "message"), [
    ("type: file\nname: f\npath: a\nrotate: yes\n", 4,
     "unknown key 'rotate' for a file sink; its keys are path, max_bytes, keep, mode, sync "
     "(and type, name, kinds, horizon, queue_size, batch, linger)"),
    ("type: file\nname: f\n", 1, "`path` is the file to write, e.g. /var/log/gpusentry/alerts.jsonl"),
    ("type: file\npath: a\nsync: 1\n", 3, "`sync` is true or false"),
    ("type: file\n\npath: [a]\n", 3, "`path` is the file to write, e.g. /var/log/gpusentry/alerts.jsonl"),
    ("type: file\npath: a\nmax_bytes: -1\n", 3,
     "`max_bytes` is a size in bytes, or with K, M or G (1024-based: 100M), at or above 0 (0: never rotate)"),
    ("type: file\npath: a\nmax_bytes: lots\n", 3,
     "`max_bytes` is a size in bytes, or with K, M or G (1024-based: 100M), at or above 0 (0: never rotate)"),
    ("type: file\npath: a\nkeep: 1001\n", 3, "`keep` is the number of rotated files kept: 0 to 1000"),
    ("type: file\npath: a\nmode: 640\n", 3, "`mode` is a file mode in octal with its leading 0, e.g. 0640"),
    ("type: file\npath: a\nmode: 0666\n", 3, "`mode` 0666 lets every user write the file: drop o+w"),
])
def test_option_errors_name_their_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    with pytest.raises(Invalid) as invalid:
        parse(text, tmp_path)
    assert (invalid.value.line, invalid.value.message) == (line, message)


def test_a_directory_is_not_a_path(tmp_path: Path) -> None:
    with pytest.raises(Invalid) as invalid:
        parse("type: file\npath: .\n", tmp_path)
    assert invalid.value.line == 2
    assert "is a directory" in invalid.value.message
