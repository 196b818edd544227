"""The driver's ioctl ABI, as the fake driver and the replay client use it.

From ../shared/NVIDIA-ABI.md (open kernel modules 595.45.04). RM ioctls are
_IOWR('F', nr, size); the driver reads only the number and the size, and since 595 a wrong
size is EINVAL. RM failures come back in the struct's status field with ioctl returning 0.
"""

from __future__ import annotations

import struct

NV_IOCTL_MAGIC = ord("F")

# RM escapes and frontend ioctls: name -> (nr, accepted sizes; None = any)
ESCAPES: dict[str, tuple[int, tuple[int, ...] | None]] = {
    "CARD_INFO": (0xC8, None),
    "REGISTER_FD": (0xC9, (4,)),
    "ALLOC_OS_EVENT": (0xCE, (16,)),
    "FREE_OS_EVENT": (0xCF, (16,)),
    "STATUS_CODE": (0xD1, (12,)),
    "CHECK_VERSION_STR": (0xD2, (72,)),
    "IOCTL_XFER_CMD": (0xD3, (16,)),
    "ATTACH_GPUS_TO_FD": (0xD4, None),
    "SYS_PARAMS": (0xD6, (8,)),
    "NUMA_INFO": (0xD7, (560,)),
    "WAIT_OPEN_COMPLETE": (0xDA, (8,)),
    "RM_ALLOC_MEMORY": (0x27, (56,)),
    "RM_FREE": (0x29, (16,)),
    "RM_CONTROL": (0x2A, (32,)),
    "RM_ALLOC": (0x2B, (32, 48)),  # NVOS21, NVOS64 (the 40-byte form is gone since 535.43)
    "RM_DUP_OBJECT": (0x34, (28,)),
    "RM_SHARE": (0x35, (24,)),
    "RM_VID_HEAP_CONTROL": (0x4A, (184,)),
    "RM_MAP_MEMORY": (0x4E, (56,)),
    "RM_UNMAP_MEMORY": (0x4F, (32,)),
    "RM_MAP_MEMORY_DMA": (0x57, (64,)),
    "RM_UNMAP_MEMORY_DMA": (0x58, (48,)),
}
ESCAPE_BY_NR = {nr: name for name, (nr, _) in ESCAPES.items()}

UVM_COMMANDS: dict[str, int] = {
    "INITIALIZE": 0x30000001, "DEINITIALIZE": 0x30000002, "REGISTER_GPU_VASPACE": 25, "REGISTER_CHANNEL": 27,
    "UNREGISTER_CHANNEL": 28, "MAP_EXTERNAL_ALLOCATION": 33, "FREE": 34, "REGISTER_GPU": 37,
    "PAGEABLE_MEM_ACCESS": 39, "CREATE_EXTERNAL_RANGE": 73, "MM_INITIALIZE": 75, "ALLOC_SEMAPHORE_POOL": 68,
}
UVM_PARAM_SIZES: dict[int, int] = {0x30000001: 16, 0x30000002: 0, 25: 32, 27: 56, 28: 32, 33: 2176, 34: 24, 37: 40,
                                   39: 8, 73: 24, 75: 8, 68: 2096}

# NV_STATUS codes (nvstatuscodes.h)
NV_OK = 0x00
NV_ERR_INSERT_DUPLICATE_NAME = 0x19
NV_ERR_INVALID_ARGUMENT = 0x1F
NV_ERR_INVALID_CLASS = 0x22
NV_ERR_INVALID_CLIENT = 0x23
NV_ERR_INVALID_OBJECT_HANDLE = 0x33
NV_ERR_INVALID_OBJECT_PARENT = 0x36

RM_API_VERSION_REPLY_RECOGNIZED = 1


def ioc(nr: int, size: int) -> int:
    """_IOWR('F', nr, size)"""
    return 0xC0000000 | (size & 0x3FFF) << 16 | NV_IOCTL_MAGIC << 8 | nr


def ioc_nr(cmd: int) -> int:
    return cmd & 0xFF


def ioc_size(cmd: int) -> int:
    return cmd >> 16 & 0x3FFF


def ioc_type(cmd: int) -> int:
    return cmd >> 8 & 0xFF


