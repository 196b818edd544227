"""(a) PyTorch: CUDA initialisation, then bf16 matrix products for --seconds (default 10).

Every 200 products it allocates and frees a 256 MiB tensor and empties PyTorch's cache, so
the trace also shows memory being allocated, mapped and freed while work runs (products
themselves make no ioctl: launches go through a mapped ring and a doorbell).

    python3 tests/gpu_trace/workloads/torch_matmul.py [--seconds 10] [--size 4096]

Prints one JSON line; exit status 3 where PyTorch or a GPU is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def run(seconds: float, size: int) -> dict[str, object]:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("torch.cuda.is_available() is False")
    t0 = time.monotonic()
    torch.cuda.init()
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    init_s = time.monotonic() - t0
    c = a @ b
    products, churn = 1, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        c = a @ b
        products += 1
        if products % 200 == 0:
            scratch = torch.empty(128 << 20, device="cuda", dtype=torch.bfloat16)
            del scratch
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            churn += 1
    torch.cuda.synchronize()
    loop_s = time.monotonic() - t0 - init_s
    return {"workload": "torch_matmul", "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(0), "init_s": round(init_s, 3), "loop_s": round(loop_s, 3),
            "products": products, "churn": churn,
            "tflops": round(2 * size**3 * products / loop_s / 1e12, 1), "checksum": float(c[0, 0])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args(argv)
    try:
        print(json.dumps(run(args.seconds, args.size)), flush=True)
    except (ImportError, RuntimeError) as exc:
        print(json.dumps({"workload": "torch_matmul", "error": str(exc)}), flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
