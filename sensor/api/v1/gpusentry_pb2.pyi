import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_INFO: _ClassVar[Severity]
    SEVERITY_LOW: _ClassVar[Severity]
    SEVERITY_MEDIUM: _ClassVar[Severity]
    SEVERITY_HIGH: _ClassVar[Severity]
    SEVERITY_CRITICAL: _ClassVar[Severity]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_EXEC: _ClassVar[EventKind]
    EVENT_KIND_EXIT: _ClassVar[EventKind]
    EVENT_KIND_CONNECT: _ClassVar[EventKind]
    EVENT_KIND_GPU_OPEN: _ClassVar[EventKind]
    EVENT_KIND_GPU_OBJECT: _ClassVar[EventKind]
    EVENT_KIND_GPU_ACTIVITY: _ClassVar[EventKind]
    EVENT_KIND_TUNNEL: _ClassVar[EventKind]
    EVENT_KIND_EGRESS: _ClassVar[EventKind]
    EVENT_KIND_FORK: _ClassVar[EventKind]
    EVENT_KIND_ACCEPT: _ClassVar[EventKind]
    EVENT_KIND_TCP_ESTABLISHED: _ClassVar[EventKind]

class FactKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FACT_KIND_UNSPECIFIED: _ClassVar[FactKind]
    FACT_KIND_EXEC: _ClassVar[FactKind]
    FACT_KIND_CONNECT: _ClassVar[FactKind]
    FACT_KIND_EGRESS: _ClassVar[FactKind]
    FACT_KIND_TUNNEL: _ClassVar[FactKind]
    FACT_KIND_MINER: _ClassVar[FactKind]
    FACT_KIND_INTERNAL_SCAN: _ClassVar[FactKind]
    FACT_KIND_GPU_OPEN: _ClassVar[FactKind]
    FACT_KIND_GPU_COMPUTE: _ClassVar[FactKind]
    FACT_KIND_GPU_PROFILE: _ClassVar[FactKind]
    FACT_KIND_GPU_LAUNCHES: _ClassVar[FactKind]
SEVERITY_UNSPECIFIED: Severity
SEVERITY_INFO: Severity
SEVERITY_LOW: Severity
SEVERITY_MEDIUM: Severity
SEVERITY_HIGH: Severity
SEVERITY_CRITICAL: Severity
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_EXEC: EventKind
EVENT_KIND_EXIT: EventKind
EVENT_KIND_CONNECT: EventKind
EVENT_KIND_GPU_OPEN: EventKind
EVENT_KIND_GPU_OBJECT: EventKind
EVENT_KIND_GPU_ACTIVITY: EventKind
EVENT_KIND_TUNNEL: EventKind
EVENT_KIND_EGRESS: EventKind
EVENT_KIND_FORK: EventKind
EVENT_KIND_ACCEPT: EventKind
EVENT_KIND_TCP_ESTABLISHED: EventKind
FACT_KIND_UNSPECIFIED: FactKind
FACT_KIND_EXEC: FactKind
FACT_KIND_CONNECT: FactKind
FACT_KIND_EGRESS: FactKind
FACT_KIND_TUNNEL: FactKind
FACT_KIND_MINER: FactKind
FACT_KIND_INTERNAL_SCAN: FactKind
FACT_KIND_GPU_OPEN: FactKind
FACT_KIND_GPU_COMPUTE: FactKind
FACT_KIND_GPU_PROFILE: FactKind
FACT_KIND_GPU_LAUNCHES: FactKind

class Host(_message.Message):
    __slots__ = ("hostname", "machine_id")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    MACHINE_ID_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    machine_id: str
    def __init__(self, hostname: _Optional[str] = ..., machine_id: _Optional[str] = ...) -> None: ...

class Process(_message.Message):
    __slots__ = ("exec_id", "pid", "ppid", "exe", "argv", "argc", "uid", "loginuid", "cgroup_id", "start_time", "alive", "exit_code", "tunnel_scopes", "inherited", "container", "pod")
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PPID_FIELD_NUMBER: _ClassVar[int]
    EXE_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ARGC_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    LOGINUID_FIELD_NUMBER: _ClassVar[int]
    CGROUP_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_SCOPES_FIELD_NUMBER: _ClassVar[int]
    INHERITED_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    exec_id: str
    pid: int
    ppid: int
    exe: str
    argv: _containers.RepeatedScalarFieldContainer[str]
    argc: int
    uid: int
    loginuid: int
    cgroup_id: int
    start_time: _timestamp_pb2.Timestamp
    alive: bool
    exit_code: int
    tunnel_scopes: _containers.RepeatedScalarFieldContainer[str]
    inherited: bool
    container: Container
    pod: Pod
    def __init__(self, exec_id: _Optional[str] = ..., pid: _Optional[int] = ..., ppid: _Optional[int] = ..., exe: _Optional[str] = ..., argv: _Optional[_Iterable[str]] = ..., argc: _Optional[int] = ..., uid: _Optional[int] = ..., loginuid: _Optional[int] = ..., cgroup_id: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., alive: _Optional[bool] = ..., exit_code: _Optional[int] = ..., tunnel_scopes: _Optional[_Iterable[str]] = ..., inherited: _Optional[bool] = ..., container: _Optional[_Union[Container, _Mapping]] = ..., pod: _Optional[_Union[Pod, _Mapping]] = ...) -> None: ...