# NVOS21 / NVOS64 (RM_ALLOC): hRoot, hObjectParent, hObjectNew, hClass, pAllocParms, then
#   NVOS21 (32): paramsSize@24, status@28
#   NVOS64 (48): pRightsRequested@24, paramsSize@32, flags@36, status@40
ALLOC_HEAD = struct.Struct("<IIIIQ")
ALLOC_STATUS_AT = {32: 28, 40: 32, 48: 40}


def pack_alloc(size: int, root: int, parent: int, new: int, klass: int, params: int, params_size: int) -> bytearray:
    buf = bytearray(size)
    ALLOC_HEAD.pack_into(buf, 0, root, parent, new, klass, params)
    if size == 32:
        struct.pack_into("<I", buf, 24, params_size)
    elif size == 48:
        struct.pack_into("<I", buf, 32, params_size)
    return buf


# NVOS02 with its fd (RM_ALLOC_MEMORY, 56 bytes): hRoot, hObjectParent, hObjectNew, hClass, flags,
# pMemory (u64), limit (u64), status, then (NVOS02_PARAMETERS_WITH_FD) fd@48
ALLOC_MEMORY = struct.Struct("<IIIII4xQQI4xi4x")
ALLOC_MEMORY_STATUS_AT = 40

# NVOS00 (RM_FREE): hRoot, hObjectParent, hObjectOld, status
FREE = struct.Struct("<IIII")
# NVOS54 (RM_CONTROL): hClient, hObject, cmd, flags, params (u64), paramsSize, status
CONTROL = struct.Struct("<IIIIQII")
# NV2080_CTRL_PERF_BOOST_PARAMS: flags, duration
PERF_BOOST_PARAMS = struct.Struct("<II")
# NV0005_ALLOC_PARAMETERS: hParentClient, hSrcResource, hClass, notifyIndex, data (u64)
EVENT_PARAMS = struct.Struct("<IIIIQ")
# NV0080_ALLOC_PARAMETERS starts with deviceId
DEVICE_PARAMS = struct.Struct("<I60x")
# IOCTL_XFER_CMD: cmd, size, ptr
XFER = struct.Struct("<IIQ")
# Memory classes' allocation parameters, with the size where the driver reads it (nvos.h,
# class/cl00c2.h, cl00f8.h; NVIDIA-ABI.md, Memory classes):
# NV_MEMORY_ALLOCATION_PARAMS (0x3E, 0x3F, 0x40): 128 bytes, flags@8, size@64
MEMORY_PARAMS_SIZE, MEMORY_FLAGS_AT, MEMORY_SIZE_AT = 128, 8, 64
NVOS32_ALLOC_FLAGS_VIRTUAL = 0x00080000
# NV_OS_DESC_MEMORY_ALLOCATION_PARAMS (0x71): type, flags, attr, attr2, descriptor, limit, descriptorType, tag
OS_DESC_PARAMS = struct.Struct("<IIIIQQII")
# NV_MEMORY_VIRTUAL_ALLOCATION_PARAMS (0x70, 0x50A0): offset, limit, hVASpace
VIRTUAL_PARAMS = struct.Struct("<QQI4x")
# NV_PHYSICAL_MEMORY_ALLOCATION_PARAMS (0xC2): memSize, format, pageSize
PHYSICAL_PARAMS = struct.Struct("<QII")
# NV00F8_ALLOCATION_PARAMETERS (0xF8): alignment, allocSize, pageSize, allocFlags, map {offset, hVidMem, flags}
FABRIC_PARAMS = struct.Struct("<QQQI4xQII")


def memory_params(klass: int, size: int, virtual: bool = False) -> bytes | None:
    """A memory class's allocation parameters asking for `size` bytes; None for other classes."""
    if klass in (0x3E, 0x3F, 0x40):
        params = bytearray(MEMORY_PARAMS_SIZE)
        struct.pack_into("<I", params, MEMORY_FLAGS_AT, NVOS32_ALLOC_FLAGS_VIRTUAL if virtual else 0)
        struct.pack_into("<Q", params, MEMORY_SIZE_AT, size)
        return bytes(params)
    if klass == 0x71:
        return OS_DESC_PARAMS.pack(0, 0, 0, 0, 0, size - 1, 0, 0)
    if klass in (0x70, 0x50A0):
        return VIRTUAL_PARAMS.pack(0, size - 1, 0)
    if klass == 0xC2:
        return PHYSICAL_PARAMS.pack(size, 0, 0)
    if klass == 0xF8:
        return FABRIC_PARAMS.pack(0, size, 2 << 20, 0, 0, 0, 0)
    return None

