"""The live view's screen, rendered from a constructed snapshot on a recording console."""

from __future__ import annotations

from datetime import datetime

from rich.console import Console

from sensor.api.v1 import gpusentry_pb2 as pb
from sensor.view import Snapshot, apply, render

SEC = 1_000_000_000


def stamp(seconds: int) -> object:
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.FromNanoseconds(seconds * SEC)
    return t


def screen(snapshot: Snapshot) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(render(snapshot))
    return console.export_text()


def test_waiting_for_the_agent() -> None:
    text = screen(Snapshot("unix:/run/gpusentry/sensor.sock"))
    assert "gpusentry on unix:/run/gpusentry/sensor.sock  connecting…" in text
    assert "no incidents" in text and "no alerts" in text and "no GPU activity" in text


def test_alerts_gpu_events_and_drops_are_shown() -> None:
    snapshot = Snapshot("unix:/tmp/s.sock")
    snapshot.status = pb.Status(kernel="6.18", uptime_s=61, events_by_kind={"exec": 10, "connect": 5},
                                subscribers=2, last_cursor=5, journal_alerts=3, sensor_gaps=2,
                                drops=[pb.DropCounter(hop="kernel", what="ring buffer: exec", count=7),
                                       pb.DropCounter(hop="probe", what="queue full: exec", count=0)])
    proc = pb.ProcessRef(exec_id="42:1:1", pid=42, exe="/usr/bin/python3")
    alert = pb.Alert(cursor=3, rule_id="reverse-tunnel-then-gpu-compute", severity=pb.SEVERITY_CRITICAL,
                     time=stamp(100),
                     steps=[pb.AlertStep(fact="tunnel", summary="ssh tunnel (reverse) to 198.51.100.1"),
                            pb.AlertStep(fact="gpu_compute", summary="GPU compute class 0xcbc0")])
    apply(snapshot, pb.SubscribeResponse(alert=alert), now=1)
    apply(snapshot, pb.SubscribeResponse(events=pb.Events(events=[pb.Event(
        time=stamp(101), kind=pb.EVENT_KIND_GPU_OBJECT, process=proc,
        gpu_object=pb.GpuObject(command="RM_ALLOC", reason="alloc", role="compute", class_id=0xCBC0,
                                architecture="Hopper"))])), now=2)
    # GPU compute is what the aggregator's fact says, not re-derived from the raw allocation
    assert snapshot.gpu == {}
    apply(snapshot, pb.SubscribeResponse(facts=pb.Facts(facts=[pb.Fact(
        time=stamp(101), kind=pb.FACT_KIND_GPU_COMPUTE, process=proc,
        gpu_compute=pb.GpuComputeFact(class_id=0xCBC0, architecture="Hopper", device_id=0))])), now=2)
    apply(snapshot, pb.SubscribeResponse(events=pb.Events(events=[pb.Event(
        time=stamp(102), kind=pb.EVENT_KIND_GPU_ACTIVITY, process=proc,
        gpu_activity=pb.GpuActivity(calls_by_command={"RM_CONTROL": 5000}, rate_by_device={"ctl": 1234.0}))])),
          now=3)
    apply(snapshot, pb.SubscribeResponse(events=pb.Events(events=[pb.Event(
        time=stamp(103), kind=pb.EVENT_KIND_CONNECT, process=proc,
        connect=pb.Connect(family="inet", address="203.0.113.9", port=3333, destination="egress"))])), now=4)
    apply(snapshot, pb.SubscribeResponse(events=pb.Events(events=[
        pb.Event(time=stamp(104), kind=pb.EVENT_KIND_EXEC, process=proc,
                 exec=pb.Exec(argv=["tmux", "ls"], result=-2)),  # a PATH search's miss
        pb.Event(time=stamp(105), kind=pb.EVENT_KIND_ACCEPT, process=proc, accept=pb.Accept(fd=5, family="unix"))])),
          now=5)
    apply(snapshot, pb.SubscribeResponse(gap=pb.Gap(missed_events=40, missed_alerts=1)), now=5)
    text = screen(snapshot)
    assert "kernel 6.18  up 61s  events 15  incidents 0  alerts 3  blind windows 2  subscribers 2" in text
    assert "drops: kernel ring buffer: exec 7" in text and "this view missed 41 in 1 gap(s)" in text
    assert "CRITICAL  reverse-tunnel-then-gpu-compute" in text
    assert "tunnel: ssh tunnel (reverse) to 198.51.100.1 → gpu_compute: GPU compute class 0xcbc0" in text
    gpu_row = next(line for line in text.splitlines() if "/usr/bin/python3" in line and "yes" in line)
    assert "1,234" in gpu_row and "5,000" in gpu_row
    assert "connect" in text and "203.0.113.9:3333 egress" in text
    assert "tmux ls (ENOENT)" in text and "unix peer" in text
    assert "RM_ALLOC compute 0xcbc0 Hopper" in text
    assert snapshot.received == 7 and snapshot.gaps == 1