class Container(_message.Message):
    __slots__ = ("runtime", "id", "name", "image")
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    runtime: str
    id: str
    name: str
    image: str
    def __init__(self, runtime: _Optional[str] = ..., id: _Optional[str] = ..., name: _Optional[str] = ..., image: _Optional[str] = ...) -> None: ...

class Pod(_message.Message):
    __slots__ = ("uid", "name", "namespace", "container", "gpus")
    UID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    uid: str
    name: str
    namespace: str
    container: str
    gpus: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uid: _Optional[str] = ..., name: _Optional[str] = ..., namespace: _Optional[str] = ..., container: _Optional[str] = ..., gpus: _Optional[_Iterable[str]] = ...) -> None: ...

class ProcessRef(_message.Message):
    __slots__ = ("exec_id", "pid", "exe")
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXE_FIELD_NUMBER: _ClassVar[int]
    exec_id: str
    pid: int
    exe: str
    def __init__(self, exec_id: _Optional[str] = ..., pid: _Optional[int] = ..., exe: _Optional[str] = ...) -> None: ...

class Exec(_message.Message):
    __slots__ = ("filename", "argv", "argc", "argv_truncated", "result", "uid", "gid", "cgroup_id", "arg_cut", "argv_unread", "filename_cut", "argc_unknown", "argv_from_procfs", "ppid", "loginuid", "tool", "identity", "ssh_config")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ARGC_FIELD_NUMBER: _ClassVar[int]
    ARGV_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    CGROUP_ID_FIELD_NUMBER: _ClassVar[int]
    ARG_CUT_FIELD_NUMBER: _ClassVar[int]
    ARGV_UNREAD_FIELD_NUMBER: _ClassVar[int]
    FILENAME_CUT_FIELD_NUMBER: _ClassVar[int]
    ARGC_UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    ARGV_FROM_PROCFS_FIELD_NUMBER: _ClassVar[int]
    PPID_FIELD_NUMBER: _ClassVar[int]
    LOGINUID_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SSH_CONFIG_FIELD_NUMBER: _ClassVar[int]
    filename: str
    argv: _containers.RepeatedScalarFieldContainer[str]
    argc: int
    argv_truncated: bool
    result: int
    uid: int
    gid: int
    cgroup_id: int
    arg_cut: bool
    argv_unread: bool
    filename_cut: bool
    argc_unknown: bool
    argv_from_procfs: bool
    ppid: int
    loginuid: int
    tool: str
    identity: str
    ssh_config: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, filename: _Optional[str] = ..., argv: _Optional[_Iterable[str]] = ..., argc: _Optional[int] = ..., argv_truncated: _Optional[bool] = ..., result: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., cgroup_id: _Optional[int] = ..., arg_cut: _Optional[bool] = ..., argv_unread: _Optional[bool] = ..., filename_cut: _Optional[bool] = ..., argc_unknown: _Optional[bool] = ..., argv_from_procfs: _Optional[bool] = ..., ppid: _Optional[int] = ..., loginuid: _Optional[int] = ..., tool: _Optional[str] = ..., identity: _Optional[str] = ..., ssh_config: _Optional[_Iterable[str]] = ...) -> None: ...

class Exit(_message.Message):
    __slots__ = ("exit_code", "signal")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    signal: int
    def __init__(self, exit_code: _Optional[int] = ..., signal: _Optional[int] = ...) -> None: ...

class Connect(_message.Message):
    __slots__ = ("family", "address", "port", "result", "destination", "route_by_range", "allowed", "fd")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    ROUTE_BY_RANGE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    FD_FIELD_NUMBER: _ClassVar[int]
    family: str
    address: str
    port: int
    result: int
    destination: str
    route_by_range: bool
    allowed: bool
    fd: int
    def __init__(self, family: _Optional[str] = ..., address: _Optional[str] = ..., port: _Optional[int] = ..., result: _Optional[int] = ..., destination: _Optional[str] = ..., route_by_range: _Optional[bool] = ..., allowed: _Optional[bool] = ..., fd: _Optional[int] = ...) -> None: ...

class Fork(_message.Message):
    __slots__ = ("child_pid", "parent_pid")
    CHILD_PID_FIELD_NUMBER: _ClassVar[int]
    PARENT_PID_FIELD_NUMBER: _ClassVar[int]
    child_pid: int
    parent_pid: int
    def __init__(self, child_pid: _Optional[int] = ..., parent_pid: _Optional[int] = ...) -> None: ...

