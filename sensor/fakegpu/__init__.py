"""A fake NVIDIA driver (FUSE) and a CUDA-like client that replays ioctl fixtures against it.

For tests and demos on machines without a GPU: the client makes the real ioctl syscalls,
with the real struct layouts, on files bind-mounted over /dev/nvidia* in a private mount
namespace, so the sensor sees what it would see from CUDA.
"""
