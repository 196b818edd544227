/* Can this kernel load BPF programs? The smallest program, `mov r0, 0; exit`, loaded as a
 * socket filter, a kprobe and a tracepoint program, and a ring buffer map created; one line
 * each: "<what>: ok fd=N" or "<what>: FAILED errno=E (text)" plus the verifier's log.
 * No kernel headers needed (constants and the bpf_attr layout are spelled out below).
 *
 *   gcc -O2 -Wall -Wextra -Werror -o bpf_check bpf_check.c && ./bpf_check */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_bpf
#define SYS_bpf 321 /* x86-64 */
#endif
#define BPF_MAP_CREATE 0
#define BPF_PROG_LOAD 5
#define BPF_MAP_TYPE_RINGBUF 27

struct insn {
    uint8_t code;
    uint8_t regs; /* dst:4, src:4 */
    int16_t off;
    int32_t imm;
};

/* union bpf_attr, BPF_PROG_LOAD part: prog_type@0 insn_cnt@4 insns@8 license@16 log_level@24
 * log_size@28 log_buf@32 kern_version@40 prog_flags@44; the rest zero */
struct prog_load {
    uint32_t prog_type, insn_cnt;
    uint64_t insns, license;
    uint32_t log_level, log_size;
    uint64_t log_buf;
    uint32_t kern_version, prog_flags;
    uint8_t rest[80];
};

/* BPF_MAP_CREATE part: map_type@0 key_size@4 value_size@8 max_entries@12 */
struct map_create {
    uint32_t map_type, key_size, value_size, max_entries;
    uint8_t rest[112];
};

static int load(const char *what, uint32_t type) {
    static const struct insn prog[2] = {
        {0xb7, 0, 0, 0}, /* BPF_ALU64 | BPF_MOV | BPF_K: r0 = 0 */
        {0x95, 0, 0, 0}, /* BPF_JMP | BPF_EXIT */
    };
    static char log[4096];
    struct prog_load attr;
    memset(&attr, 0, sizeof attr);
    memset(log, 0, sizeof log);
    attr.prog_type = type;
    attr.insn_cnt = 2;
    attr.insns = (uint64_t)(uintptr_t)prog;
    attr.license = (uint64_t)(uintptr_t) "GPL";
    attr.log_level = 1;
    attr.log_size = sizeof log;
    attr.log_buf = (uint64_t)(uintptr_t)log;
    long fd = syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr);
    if (fd < 0) {
        int err = errno;
        printf("%s: FAILED errno=%d (%s)%s%s\n", what, err, strerror(err), log[0] ? " verifier: " : "", log);
        return 1;
    }
    printf("%s: ok fd=%ld\n", what, fd);
    close((int)fd);
    return 0;
}

int main(void) {
    int failed = 0;
    failed += load("prog socket_filter", 1);
    failed += load("prog kprobe", 2);
    failed += load("prog tracepoint", 5);
    struct map_create map;
    memset(&map, 0, sizeof map);
    map.map_type = BPF_MAP_TYPE_RINGBUF;
    map.max_entries = 1 << 16;
    long fd = syscall(SYS_bpf, BPF_MAP_CREATE, &map, sizeof map);
    if (fd < 0) {
        printf("map ringbuf: FAILED errno=%d (%s)\n", errno, strerror(errno));
        failed++;
    } else {
        printf("map ringbuf: ok fd=%ld\n", fd);
        close((int)fd);
    }
    return failed ? 1 : 0;
}