class Accept(_message.Message):
    __slots__ = ("fd", "family", "address", "port")
    FD_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    fd: int
    family: str
    address: str
    port: int
    def __init__(self, fd: _Optional[int] = ..., family: _Optional[str] = ..., address: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class TcpEstablished(_message.Message):
    __slots__ = ("family", "source_address", "source_port", "destination_address", "destination_port", "destination")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PORT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PORT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    family: str
    source_address: str
    source_port: int
    destination_address: str
    destination_port: int
    destination: str
    def __init__(self, family: _Optional[str] = ..., source_address: _Optional[str] = ..., source_port: _Optional[int] = ..., destination_address: _Optional[str] = ..., destination_port: _Optional[int] = ..., destination: _Optional[str] = ...) -> None: ...

class GpuOpen(_message.Message):
    __slots__ = ("device", "minor", "by_name")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MINOR_FIELD_NUMBER: _ClassVar[int]
    BY_NAME_FIELD_NUMBER: _ClassVar[int]
    device: str
    minor: int
    by_name: bool
    def __init__(self, device: _Optional[str] = ..., minor: _Optional[int] = ..., by_name: _Optional[bool] = ...) -> None: ...

class GpuObject(_message.Message):
    __slots__ = ("device", "command", "reason", "role", "class_id", "architecture", "handle", "parent", "ret", "status")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    RET_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    device: str
    command: str
    reason: str
    role: str
    class_id: int
    architecture: str
    handle: int
    parent: int
    ret: int
    status: int
    def __init__(self, device: _Optional[str] = ..., command: _Optional[str] = ..., reason: _Optional[str] = ..., role: _Optional[str] = ..., class_id: _Optional[int] = ..., architecture: _Optional[str] = ..., handle: _Optional[int] = ..., parent: _Optional[int] = ..., ret: _Optional[int] = ..., status: _Optional[int] = ...) -> None: ...

class GpuActivity(_message.Message):
    __slots__ = ("calls_by_command", "rate_by_device", "errors", "suppressed")
    class CallsByCommandEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class RateByDeviceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CALLS_BY_COMMAND_FIELD_NUMBER: _ClassVar[int]
    RATE_BY_DEVICE_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    calls_by_command: _containers.ScalarMap[str, int]
    rate_by_device: _containers.ScalarMap[str, float]
    errors: int
    suppressed: int
    def __init__(self, calls_by_command: _Optional[_Mapping[str, int]] = ..., rate_by_device: _Optional[_Mapping[str, float]] = ..., errors: _Optional[int] = ..., suppressed: _Optional[int] = ...) -> None: ...

class Tunnel(_message.Message):
    __slots__ = ("tool", "reverse", "directions", "remote_host", "remote_user", "remote_port", "forwards", "scope", "evidence", "via", "local_services", "relayed_bytes")
    TOOL_FIELD_NUMBER: _ClassVar[int]
    REVERSE_FIELD_NUMBER: _ClassVar[int]
    DIRECTIONS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_HOST_FIELD_NUMBER: _ClassVar[int]
    REMOTE_USER_FIELD_NUMBER: _ClassVar[int]
    REMOTE_PORT_FIELD_NUMBER: _ClassVar[int]
    FORWARDS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    LOCAL_SERVICES_FIELD_NUMBER: _ClassVar[int]
    RELAYED_BYTES_FIELD_NUMBER: _ClassVar[int]
    tool: str
    reverse: bool
    directions: _containers.RepeatedScalarFieldContainer[str]
    remote_host: str
    remote_user: str
    remote_port: int
    forwards: _containers.RepeatedScalarFieldContainer[str]
    scope: str
    evidence: str
    via: _containers.RepeatedScalarFieldContainer[str]
    local_services: _containers.RepeatedScalarFieldContainer[str]
    relayed_bytes: int
    def __init__(self, tool: _Optional[str] = ..., reverse: _Optional[bool] = ..., directions: _Optional[_Iterable[str]] = ..., remote_host: _Optional[str] = ..., remote_user: _Optional[str] = ..., remote_port: _Optional[int] = ..., forwards: _Optional[_Iterable[str]] = ..., scope: _Optional[str] = ..., evidence: _Optional[str] = ..., via: _Optional[_Iterable[str]] = ..., local_services: _Optional[_Iterable[str]] = ..., relayed_bytes: _Optional[int] = ...) -> None: ...

class Egress(_message.Message):
    __slots__ = ("address", "port", "result", "allowed")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    result: int
    allowed: bool
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ..., result: _Optional[int] = ..., allowed: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("time", "kind", "process", "ts", "exec", "exit", "connect", "gpu_open", "gpu_object", "gpu_activity", "tunnel", "egress", "fork", "accept", "tcp_established")
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    EXEC_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    CONNECT_FIELD_NUMBER: _ClassVar[int]
    GPU_OPEN_FIELD_NUMBER: _ClassVar[int]
    GPU_OBJECT_FIELD_NUMBER: _ClassVar[int]
    GPU_ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    FORK_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    TCP_ESTABLISHED_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    kind: EventKind
    process: ProcessRef
    ts: int
    exec: Exec
    exit: Exit
    connect: Connect
    gpu_open: GpuOpen
    gpu_object: GpuObject
    gpu_activity: GpuActivity
    tunnel: Tunnel
    egress: Egress
    fork: Fork
    accept: Accept
    tcp_established: TcpEstablished
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[EventKind, str]] = ..., process: _Optional[_Union[ProcessRef, _Mapping]] = ..., ts: _Optional[int] = ..., exec: _Optional[_Union[Exec, _Mapping]] = ..., exit: _Optional[_Union[Exit, _Mapping]] = ..., connect: _Optional[_Union[Connect, _Mapping]] = ..., gpu_open: _Optional[_Union[GpuOpen, _Mapping]] = ..., gpu_object: _Optional[_Union[GpuObject, _Mapping]] = ..., gpu_activity: _Optional[_Union[GpuActivity, _Mapping]] = ..., tunnel: _Optional[_Union[Tunnel, _Mapping]] = ..., egress: _Optional[_Union[Egress, _Mapping]] = ..., fork: _Optional[_Union[Fork, _Mapping]] = ..., accept: _Optional[_Union[Accept, _Mapping]] = ..., tcp_established: _Optional[_Union[TcpEstablished, _Mapping]] = ...) -> None: ...