def test_incidents_come_first_latest_update_on_top() -> None:
    snapshot = Snapshot("unix:/tmp/s.sock")
    snapshot.status = pb.Status(kernel="6.18", incidents=2, host=pb.Host(hostname="gpu-node-7"))
    older = pb.Incident(id="0b1c2d3e-aaaa-4bbb-8ccc-000000000001", cursor=4, severity=pb.SEVERITY_MEDIUM,
                        last_seen=stamp(50), alerts_total=1, rule_ids=["internal-scan"],
                        summary="an internal scan from pid 77")
    rome = pb.Incident(id="9f8e7d6c-aaaa-4bbb-8ccc-000000000002", cursor=9, severity=pb.SEVERITY_CRITICAL,
                       last_seen=stamp(60), alerts_total=5,
                       rule_ids=["reverse-tunnel-opened", "reverse-tunnel-then-gpu-compute"],
                       summary="ssh -R 9000 from pid 4242 followed by GPU compute on GPU 0 (Hopper)")
    apply(snapshot, pb.SubscribeResponse(incident=rome), now=1)
    apply(snapshot, pb.SubscribeResponse(incident=older), now=2)
    older.cursor, older.alerts_total = 12, 2
    apply(snapshot, pb.SubscribeResponse(incident=older), now=3)  # a new version replaces the old one
    lines = screen(snapshot).splitlines()
    assert "host gpu-node-7  events 0  incidents 2  alerts 0" in lines[0]
    rows = [n for n, line in enumerate(lines) if "0b1c2d3e" in line or "9f8e7d6c" in line]
    assert len(rows) == 2
    assert "MEDIUM  0b1c2d3e  2 alerts: internal-scan" in lines[rows[0]]
    assert "an internal scan from pid 77" in lines[rows[0] + 1]
    assert "CRITICAL  9f8e7d6c  5 alerts: reverse-tunnel-opened, reverse-tunnel-then-gpu-compute" in lines[rows[1]]
    assert "ssh -R 9000 from pid 4242 followed by GPU compute on GPU 0 (Hopper)" in lines[rows[1] + 1]
    incidents_at = next(n for n, line in enumerate(lines) if "incidents" in line and "─" in line)
    alerts_at = next(n for n, line in enumerate(lines) if "alerts" in line and "─" in line)
    assert incidents_at < alerts_at
    assert snapshot.last_cursor == 12


def test_sensor_gaps_are_shown_above_the_alerts_and_subscribed_is_ignored() -> None:
    snapshot = Snapshot("unix:/tmp/s.sock")
    apply(snapshot, pb.SubscribeResponse(subscribed=pb.Subscribed(journal_last_cursor=9, note="a note")), now=1)
    assert snapshot.received == 0 and "a note" not in screen(snapshot)
    gap = pb.SensorGap(cursor=10, start=stamp(1_700_000_001), end=stamp(1_700_000_005),
                       cause="the probe (pid 4242) died: its frame stream ended without the probe's final frame")
    apply(snapshot, pb.SubscribeResponse(sensor_gap=gap), now=2)
    apply(snapshot, pb.SubscribeResponse(alert=pb.Alert(cursor=11, rule_id="marker", severity=pb.SEVERITY_LOW,
                                                        time=stamp(1_700_000_006))), now=3)
    lines = screen(snapshot).splitlines()
    start, end = (datetime.fromtimestamp(t).strftime("%H:%M:%S") for t in (1_700_000_001, 1_700_000_005))
    blind = next(n for n, line in enumerate(lines) if "SENSOR BLIND" in line)
    assert f"SENSOR BLIND {start}–{end}: the probe (pid 4242) died: its frame stream ended without the " \
           "probe's final frame" in lines[blind]
    assert blind < next(n for n, line in enumerate(lines) if "marker" in line)
    assert (snapshot.received, snapshot.last_cursor) == (2, 11)  # a new subscription resumes after both


def test_a_sensor_gap_shows_even_when_there_is_no_alert() -> None:
    snapshot = Snapshot("unix:/tmp/s.sock")
    apply(snapshot, pb.SubscribeResponse(sensor_gap=pb.SensorGap(cursor=1, start=stamp(0), end=stamp(60),
                                                                 cause="the agent was not running")), now=1)
    text = screen(snapshot)
    assert "SENSOR BLIND" in text and ": the agent was not running" in text and "no alerts" in text
    assert snapshot.last_cursor == 1


def test_sinks_show_in_the_header_a_failing_one_in_words() -> None:
    snapshot = Snapshot("unix:/tmp/s.sock")
    snapshot.status = pb.Status(kernel="6.18", sinks=[
        pb.SinkStatus(name="alerts-file", type="file", sent=12, up=True),
        pb.SinkStatus(name="siem", type="webhook", sent=3, retried=7, dropped=2, up=False, last_error="HTTP 503")])
    text = screen(snapshot)
    assert "file alerts-file: ok (sent 12)" in text
    assert "webhook siem: DOWN (sent 3 retried 7 dropped 2)" in text


def test_an_alert_says_where_its_processes_run() -> None:
    snapshot = Snapshot("unix:/tmp/s.sock")
    in_pod = pb.Process(pid=7, container=pb.Container(runtime="containerd", id="ab" * 32, name="",
                                                      image="registry.example/train:3"),
                        pod=pb.Pod(uid="u-1", name="trainer-0", namespace="ml", container="trainer", gpus=["GPU-1"]))
    on_host = pb.Process(pid=8)
    for cursor, processes in ((1, [pb.AlertProcess(process=in_pod)]), (2, [pb.AlertProcess(process=on_host)])):
        apply(snapshot, pb.SubscribeResponse(alert=pb.Alert(
            cursor=cursor, rule_id=f"rule-{cursor}", severity=pb.SEVERITY_HIGH, time=stamp(100 + cursor),
            steps=[pb.AlertStep(fact="exec", summary="x")], processes=processes)), now=cursor)
    text = screen(snapshot)
    rows = {line.split()[3]: line for line in text.splitlines() if "rule-" in line}
    assert rows["rule-1"].rstrip(" │").endswith("pod ml/trainer-0 container trainer, GPUs GPU-1;")
    assert "containerd container abababababab" in text and "(registry.example/train:3)" in text  # wrapped beneath
    assert rows["rule-2"].rstrip(" │").endswith("host")
