"""The ctypes mirrors in sensor/probe/records.py agree with bpf/events.h as compiled for BPF.

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
    rows = []
    for c_name, mirror in records.MIRRORS.values():
        for name, _ in mirror._fields_:
            descriptor = getattr(mirror, name)
            rows.append((c_name, name, descriptor.offset, descriptor.size))
        rows.append((c_name, "", -1, ctypes.sizeof(mirror)))
    for c_name, mirror in [("rec_hdr", records.RecHdr), *records.MAP_MIRRORS.items()]:
        for name, _ in mirror._fields_:
            descriptor = getattr(mirror, name)
            rows.append((c_name, name, descriptor.offset, descriptor.size))
        rows.append((c_name, "", -1, ctypes.sizeof(mirror)))
    return rows


def test_every_record_field_matches_the_bpf_layout(root: None) -> None:
    from bcc import BPF

    rows = _fields()
    stores = []
    for i, (struct, field, _, _) in enumerate(rows):
        if field:
            offset = f"offsetof(struct {struct}, {field})"
            size = f"sizeof(((struct {struct} *)0)->{field})"
        else:  # the fixed part of exec_rec ends where its argv[] begins
            offset = "0"
            size = f"offsetof(struct {struct}, argv)" if struct == "exec_rec" else f"sizeof(struct {struct})"
        stores.append(f"store({2 * i}, {offset}); store({2 * i + 1}, {size});")
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
    for i, (struct, field, offset, size) in enumerate(rows):
        got_offset, got_size = values[2 * i], values[2 * i + 1]
        if field and (got_offset, got_size) != (offset, size):
            mismatches.append(f"{struct}.{field}: BPF offset {got_offset} size {got_size}, "
                              f"ctypes offset {offset} size {size}")
        if not field and got_size != size:
            mismatches.append(f"struct {struct}: BPF size {got_size}, ctypes size {size}")
    assert mismatches == []
    assert any(values)  # the program ran