class ExecFact(_message.Message):
    __slots__ = ("exe", "name", "argv", "cmdline", "uid", "loginuid", "known_tool")
    EXE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    CMDLINE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    LOGINUID_FIELD_NUMBER: _ClassVar[int]
    KNOWN_TOOL_FIELD_NUMBER: _ClassVar[int]
    exe: str
    name: str
    argv: _containers.RepeatedScalarFieldContainer[str]
    cmdline: str
    uid: int
    loginuid: int
    known_tool: str
    def __init__(self, exe: _Optional[str] = ..., name: _Optional[str] = ..., argv: _Optional[_Iterable[str]] = ..., cmdline: _Optional[str] = ..., uid: _Optional[int] = ..., loginuid: _Optional[int] = ..., known_tool: _Optional[str] = ...) -> None: ...

class MinerFact(_message.Message):
    __slots__ = ("reason", "detail", "address", "port")
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    reason: str
    detail: str
    address: str
    port: int
    def __init__(self, reason: _Optional[str] = ..., detail: _Optional[str] = ..., address: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class InternalScanFact(_message.Message):
    __slots__ = ("destinations", "window_s")
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    destinations: int
    window_s: int
    def __init__(self, destinations: _Optional[int] = ..., window_s: _Optional[int] = ...) -> None: ...

class GpuComputeFact(_message.Message):
    __slots__ = ("handle", "class_id", "architecture", "channel_class", "device_id", "by_name", "held_bytes")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_CLASS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    BY_NAME_FIELD_NUMBER: _ClassVar[int]
    HELD_BYTES_FIELD_NUMBER: _ClassVar[int]
    handle: int
    class_id: int
    architecture: str
    channel_class: int
    device_id: int
    by_name: bool
    held_bytes: int
    def __init__(self, handle: _Optional[int] = ..., class_id: _Optional[int] = ..., architecture: _Optional[str] = ..., channel_class: _Optional[int] = ..., device_id: _Optional[int] = ..., by_name: _Optional[bool] = ..., held_bytes: _Optional[int] = ...) -> None: ...

class GpuProfileFact(_message.Message):
    __slots__ = ("held_bytes", "peak_bytes", "allocated_bytes", "system_bytes", "registered_bytes", "virtual_bytes", "uvm_mapped_bytes", "allocations", "frees", "alloc_rate", "ioctl_rate", "compute_objects", "channels", "compute_age_s", "devices", "uvm_gpus", "peer_objects", "untracked")
    HELD_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_BYTES_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_BYTES_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    UVM_MAPPED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    FREES_FIELD_NUMBER: _ClassVar[int]
    ALLOC_RATE_FIELD_NUMBER: _ClassVar[int]
    IOCTL_RATE_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_AGE_S_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    UVM_GPUS_FIELD_NUMBER: _ClassVar[int]
    PEER_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    UNTRACKED_FIELD_NUMBER: _ClassVar[int]
    held_bytes: int
    peak_bytes: int
    allocated_bytes: int
    system_bytes: int
    registered_bytes: int
    virtual_bytes: int
    uvm_mapped_bytes: int
    allocations: int
    frees: int
    alloc_rate: int
    ioctl_rate: int
    compute_objects: int
    channels: int
    compute_age_s: int
    devices: int
    uvm_gpus: int
    peer_objects: int
    untracked: int
    def __init__(self, held_bytes: _Optional[int] = ..., peak_bytes: _Optional[int] = ..., allocated_bytes: _Optional[int] = ..., system_bytes: _Optional[int] = ..., registered_bytes: _Optional[int] = ..., virtual_bytes: _Optional[int] = ..., uvm_mapped_bytes: _Optional[int] = ..., allocations: _Optional[int] = ..., frees: _Optional[int] = ..., alloc_rate: _Optional[int] = ..., ioctl_rate: _Optional[int] = ..., compute_objects: _Optional[int] = ..., channels: _Optional[int] = ..., compute_age_s: _Optional[int] = ..., devices: _Optional[int] = ..., uvm_gpus: _Optional[int] = ..., peer_objects: _Optional[int] = ..., untracked: _Optional[int] = ...) -> None: ...

class GpuLaunchesFact(_message.Message):
    __slots__ = ("launches_per_s", "distinct_kernels", "window_s", "launches", "total_launches", "watch")
    LAUNCHES_PER_S_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_KERNELS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    LAUNCHES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LAUNCHES_FIELD_NUMBER: _ClassVar[int]
    WATCH_FIELD_NUMBER: _ClassVar[int]
    launches_per_s: int
    distinct_kernels: int
    window_s: int
    launches: int
    total_launches: int
    watch: str
    def __init__(self, launches_per_s: _Optional[int] = ..., distinct_kernels: _Optional[int] = ..., window_s: _Optional[int] = ..., launches: _Optional[int] = ..., total_launches: _Optional[int] = ..., watch: _Optional[str] = ...) -> None: ...

class Fact(_message.Message):
    __slots__ = ("time", "ts", "kind", "process", "summary", "exec", "connect", "egress", "tunnel", "miner", "internal_scan", "gpu_open", "gpu_compute", "gpu_profile", "gpu_launches")
    TIME_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    EXEC_FIELD_NUMBER: _ClassVar[int]
    CONNECT_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_FIELD_NUMBER: _ClassVar[int]
    MINER_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_SCAN_FIELD_NUMBER: _ClassVar[int]
    GPU_OPEN_FIELD_NUMBER: _ClassVar[int]
    GPU_COMPUTE_FIELD_NUMBER: _ClassVar[int]
    GPU_PROFILE_FIELD_NUMBER: _ClassVar[int]
    GPU_LAUNCHES_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    ts: int
    kind: FactKind
    process: ProcessRef
    summary: str
    exec: ExecFact
    connect: Connect
    egress: Egress
    tunnel: Tunnel
    miner: MinerFact
    internal_scan: InternalScanFact
    gpu_open: GpuOpen
    gpu_compute: GpuComputeFact
    gpu_profile: GpuProfileFact
    gpu_launches: GpuLaunchesFact
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ts: _Optional[int] = ..., kind: _Optional[_Union[FactKind, str]] = ..., process: _Optional[_Union[ProcessRef, _Mapping]] = ..., summary: _Optional[str] = ..., exec: _Optional[_Union[ExecFact, _Mapping]] = ..., connect: _Optional[_Union[Connect, _Mapping]] = ..., egress: _Optional[_Union[Egress, _Mapping]] = ..., tunnel: _Optional[_Union[Tunnel, _Mapping]] = ..., miner: _Optional[_Union[MinerFact, _Mapping]] = ..., internal_scan: _Optional[_Union[InternalScanFact, _Mapping]] = ..., gpu_open: _Optional[_Union[GpuOpen, _Mapping]] = ..., gpu_compute: _Optional[_Union[GpuComputeFact, _Mapping]] = ..., gpu_profile: _Optional[_Union[GpuProfileFact, _Mapping]] = ..., gpu_launches: _Optional[_Union[GpuLaunchesFact, _Mapping]] = ...) -> None: ...

