#!/usr/bin/env bash
# Records real CUDA programs' ioctl streams on a GPU machine, with tests/gpu_trace/recorder.c.
# Run from the repository root, with OUT set to an empty output folder:
#
#   OUT=/tmp/out tests/gpu_trace/run_on_gpu.sh
#
# It builds the recorder (gcc), records
#   init   a process that initialises CUDA (driver API through ctypes) and exits   (workloads/cuda_init.py)
#   smi    nvidia-smi -q
#   cupy   a CuPy RawKernel integer hashing loop, LOOP_SECONDS                      (workloads/cupy_hash.py)
#   torch  PyTorch: CUDA init, then bf16 matrix products, LOOP_SECONDS              (workloads/torch_matmul.py)
# and writes four files to $OUT:
#   env.txt          kernel, driver, /dev/nvidia*, Python packages, which libc symbols libcuda and
#                    libnvidia-ml bind to, BPF loading, each step's exit status and log sizes
#   traces.tar.gz    logs/<step>/trace.<pid> (+ the workloads' stdout/stderr), fixtures/*.yaml
#                    converted here with tests/gpu_trace/trace.py
#   summaries.json   `trace.py summary` of every log (what to compare with NVIDIA-ABI.md)
#   run.log          this script's output
# Every step is time-bounded and a failing step never stops the others. About 1 minute when all
# goes well; at most about 5 minutes (sum of the timeouts below).
#
# Environment: PYTHON (default python3: the one with torch and cupy), LOOP_SECONDS (default 10),
# KEEP_WORK=1 keeps the work folder in /tmp.
# GPUSENTRY_TRACE_FAKE_DRIVER=DIR (tests only, no GPU): each step replays a fixture through the
# fake driver mounted at DIR (sensor/fakegpu) instead of running its workload.

set -u -o pipefail
OUT=${OUT:?set OUT to the output folder}
mkdir -p "$OUT"
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
cd "$REPO" || exit 1
PY=${PYTHON:-python3}
LOOP=${LOOP_SECONDS:-10}
WORK=$(mktemp -d /tmp/gpusentry-trace.XXXXXX)
LOGS=$WORK/logs
mkdir -p "$LOGS" "$WORK/fixtures" "$WORK/ld"
ENV=$OUT/env.txt
: > "$ENV"
exec > >(tee -a "$OUT/run.log") 2>&1
TEE=$!
START=$(date +%s)

