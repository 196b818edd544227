#!/bin/sh
# Builds the recorder: tests/gpu_trace/build.sh [OUTPUT.so]  (gcc only; default: tests/gpu_trace/build/librecorder.so)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/build/librecorder.so}  # build/ is git-ignored
mkdir -p "$(dirname "$out")"
exec gcc -O2 -Wall -Wextra -Werror -U_FORTIFY_SOURCE -shared -fPIC -o "$out" "$here/recorder.c" -ldl -lpthread