class AlertStep(_message.Message):
    __slots__ = ("fact", "time", "summary", "exec_id", "fields_json", "detail")
    FACT_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_JSON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    fact: str
    time: _timestamp_pb2.Timestamp
    summary: str
    exec_id: str
    fields_json: str
    detail: Fact
    def __init__(self, fact: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., summary: _Optional[str] = ..., exec_id: _Optional[str] = ..., fields_json: _Optional[str] = ..., detail: _Optional[_Union[Fact, _Mapping]] = ...) -> None: ...

class AlertProcess(_message.Message):
    __slots__ = ("process", "ancestors")
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    ANCESTORS_FIELD_NUMBER: _ClassVar[int]
    process: Process
    ancestors: _containers.RepeatedCompositeFieldContainer[ProcessRef]
    def __init__(self, process: _Optional[_Union[Process, _Mapping]] = ..., ancestors: _Optional[_Iterable[_Union[ProcessRef, _Mapping]]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("cursor", "rule_id", "severity", "title", "description", "tags", "time", "scope", "scope_key", "steps", "processes", "id", "incident_id", "ts")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_KEY_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    cursor: int
    rule_id: str
    severity: Severity
    title: str
    description: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    time: _timestamp_pb2.Timestamp
    scope: str
    scope_key: str
    steps: _containers.RepeatedCompositeFieldContainer[AlertStep]
    processes: _containers.RepeatedCompositeFieldContainer[AlertProcess]
    id: str
    incident_id: str
    ts: int
    def __init__(self, cursor: _Optional[int] = ..., rule_id: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., title: _Optional[str] = ..., description: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scope: _Optional[str] = ..., scope_key: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[AlertStep, _Mapping]]] = ..., processes: _Optional[_Iterable[_Union[AlertProcess, _Mapping]]] = ..., id: _Optional[str] = ..., incident_id: _Optional[str] = ..., ts: _Optional[int] = ...) -> None: ...

