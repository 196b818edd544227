"""The ctypes mirrors in sensor/probe/records.py agree with sensor/bpf/events.h as compiled for BPF.

A tiny BPF program, built from the same header, writes offsetof and sizeof of every field
into a map; the test compares them with the ctypes layout, field by field.
"""

from __future__ import annotations

import ctypes
import os

from sensor.probe import records
from sensor.probe.program import BPF_DIR


def _fields() -> list[tuple[str, str, int, int]]:
    """(struct, field, ctypes offset, ctypes size) for every field of every mirror."""
    mirrors: list[tuple[str, type[ctypes.Structure]]] = [
        *records.MIRRORS.values(), ("rec_hdr", records.RecHdr), *records.MAP_MIRRORS.items()]
    rows = []
    for c_name, mirror in mirrors:
        for field in mirror._fields_:
            descriptor = getattr(mirror, field[0])
            rows.append((c_name, field[0], descriptor.offset, descriptor.size))
        rows.append((c_name, "", -1, ctypes.sizeof(mirror)))
    return rows


def test_every_record_field_matches_the_bpf_layout(root: None) -> None:
    from bcc import BPF

    rows = _fields()
    stores = []
    for i, (struct, field, _, _) in enumerate(rows):
        if field:
            offset_of = f"offsetof(struct {struct}, {field})"
            size_of = f"sizeof(((struct {struct} *)0)->{field})"
        else:  # the fixed part of exec_rec ends where its argv[] begins
            offset_of = "0"
            size_of = f"offsetof(struct {struct}, argv)" if struct == "exec_rec" else f"sizeof(struct {struct})"
        stores.append(f"store({2 * i}, {offset_of}); store({2 * i + 1}, {size_of});")
    text = f"""
#include "events.h"
BPF_ARRAY(layout, u64, {2 * len(rows)});
static __always_inline void store(u32 index, u64 value) {{ layout.update(&index, &value); }}
TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{{
    if ((bpf_get_current_pid_tgid() >> 32) != {os.getpid()})
        return 0;
    {" ".join(stores)}
    return 0;
}}
"""
    bpf = BPF(text=text.encode(), cflags=[f"-I{BPF_DIR}"])
    try:
        os.getppid()
        table = bpf[b"layout"]
        values = [table[table.Key(i)].value for i in range(2 * len(rows))]
    finally:
        bpf.cleanup()
    mismatches = []
    for i, (struct, name, offset, size) in enumerate(rows):
        got_offset, got_size = values[2 * i], values[2 * i + 1]
        if name and (got_offset, got_size) != (offset, size):
            mismatches.append(f"{struct}.{name}: BPF offset {got_offset} size {got_size}, "
                              f"ctypes offset {offset} size {size}")
        if not name and got_size != size:
            mismatches.append(f"struct {struct}: BPF size {got_size}, ctypes size {size}")
    assert mismatches == []
    assert any(values)  # the program ran
