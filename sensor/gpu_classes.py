"""What NVIDIA's RM classes, escapes and UVM commands are, from their numbers.

Pure data and lookups, from ../shared/NVIDIA-ABI.md (NVIDIA's open kernel modules
595.45.04, class/*.h, nv_escape.h, uvm_ioctl.h). The BPF side decides only what to send;
naming happens here.
"""

from __future__ import annotations

from enum import Enum


class Role(Enum):
    CLIENT = "client"
    DEVICE = "device"
    SUBDEVICE = "subdevice"
    VASPACE = "vaspace"
    CHANNEL_GROUP = "channel-group"
    CONTEXT_SHARE = "context-share"
    CHANNEL = "channel"
    COMPUTE = "compute"
    COPY = "copy"
    GRAPHICS = "graphics"
    DOORBELL = "doorbell"
    MPS = "mps"
    MEMORY = "memory"
    P2P = "p2p"
    EVENT = "event"
    OTHER = "other"


_EXACT: dict[int, Role] = {
    0x0: Role.CLIENT, 0x1: Role.CLIENT, 0x41: Role.CLIENT,
    0x80: Role.DEVICE, 0x2080: Role.SUBDEVICE,
    0x90F1: Role.VASPACE,
    0xA06C: Role.CHANNEL_GROUP, 0x9067: Role.CONTEXT_SHARE,
    0x900E: Role.MPS,
    0x3E: Role.MEMORY, 0x3F: Role.MEMORY, 0x40: Role.MEMORY, 0x71: Role.MEMORY, 0xC2: Role.MEMORY,
    0xF8: Role.MEMORY, 0x70: Role.MEMORY, 0x50A0: Role.MEMORY,
    0x503B: Role.P2P,
    0x5: Role.EVENT, 0x79: Role.EVENT,
}

# Channel, compute, copy, graphics and doorbell classes share a low byte across generations.
_BY_LOW_BYTE: dict[int, Role] = {0x6F: Role.CHANNEL, 0xC0: Role.COMPUTE, 0xB5: Role.COPY, 0x97: Role.GRAPHICS,
                                  0x61: Role.DOORBELL}

ARCHITECTURE: dict[int, str] = {
    # compute
    0xC3C0: "Volta", 0xC5C0: "Turing", 0xC6C0: "Ampere (GA100)", 0xC7C0: "Ampere (GA10x)", 0xC9C0: "Ada",
    0xCBC0: "Hopper", 0xCDC0: "Blackwell", 0xCEC0: "Blackwell",
    # channels
    0xC36F: "Volta", 0xC46F: "Turing", 0xC56F: "Ampere", 0xC86F: "Hopper", 0xC96F: "Blackwell",
    0xCA6F: "Blackwell",
    # doorbells
    0xC361: "Volta", 0xC461: "Turing", 0xC561: "Ampere", 0xC661: "Hopper", 0xC761: "Blackwell",
    # copy engines
    0xC6B5: "Ampere", 0xC7B5: "Ampere", 0xC8B5: "Hopper", 0xC9B5: "Blackwell", 0xCAB5: "Blackwell",
}