class Incident(_message.Message):
    __slots__ = ("id", "cursor", "first_seen", "last_seen", "severity", "summary", "rule_ids", "scope_keys", "alerts", "alerts_total", "processes", "tunnels", "gpu_compute", "connections", "first_ts", "last_ts", "host")
    ID_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    RULE_IDS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_KEYS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    TUNNELS_FIELD_NUMBER: _ClassVar[int]
    GPU_COMPUTE_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TS_FIELD_NUMBER: _ClassVar[int]
    LAST_TS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    id: str
    cursor: int
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    severity: Severity
    summary: str
    rule_ids: _containers.RepeatedScalarFieldContainer[str]
    scope_keys: _containers.RepeatedScalarFieldContainer[str]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    alerts_total: int
    processes: _containers.RepeatedCompositeFieldContainer[AlertProcess]
    tunnels: _containers.RepeatedCompositeFieldContainer[Fact]
    gpu_compute: _containers.RepeatedCompositeFieldContainer[Fact]
    connections: _containers.RepeatedCompositeFieldContainer[Fact]
    first_ts: int
    last_ts: int
    host: Host
    def __init__(self, id: _Optional[str] = ..., cursor: _Optional[int] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., severity: _Optional[_Union[Severity, str]] = ..., summary: _Optional[str] = ..., rule_ids: _Optional[_Iterable[str]] = ..., scope_keys: _Optional[_Iterable[str]] = ..., alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., alerts_total: _Optional[int] = ..., processes: _Optional[_Iterable[_Union[AlertProcess, _Mapping]]] = ..., tunnels: _Optional[_Iterable[_Union[Fact, _Mapping]]] = ..., gpu_compute: _Optional[_Iterable[_Union[Fact, _Mapping]]] = ..., connections: _Optional[_Iterable[_Union[Fact, _Mapping]]] = ..., first_ts: _Optional[int] = ..., last_ts: _Optional[int] = ..., host: _Optional[_Union[Host, _Mapping]] = ...) -> None: ...

