"""(d) Initialise CUDA through the driver API and exit: cuInit, a primary context, one 1 MiB
allocation freed again. ctypes only (no PyTorch), so the trace holds the driver's bring-up
and little else.

    python3 tests/gpu_trace/workloads/cuda_init.py

Prints one JSON line; exit status 3 where there is no libcuda or no GPU (as here, without one).
"""

from __future__ import annotations

import ctypes
import json
import sys
import time


def _check(result: int, what: str) -> None:
    if result != 0:
        raise RuntimeError(f"{what} returned CUDA error {result}")


def run() -> dict[str, object]:
    cuda = ctypes.CDLL("libcuda.so.1")
    t0 = time.monotonic()
    _check(cuda.cuInit(0), "cuInit")
    version, count = ctypes.c_int(), ctypes.c_int()
    _check(cuda.cuDriverGetVersion(ctypes.byref(version)), "cuDriverGetVersion")
    _check(cuda.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
    device = ctypes.c_int()
    _check(cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
    name = ctypes.create_string_buffer(256)
    _check(cuda.cuDeviceGetName(name, len(name), device), "cuDeviceGetName")
    init_s = time.monotonic() - t0
    context = ctypes.c_void_p()
    _check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
    _check(cuda.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    pointer = ctypes.c_uint64()
    _check(cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(1 << 20)), "cuMemAlloc")
    _check(cuda.cuMemFree_v2(pointer), "cuMemFree")
    _check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
    _check(cuda.cuDevicePrimaryCtxRelease_v2(device), "cuDevicePrimaryCtxRelease")
    return {"workload": "cuda_init", "driver_api": version.value, "devices": count.value,
            "name": name.value.decode(errors="replace"), "init_s": round(init_s, 3),
            "total_s": round(time.monotonic() - t0, 3)}


def main() -> int:
    try:
        print(json.dumps(run()), flush=True)
    except OSError as exc:
        print(json.dumps({"workload": "cuda_init", "error": f"no libcuda: {exc}"}), flush=True)
        return 3
    except RuntimeError as exc:
        print(json.dumps({"workload": "cuda_init", "error": str(exc)}), flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