note() { printf '[%s +%ss] %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - START))" "$*"; }
section() { printf '\n== %s\n' "$*" >> "$ENV"; }
# envcmd TITLE SECONDS COMMAND...: the command's output into env.txt
envcmd() {
    local title=$1 limit=$2
    shift 2
    section "$title"
    printf '$ %s\n' "$*" >> "$ENV"
    timeout -k 2 "$limit" "$@" >> "$ENV" 2>&1
    printf '(exit %s)\n' "$?" >> "$ENV"
}
# envsh TITLE SECONDS 'shell code'
envsh() { local title=$1 limit=$2; envcmd "$title" "$limit" bash -c "$3"; }

note "gpusentry trace recording: repo $REPO, work dir $WORK, python $PY, loops ${LOOP}s"

# -- build ------------------------------------------------------------------------------------
LIB=$WORK/librecorder.so
note "build: gcc recorder.c -> $LIB; bpf_check.c"
if timeout 60 gcc -O2 -Wall -Wextra -Werror -U_FORTIFY_SOURCE -shared -fPIC -o "$LIB" "$HERE/recorder.c" -ldl -lpthread; then
    note "build: recorder ok"
else
    note "build: recorder FAILED (exit $?): nothing will be recorded"
    LIB=
fi
timeout 60 gcc -O2 -Wall -Wextra -Werror -o "$WORK/bpf_check" "$HERE/bpf_check.c" || note "build: bpf_check FAILED"

# -- the environment (quick) --------------------------------------------------------------------
note "env: kernel, driver, devices, packages"
envcmd "uname -r" 5 uname -r
envcmd "uname -a" 5 uname -a
envcmd "driver version (nvidia-smi)" 30 nvidia-smi --query-gpu=driver_version,name,pci.bus_id,compute_cap --format=csv,noheader
envcmd "/proc/driver/nvidia/version" 5 cat /proc/driver/nvidia/version
envsh "device nodes" 5 'ls -l /dev/nvidia* /dev/nvidia-caps 2>&1; cat /proc/devices | grep -i nvidia'
envcmd "nvidia-smi -L" 30 nvidia-smi -L
envsh "libc, gcc, python" 20 "ldd --version | head -1; gcc --version | head -1; $PY -VV"
envsh "python packages" 60 "$PY -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda)' 2>&1 | tail -1;
  $PY -c 'import cupy; print(\"cupy\", cupy.__version__)' 2>&1 | tail -1;
  $PY -c 'import yaml; print(\"pyyaml\", yaml.__version__)' 2>&1 | tail -1;
  $PY -c 'import bcc; print(\"bcc yes\")' 2>&1 | tail -1"
envsh "libcuda / libnvidia-ml: files and the libc symbols they import" 30 '
  for name in libcuda.so.1 libnvidia-ml.so.1; do
    path=$(ldconfig -p | awk -v n="$name" "\$1 == n {print \$NF; exit}")
    [ -z "$path" ] && path=$(ls /usr/local/nvidia/lib64/$name /usr/lib/x86_64-linux-gnu/$name 2>/dev/null | head -1)
    echo "$name -> ${path:-not found} $( [ -n "$path" ] && readlink -f "$path")"
    [ -n "$path" ] && nm -D --undefined-only "$path" 2>&1 |
      grep -E " (ioctl|open|open64|openat|openat64|__open_2|__open64_2|__openat_2|__openat64_2|close|mmap|mmap64|syscall|dup|dup2|dup3|fcntl|fcntl64|fopen|fopen64|__ioctl)(@.*)?$"
  done'

# -- recording ----------------------------------------------------------------------------------
# record NAME SECONDS BINDINGS COMMAND...: runs COMMAND with the recorder preloaded, logs in
# $LOGS/NAME; BINDINGS=1 adds LD_DEBUG=bindings (small programs only: PyTorch binds millions)
record() {
    local name=$1 limit=$2 bindings=$3
    shift 3
    local dir=$LOGS/$name
    mkdir -p "$dir"
    if [ -z "$LIB" ]; then
        note "record $name: skipped (no recorder)"
        echo "$name: skipped (no recorder)" >> "$WORK/steps.txt"
        return
    fi
    if [ -n "${GPUSENTRY_TRACE_FAKE_DRIVER:-}" ]; then
        local fixture
        case $name in
            init) fixture=hopper-bringup ;; smi) fixture=query-only ;; cupy) fixture=compute-loop ;;
            *) fixture=decoder-edges ;;
        esac
        set -- "$PY" -m sensor.fakegpu.isolate "$GPUSENTRY_TRACE_FAKE_DRIVER" -- \
            "$PY" -m sensor.fakegpu.client "tests/fixtures/gpu/$fixture.yaml"
    fi
    note "record $name: $* (timeout ${limit}s)"
    local t0 rc files bytes debug=()
    [ "$bindings" = 1 ] && debug=(LD_DEBUG=bindings LD_DEBUG_OUTPUT="$WORK/ld/$name")
    t0=$(date +%s%N)
    timeout -k 5 "$limit" env LD_PRELOAD="$LIB" GPUSENTRY_TRACE="$dir/trace.%p" "${debug[@]}" "$@" \
        > "$dir/stdout.txt" 2> "$dir/stderr.txt"
    rc=$?
    files=$(find "$dir" -name 'trace.*' | wc -l)
    bytes=$(cat "$dir"/trace.* 2>/dev/null | wc -c)
    note "record $name: exit $rc after $((($(date +%s%N) - t0) / 1000000)) ms; $files trace files, $bytes bytes"
    tail -n 2 "$dir/stdout.txt" | cut -c1-400
    [ "$rc" -ne 0 ] && tail -n 5 "$dir/stderr.txt" | cut -c1-400
    echo "$name: exit $rc, $files trace files, $bytes bytes: $*" >> "$WORK/steps.txt"
    # which libc symbols libcuda / libnvidia-ml were bound to (ours: librecorder.so), from LD_DEBUG
    cat "$WORK/ld/$name".* 2>/dev/null | grep -E "binding file [^ ]*(libcuda|libnvidia-ml)[^ ]* .*normal symbol \`(ioctl|__ioctl|open|open64|openat|openat64|__open_2|__open64_2|__openat_2|__openat64_2|close|mmap|mmap64|syscall|dup|dup2|dup3|fcntl|fcntl64|fopen|fopen64)'" |
        sed -E 's/^ *[0-9]+: *//' | sort | uniq -c > "$dir/bindings.txt"
    rm -f "$WORK/ld/$name".*
}

