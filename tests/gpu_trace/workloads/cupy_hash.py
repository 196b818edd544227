"""(b) CuPy: an integer hashing kernel (a RawKernel, compiled with NVRTC) in a loop for --seconds
(default 10), the kind of kernel a miner runs: integer mixing, no floating point.

    python3 tests/gpu_trace/workloads/cupy_hash.py [--seconds 10] [--n 16777216]

Prints one JSON line; exit status 3 where CuPy or a GPU is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

SOURCE = r"""
extern "C" __global__ void hash32(const unsigned int* in, unsigned int* out, unsigned int n, unsigned int rounds) {
    unsigned int i = blockDim.x * blockIdx.x + threadIdx.x;
    if (i >= n) return;
    unsigned int x = in[i];
    for (unsigned int r = 0; r < rounds; r++) {
        x ^= x >> 16; x *= 0x7feb352dU; x ^= x >> 15; x *= 0x846ca68bU; x ^= x >> 16;
    }
    out[i] = x;
}
"""


def run(seconds: float, n: int, rounds: int) -> dict[str, object]:
    import cupy

    t0 = time.monotonic()
    if cupy.cuda.runtime.getDeviceCount() < 1:
        raise RuntimeError("no CUDA device")
    kernel = cupy.RawKernel(SOURCE, "hash32")
    data = cupy.arange(n, dtype=cupy.uint32)
    out = cupy.empty_like(data)
    threads = 256
    blocks = (n + threads - 1) // threads
    kernel((blocks,), (threads,), (data, out, cupy.uint32(n), cupy.uint32(rounds)))
    cupy.cuda.Device().synchronize()
    init_s = time.monotonic() - t0
    launches = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        kernel((blocks,), (threads,), (out, data, cupy.uint32(n), cupy.uint32(rounds)))
        data, out = out, data
        launches += 1
        if launches % 20 == 0:
            cupy.cuda.Device().synchronize()
    cupy.cuda.Device().synchronize()
    return {"workload": "cupy_hash", "cupy": cupy.__version__, "init_s": round(init_s, 3),
            "loop_s": round(time.monotonic() - t0 - init_s, 3), "launches": launches,
            "checksum": int(data[:1024].sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--n", type=int, default=1 << 24)
    parser.add_argument("--rounds", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        print(json.dumps(run(args.seconds, args.n, args.rounds)), flush=True)
    except Exception as exc:  # cupy raises its own errors (CUDARuntimeError, ...) without a GPU
        print(json.dumps({"workload": "cupy_hash", "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