class ProcessFilter(_message.Message):
    __slots__ = ("exec_id", "binary", "ancestor_exec_id")
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    BINARY_FIELD_NUMBER: _ClassVar[int]
    ANCESTOR_EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    exec_id: str
    binary: str
    ancestor_exec_id: str
    def __init__(self, exec_id: _Optional[str] = ..., binary: _Optional[str] = ..., ancestor_exec_id: _Optional[str] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("events", "alerts", "event_kinds", "rule_ids", "min_severity", "process", "cgroup_ids", "since_cursor", "incidents", "facts", "fact_kinds")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    EVENT_KINDS_FIELD_NUMBER: _ClassVar[int]
    RULE_IDS_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    CGROUP_IDS_FIELD_NUMBER: _ClassVar[int]
    SINCE_CURSOR_FIELD_NUMBER: _ClassVar[int]
    INCIDENTS_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    FACT_KINDS_FIELD_NUMBER: _ClassVar[int]
    events: bool
    alerts: bool
    event_kinds: _containers.RepeatedScalarFieldContainer[EventKind]
    rule_ids: _containers.RepeatedScalarFieldContainer[str]
    min_severity: Severity
    process: ProcessFilter
    cgroup_ids: _containers.RepeatedScalarFieldContainer[int]
    since_cursor: int
    incidents: bool
    facts: bool
    fact_kinds: _containers.RepeatedScalarFieldContainer[FactKind]
    def __init__(self, events: _Optional[bool] = ..., alerts: _Optional[bool] = ..., event_kinds: _Optional[_Iterable[_Union[EventKind, str]]] = ..., rule_ids: _Optional[_Iterable[str]] = ..., min_severity: _Optional[_Union[Severity, str]] = ..., process: _Optional[_Union[ProcessFilter, _Mapping]] = ..., cgroup_ids: _Optional[_Iterable[int]] = ..., since_cursor: _Optional[int] = ..., incidents: _Optional[bool] = ..., facts: _Optional[bool] = ..., fact_kinds: _Optional[_Iterable[_Union[FactKind, str]]] = ...) -> None: ...

class Gap(_message.Message):
    __slots__ = ("missed_events", "missed_alerts", "resume_cursor", "reason", "missed_sensor_gaps", "missed_incidents", "missed_facts")
    MISSED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    MISSED_ALERTS_FIELD_NUMBER: _ClassVar[int]
    RESUME_CURSOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MISSED_SENSOR_GAPS_FIELD_NUMBER: _ClassVar[int]
    MISSED_INCIDENTS_FIELD_NUMBER: _ClassVar[int]
    MISSED_FACTS_FIELD_NUMBER: _ClassVar[int]
    missed_events: int
    missed_alerts: int
    resume_cursor: int
    reason: str
    missed_sensor_gaps: int
    missed_incidents: int
    missed_facts: int
    def __init__(self, missed_events: _Optional[int] = ..., missed_alerts: _Optional[int] = ..., resume_cursor: _Optional[int] = ..., reason: _Optional[str] = ..., missed_sensor_gaps: _Optional[int] = ..., missed_incidents: _Optional[int] = ..., missed_facts: _Optional[int] = ...) -> None: ...

class SensorGap(_message.Message):
    __slots__ = ("cursor", "start", "end", "cause")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    cursor: int
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    cause: str
    def __init__(self, cursor: _Optional[int] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cause: _Optional[str] = ...) -> None: ...

class Subscribed(_message.Message):
    __slots__ = ("journal_last_cursor", "replay_after_cursor", "note")
    JOURNAL_LAST_CURSOR_FIELD_NUMBER: _ClassVar[int]
    REPLAY_AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    journal_last_cursor: int
    replay_after_cursor: int
    note: str
    def __init__(self, journal_last_cursor: _Optional[int] = ..., replay_after_cursor: _Optional[int] = ..., note: _Optional[str] = ...) -> None: ...

class Events(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class Facts(_message.Message):
    __slots__ = ("facts",)
    FACTS_FIELD_NUMBER: _ClassVar[int]
    facts: _containers.RepeatedCompositeFieldContainer[Fact]
    def __init__(self, facts: _Optional[_Iterable[_Union[Fact, _Mapping]]] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("events", "alert", "gap", "sensor_gap", "subscribed", "incident", "facts")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ALERT_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    SENSOR_GAP_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    events: Events
    alert: Alert
    gap: Gap
    sensor_gap: SensorGap
    subscribed: Subscribed
    incident: Incident
    facts: Facts
    def __init__(self, events: _Optional[_Union[Events, _Mapping]] = ..., alert: _Optional[_Union[Alert, _Mapping]] = ..., gap: _Optional[_Union[Gap, _Mapping]] = ..., sensor_gap: _Optional[_Union[SensorGap, _Mapping]] = ..., subscribed: _Optional[_Union[Subscribed, _Mapping]] = ..., incident: _Optional[_Union[Incident, _Mapping]] = ..., facts: _Optional[_Union[Facts, _Mapping]] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("type", "host", "event", "fact", "alert", "incident", "sensor_gap", "gap", "subscribed")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    FACT_FIELD_NUMBER: _ClassVar[int]
    ALERT_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_FIELD_NUMBER: _ClassVar[int]
    SENSOR_GAP_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    type: str
    host: Host
    event: Event
    fact: Fact
    alert: Alert
    incident: Incident
    sensor_gap: SensorGap
    gap: Gap
    subscribed: Subscribed
    def __init__(self, type: _Optional[str] = ..., host: _Optional[_Union[Host, _Mapping]] = ..., event: _Optional[_Union[Event, _Mapping]] = ..., fact: _Optional[_Union[Fact, _Mapping]] = ..., alert: _Optional[_Union[Alert, _Mapping]] = ..., incident: _Optional[_Union[Incident, _Mapping]] = ..., sensor_gap: _Optional[_Union[SensorGap, _Mapping]] = ..., gap: _Optional[_Union[Gap, _Mapping]] = ..., subscribed: _Optional[_Union[Subscribed, _Mapping]] = ...) -> None: ...

class ListIncidentsRequest(_message.Message):
    __slots__ = ("page_size", "after_cursor", "min_severity", "since", "until", "id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    after_cursor: int
    min_severity: Severity
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    id: str
    def __init__(self, page_size: _Optional[int] = ..., after_cursor: _Optional[int] = ..., min_severity: _Optional[_Union[Severity, str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., id: _Optional[str] = ...) -> None: ...

class ListIncidentsResponse(_message.Message):
    __slots__ = ("incidents", "next_cursor")
    INCIDENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    incidents: _containers.RepeatedCompositeFieldContainer[Incident]
    next_cursor: int
    def __init__(self, incidents: _Optional[_Iterable[_Union[Incident, _Mapping]]] = ..., next_cursor: _Optional[int] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("page_size", "after_cursor", "rule_ids", "min_severity", "since", "until")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    RULE_IDS_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    after_cursor: int
    rule_ids: _containers.RepeatedScalarFieldContainer[str]
    min_severity: Severity
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    def __init__(self, page_size: _Optional[int] = ..., after_cursor: _Optional[int] = ..., rule_ids: _Optional[_Iterable[str]] = ..., min_severity: _Optional[_Union[Severity, str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts", "next_cursor", "sensor_gaps")
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    SENSOR_GAPS_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    next_cursor: int
    sensor_gaps: _containers.RepeatedCompositeFieldContainer[SensorGap]
    def __init__(self, alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., next_cursor: _Optional[int] = ..., sensor_gaps: _Optional[_Iterable[_Union[SensorGap, _Mapping]]] = ...) -> None: ...

class GetProcessRequest(_message.Message):
    __slots__ = ("exec_id", "pid")
    EXEC_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    exec_id: str
    pid: int
    def __init__(self, exec_id: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class GpuSessionSummary(_message.Message):
    __slots__ = ("devices", "compute", "first_compute", "channels", "cuda_boost", "failed_allocations", "launch_watch", "launch_watch_why", "launches", "launches_per_s", "distinct_kernels")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    FIRST_COMPUTE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CUDA_BOOST_FIELD_NUMBER: _ClassVar[int]
    FAILED_ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    LAUNCH_WATCH_FIELD_NUMBER: _ClassVar[int]
    LAUNCH_WATCH_WHY_FIELD_NUMBER: _ClassVar[int]
    LAUNCHES_FIELD_NUMBER: _ClassVar[int]
    LAUNCHES_PER_S_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_KERNELS_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedScalarFieldContainer[str]
    compute: bool
    first_compute: _timestamp_pb2.Timestamp
    channels: _containers.RepeatedScalarFieldContainer[str]
    cuda_boost: bool
    failed_allocations: int
    launch_watch: str
    launch_watch_why: str
    launches: int
    launches_per_s: int
    distinct_kernels: int
    def __init__(self, devices: _Optional[_Iterable[str]] = ..., compute: _Optional[bool] = ..., first_compute: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., channels: _Optional[_Iterable[str]] = ..., cuda_boost: _Optional[bool] = ..., failed_allocations: _Optional[int] = ..., launch_watch: _Optional[str] = ..., launch_watch_why: _Optional[str] = ..., launches: _Optional[int] = ..., launches_per_s: _Optional[int] = ..., distinct_kernels: _Optional[int] = ...) -> None: ...

class GetProcessResponse(_message.Message):
    __slots__ = ("process", "ancestors", "children", "gpu")
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    ANCESTORS_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    process: Process
    ancestors: _containers.RepeatedCompositeFieldContainer[Process]
    children: _containers.RepeatedCompositeFieldContainer[Process]
    gpu: GpuSessionSummary
    def __init__(self, process: _Optional[_Union[Process, _Mapping]] = ..., ancestors: _Optional[_Iterable[_Union[Process, _Mapping]]] = ..., children: _Optional[_Iterable[_Union[Process, _Mapping]]] = ..., gpu: _Optional[_Union[GpuSessionSummary, _Mapping]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DropCounter(_message.Message):
    __slots__ = ("hop", "what", "count")
    HOP_FIELD_NUMBER: _ClassVar[int]
    WHAT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    hop: str
    what: str
    count: int
    def __init__(self, hop: _Optional[str] = ..., what: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class RuleStatus(_message.Message):
    __slots__ = ("id", "severity", "alerts", "enabled", "source", "overridden_by", "suppressed", "suppressed_by_exception")
    class SuppressedByExceptionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OVERRIDDEN_BY_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_BY_EXCEPTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    severity: Severity
    alerts: int
    enabled: bool
    source: str
    overridden_by: _containers.RepeatedScalarFieldContainer[str]
    suppressed: int
    suppressed_by_exception: _containers.ScalarMap[str, int]
    def __init__(self, id: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., alerts: _Optional[int] = ..., enabled: _Optional[bool] = ..., source: _Optional[str] = ..., overridden_by: _Optional[_Iterable[str]] = ..., suppressed: _Optional[int] = ..., suppressed_by_exception: _Optional[_Mapping[str, int]] = ...) -> None: ...

class RuleSetStatus(_message.Message):
    __slots__ = ("rules", "files", "load_errors")
    RULES_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    LOAD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[RuleStatus]
    files: _containers.RepeatedScalarFieldContainer[str]
    load_errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rules: _Optional[_Iterable[_Union[RuleStatus, _Mapping]]] = ..., files: _Optional[_Iterable[str]] = ..., load_errors: _Optional[_Iterable[str]] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("started", "uptime_s", "kernel", "kernel_features", "events_by_kind", "drops", "rules", "subscribers", "journal_alerts", "last_cursor", "sensor_gaps", "incidents", "host", "config_file", "sinks", "launch_watches")
    class KernelFeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class EventsByKindEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class LaunchWatchesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    STARTED_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FEATURES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_BY_KIND_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_ALERTS_FIELD_NUMBER: _ClassVar[int]
    LAST_CURSOR_FIELD_NUMBER: _ClassVar[int]
    SENSOR_GAPS_FIELD_NUMBER: _ClassVar[int]
    INCIDENTS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FILE_FIELD_NUMBER: _ClassVar[int]
    SINKS_FIELD_NUMBER: _ClassVar[int]
    LAUNCH_WATCHES_FIELD_NUMBER: _ClassVar[int]
    started: _timestamp_pb2.Timestamp
    uptime_s: float
    kernel: str
    kernel_features: _containers.ScalarMap[str, str]
    events_by_kind: _containers.ScalarMap[str, int]
    drops: _containers.RepeatedCompositeFieldContainer[DropCounter]
    rules: RuleSetStatus
    subscribers: int
    journal_alerts: int
    last_cursor: int
    sensor_gaps: int
    incidents: int
    host: Host
    config_file: str
    sinks: _containers.RepeatedCompositeFieldContainer[SinkStatus]
    launch_watches: _containers.ScalarMap[str, int]
    def __init__(self, started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., uptime_s: _Optional[float] = ..., kernel: _Optional[str] = ..., kernel_features: _Optional[_Mapping[str, str]] = ..., events_by_kind: _Optional[_Mapping[str, int]] = ..., drops: _Optional[_Iterable[_Union[DropCounter, _Mapping]]] = ..., rules: _Optional[_Union[RuleSetStatus, _Mapping]] = ..., subscribers: _Optional[int] = ..., journal_alerts: _Optional[int] = ..., last_cursor: _Optional[int] = ..., sensor_gaps: _Optional[int] = ..., incidents: _Optional[int] = ..., host: _Optional[_Union[Host, _Mapping]] = ..., config_file: _Optional[str] = ..., sinks: _Optional[_Iterable[_Union[SinkStatus, _Mapping]]] = ..., launch_watches: _Optional[_Mapping[str, int]] = ...) -> None: ...

class SinkStatus(_message.Message):
    __slots__ = ("name", "type", "target", "sent", "retried", "dropped", "failed", "queued", "behind", "cursor", "last_error", "up")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    RETRIED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    BEHIND_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    target: str
    sent: int
    retried: int
    dropped: int
    failed: int
    queued: int
    behind: int
    cursor: int
    last_error: str
    up: bool
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., target: _Optional[str] = ..., sent: _Optional[int] = ..., retried: _Optional[int] = ..., dropped: _Optional[int] = ..., failed: _Optional[int] = ..., queued: _Optional[int] = ..., behind: _Optional[int] = ..., cursor: _Optional[int] = ..., last_error: _Optional[str] = ..., up: _Optional[bool] = ...) -> None: ...