record init 45 1 "$PY" "$HERE/workloads/cuda_init.py"
record smi 45 1 nvidia-smi -q
record cupy 80 0 "$PY" "$HERE/workloads/cupy_hash.py" --seconds "$LOOP"
record torch 100 0 "$PY" "$HERE/workloads/torch_matmul.py" --seconds "$LOOP"

section "steps"
cat "$WORK/steps.txt" >> "$ENV" 2>/dev/null
section "what libcuda / libnvidia-ml bound to (LD_DEBUG=bindings; count, binding)"
for name in init smi; do
    echo "-- $name" >> "$ENV"
    cut -c1-300 "$LOGS/$name/bindings.txt" >> "$ENV" 2>/dev/null
done

# -- BPF --------------------------------------------------------------------------------------
note "env: BPF"
if [ -x "$WORK/bpf_check" ]; then envcmd "bpf(BPF_PROG_LOAD) of mov r0,0; exit" 20 "$WORK/bpf_check"; fi
envsh "BPF settings" 20 'cat /proc/sys/kernel/unprivileged_bpf_disabled /sys/kernel/security/lockdown 2>&1;
  ls -l /sys/kernel/btf/vmlinux 2>&1; t=/sys/kernel/tracing; [ -d $t/events ] || t=/sys/kernel/debug/tracing;
  ls -d $t/events/syscalls/sys_enter_ioctl 2>&1; grep -m1 -w -E "__x64_sys_ioctl|__do_sys_ioctl" $t/available_filter_functions 2>&1'

# -- summaries, fixtures, the archive ---------------------------------------------------------
note "summaries and fixtures (tests/gpu_trace/trace.py)"
mapfile -t ALL < <(find "$LOGS" -name 'trace.*' -type f | sort)
if [ "${#ALL[@]}" -gt 0 ]; then
    timeout 120 "$PY" -m tests.gpu_trace.trace summary --allow-truncated --order 1500 "${ALL[@]}" > "$OUT/summaries.json" \
        2> "$WORK/summary.err" || { note "summary FAILED"; cat "$WORK/summary.err"; }
else
    note "no trace files at all: the recorder saw no NVIDIA device (see env.txt)"
fi
DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
for name in init smi cupy torch; do
    mapfile -t LOGFILES < <(find "$LOGS/$name" -name 'trace.*' -type f | sort)
    [ "${#LOGFILES[@]}" -gt 0 ] || continue
    timeout 120 "$PY" -m tests.gpu_trace.trace convert --allow-truncated "${LOGFILES[@]}" --name "h100-$name" \
        --arch hopper --driver "${DRIVER:-unknown}" \
        --source "recorded on $(hostname) ($(uname -r), driver ${DRIVER:-?}) by tests/gpu_trace/run_on_gpu.sh, step $name" \
        --out "$WORK/fixtures/h100-$name.yaml" || note "convert $name FAILED"
done
cp "$ENV" "$WORK/env.txt" 2>/dev/null
tar -C "$WORK" -cf - logs fixtures env.txt | gzip -9 > "$OUT/traces.tar.gz"
size=$(stat -c %s "$OUT/traces.tar.gz")
if [ "$size" -gt 15000000 ]; then  # the device tool brings back files of at most 16 MiB
    note "traces.tar.gz is $size bytes: too big to bring back; keeping init, smi, cupy and fixtures only"
    tar -C "$WORK" -cf - logs/init logs/smi logs/cupy fixtures env.txt | gzip -9 > "$OUT/traces.tar.gz"
    size=$(stat -c %s "$OUT/traces.tar.gz")
fi
section "output"
ls -l "$OUT" >> "$ENV"
du -a "$LOGS" | sort -n | tail -n 20 >> "$ENV"
note "done: traces.tar.gz $size bytes; $(ls "$OUT" | tr '\n' ' ')"
[ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"  # all of it is in traces.tar.gz (KEEP_WORK=1 keeps it)
exec 1>&- 2>&-
wait "$TEE" 2>/dev/null  # run.log complete before the files are collected
exit 0