ESCAPES: dict[int, str] = {
    0x27: "RM_ALLOC_MEMORY", 0x28: "RM_ALLOC_OBJECT", 0x29: "RM_FREE", 0x2A: "RM_CONTROL", 0x2B: "RM_ALLOC",
    0x34: "RM_DUP_OBJECT", 0x35: "RM_SHARE", 0x41: "RM_IDLE_CHANNELS", 0x4A: "RM_VID_HEAP_CONTROL",
    0x4D: "RM_ACCESS_REGISTRY", 0x4E: "RM_MAP_MEMORY", 0x4F: "RM_UNMAP_MEMORY", 0x52: "RM_GET_EVENT_DATA",
    0x54: "RM_ALLOC_CONTEXT_DMA2", 0x57: "RM_MAP_MEMORY_DMA", 0x58: "RM_UNMAP_MEMORY_DMA",
    0x59: "RM_BIND_CONTEXT_DMA", 0x5E: "RM_UPDATE_DEVICE_MAPPING_INFO",
    0xC8: "CARD_INFO", 0xC9: "REGISTER_FD", 0xCE: "ALLOC_OS_EVENT", 0xCF: "FREE_OS_EVENT", 0xD1: "STATUS_CODE",
    0xD2: "CHECK_VERSION_STR", 0xD3: "IOCTL_XFER_CMD", 0xD4: "ATTACH_GPUS_TO_FD", 0xD6: "SYS_PARAMS",
    0xD7: "NUMA_INFO", 0xD8: "SET_NUMA_STATUS", 0xD9: "EXPORT_TO_DMABUF_FD", 0xDA: "WAIT_OPEN_COMPLETE",
}

UVM_COMMANDS: dict[int, str] = {
    0x30000001: "INITIALIZE", 0x30000002: "DEINITIALIZE", 23: "CREATE_RANGE_GROUP", 24: "DESTROY_RANGE_GROUP",
    25: "REGISTER_GPU_VASPACE", 26: "UNREGISTER_GPU_VASPACE", 27: "REGISTER_CHANNEL", 28: "UNREGISTER_CHANNEL",
    33: "MAP_EXTERNAL_ALLOCATION", 34: "FREE", 37: "REGISTER_GPU", 38: "UNREGISTER_GPU",
    39: "PAGEABLE_MEM_ACCESS", 51: "MIGRATE", 68: "ALLOC_SEMAPHORE_POOL", 71: "POPULATE_PAGEABLE",
    72: "VALIDATE_VA_RANGE", 73: "CREATE_EXTERNAL_RANGE", 75: "MM_INITIALIZE",
}

CONTROLS: dict[int, str] = {0x2080200A: "PERF_BOOST", 0xC36F0108: "GPFIFO_GET_WORK_SUBMIT_TOKEN",
                            0xA06C0101: "GPFIFO_SCHEDULE"}

PERF_BOOST_CUDA = 1 << 4  # NV2080_CTRL_PERF_BOOST_FLAGS_CUDA
PERF_BOOST_FOREVER = 0xFFFFFFFF


def role_of(klass: int) -> Role:
    if klass in _EXACT:
        return _EXACT[klass]
    if klass <= 0xFFFF and klass >> 8 >= 0x50:
        return _BY_LOW_BYTE.get(klass & 0xFF, Role.OTHER)
    return Role.OTHER


def architecture_of(klass: int) -> str:
    """The GPU generation a class belongs to, or "" for generation-independent classes."""
    if klass in ARCHITECTURE:
        return ARCHITECTURE[klass]
    if role_of(klass) in (Role.COMPUTE, Role.CHANNEL, Role.COPY, Role.DOORBELL, Role.GRAPHICS):
        return "unknown"
    return ""


def class_name(klass: int) -> str:
    role = role_of(klass)
    arch = architecture_of(klass)
    return f"{role.value} {klass:#x}" + (f" ({arch})" if arch else "")


def device_name(kind: int, minor: int) -> str:
    from sensor.events import GpuKind

    names: dict[int, str] = {GpuKind.CTL: "nvidiactl", GpuKind.UVM: "nvidia-uvm",
                             GpuKind.UVM_TOOLS: "nvidia-uvm-tools", GpuKind.MODESET: "nvidia-modeset"}
    if kind == GpuKind.DEV:
        return f"nvidia{minor}"
    return names.get(kind, f"nvidia-device({minor})")


def command_name(kind: int, cmd_id: int) -> str:
    from sensor.events import GpuKind

    if kind in (GpuKind.UVM, GpuKind.UVM_TOOLS):
        return "UVM_" + UVM_COMMANDS.get(cmd_id, f"{cmd_id:#x}")
    return ESCAPES.get(cmd_id, f"ESC_{cmd_id:#04x}")
