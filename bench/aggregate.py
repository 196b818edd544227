"""The aggregator's CPU per record on a recorded steady mix, against reading the same frames.

A C helper (bench/helpers/steady_mix.c) makes a paced mix, fork+exec+exit of /bin/true and
UDP connects (1,000 records a second by default), while the real `gpusentry record` captures
it; the capture keeps the helper's own records and the probe's (the snapshot, Stats, End), so
that other activity on the machine does not change what is measured. Then, in each of
--rounds interleaved rounds, a fresh process replays the capture --passes times (from memory,
the file read first, a fresh aggregator each time) and reports the least CPU time (user +
system) of its loop alone, per record, for:
- the floor: frames read and decoded into events, nothing else (what any consumer pays);
- analyze: the aggregator with the built-in rules, incidents grouped (`gpusentry analyze`);
- live: the aggregator's live path (`gpusentry aggregate`): the run log, with a journal, and
  the API's publisher with nobody subscribed.
It prints each figure in microseconds per record, and the aggregator's cost above the floor.

    .venv/bin/python -m bench.aggregate [--rounds 5] [--seconds 10] [--spawns 200] [--connects 400]
    .venv/bin/python -m bench.aggregate --capture FILE   # an existing capture, replayed as it is
    .venv/bin/python -m bench.aggregate --keep FILE      # record, keep the capture, and replay it

Recording needs root; replaying an existing capture does not. CPU time depends less than wall
time on the machine being quiet (and the least of a few passes, less again), but it does: compare
figures within one run. To compare two versions of the aggregator, --keep the capture, then
replay it with each (`--capture`), in turns.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.cost import build_mix, run_mix
from bench.figures import spread
from bench.pipeline import closed_port
from sensor import events as ev
from sensor.aggregator.aggregator import Aggregator
from sensor.aggregator.detector import DetectorConfig
from sensor.api.handover import Handover
from sensor.api.publish import Publisher
from sensor.api.state import ApiState
from sensor.capture import FrameReader, FrameWriter, open_capture
from sensor.consume import RunLog, consume
from sensor.incidents import IncidentBook
from sensor.journal import Journal, Retention
from sensor.rules.loader import load_rules

ROOT = Path(__file__).resolve().parents[1]
MODES = ("floor", "analyze", "live")


def record_mix(out: Path, seconds: float, spawns: int, connects: int) -> Path:
    """A capture of the mix alone: its records and the probe's own."""
    raw = out / "raw.cap"
    recorder = subprocess.Popen([sys.executable, "-m", "sensor", "record", "-w", str(raw)], cwd=ROOT,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert recorder.stderr is not None
    for line in recorder.stderr:
        if "recording to" in line:
            break
    else:
        raise SystemExit(f"the recorder did not start (exit {recorder.wait()})")
    mix = build_mix(out)
    marker = f"gs-aggregate-{time.monotonic_ns()}"
    run_mix(mix, seconds, spawns, connects, closed_port(), marker)
    time.sleep(0.5)  # the last records reach the file
    recorder.send_signal(signal.SIGINT)
    recorder.communicate(timeout=60)
    return keep_mix(raw, out / "mix.cap", marker)


def keep_mix(raw: Path, kept: Path, marker: str) -> Path:
    """The records of the mix (the helper's process, which exec'd with the marker, and its
    children) and those the probe made; the rest of the machine's activity is left out."""
    src, reader = open_capture(str(raw))
    with src:
        events = list(reader)
        meta = reader.meta
    helpers = {e.tgid for e in events if isinstance(e, ev.Exec) and e.filename.endswith(b"/steady_mix")
               and marker.encode() in e.argv}
    if len(helpers) != 1:
        raise SystemExit(f"expected one process running the mix, found {len(helpers)}")
    mix_pid = helpers.pop()
    children = {e.child_pid for e in events if isinstance(e, ev.Fork) and e.tgid == mix_pid}
    ours = {mix_pid} | children
    with kept.open("wb") as out:
        writer = FrameWriter(out, meta)
        for event in events:
            if isinstance(event, ev.PROBE_MADE) or event.tgid in ours or \
                    (isinstance(event, ev.Fork) and event.child_pid == mix_pid):
                writer.write(event)
    return kept


def replay(mode: str, capture: Path, passes: int) -> dict[str, float]:
    """One measurement in this process: the least CPU seconds of the loop alone over `passes`
    replays (each with a fresh aggregator: the least is the one others' work disturbed least),
    and the records read."""
    data = capture.read_bytes()
    least = float("inf")
    records = 0
    for _ in range(passes):
        reader = FrameReader(io.BytesIO(data), str(capture))
        if mode == "floor":
            started = time.process_time()
            records = sum(1 for _ in reader)
            least = min(least, time.process_time() - started)
            continue
        aggregator = Aggregator(rules=load_rules([]), config=DetectorConfig())
        with tempfile.TemporaryDirectory() as tmp:
            run = _consumer(mode, reader, aggregator, Path(tmp))
            started = time.process_time()
            run()
            least = min(least, time.process_time() - started)
        records = sum(aggregator.counters.events.values())
    return {"cpu": least, "records": records}


def _consumer(mode: str, reader: FrameReader, aggregator: Aggregator, tmp: Path) -> Callable[[], object]:
    """What `gpusentry analyze` or `gpusentry aggregate` does with the stream, ready to run."""
    book = IncidentBook()
    if mode == "analyze":
        return lambda: consume(reader, aggregator=aggregator, incidents=book)
    journal = Journal(tmp / "journal.db", Retention(86400, 1000))
    state = ApiState(aggregator, journal, Handover(), reader.meta, incidents=book)
    publisher = Publisher(state)
    run = RunLog(journal, 0, publisher.publish_gap)
    run.begin()
    return lambda: consume(reader, aggregator=aggregator, api=(state, publisher), run=run, incidents=book)


def measure(mode: str, capture: Path, passes: int) -> dict[str, float]:
    """Replays in a fresh process: nothing an earlier round cached helps it."""
    out = subprocess.run([sys.executable, "-m", "bench.aggregate", "--replay", mode, "--capture", str(capture),
                          "--passes", str(passes)],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10, help="how long the mix runs while recorded")
    parser.add_argument("--spawns", type=int, default=200, help="fork+exec+exit per second (3 records each)")
    parser.add_argument("--connects", type=int, default=400, help="UDP connects per second (1 record each)")
    parser.add_argument("--passes", type=int, default=3, help="replays per measurement; the least counts")
    parser.add_argument("--capture", type=Path, help="replay this capture instead of recording one")
    parser.add_argument("--keep", type=Path, help="keep the recorded capture in this file")
    parser.add_argument("--replay", choices=MODES, help=argparse.SUPPRESS)  # one measurement, in this process
    args = parser.parse_args()
    if args.replay:
        print(json.dumps(replay(args.replay, args.capture, args.passes)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        capture = args.capture or record_mix(Path(tmp), args.seconds, args.spawns, args.connects)
        if args.keep is not None and args.capture is None:
            shutil.copyfile(capture, args.keep)
        per_record: dict[str, list[float]] = {mode: [] for mode in MODES}
        records = 0
        for _ in range(args.rounds):
            for mode in MODES:
                got = measure(mode, capture, args.passes)
                records = int(got["records"])
                per_record[mode].append(1e6 * got["cpu"] / records)
    print(f"capture: {records:,} records")
    for mode in MODES:
        print(f"{mode:>8}: {spread(per_record[mode], '{:.1f}')} us of CPU per record")
    for mode in MODES[1:]:
        above = [a - f for a, f in zip(per_record[mode], per_record["floor"], strict=True)]
        print(f"{mode:>8} above the floor: {spread(above, '{:.1f}')} us per record")


if __name__ == "__main__":
    main()
