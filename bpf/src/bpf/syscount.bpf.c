// SPDX-License-Identifier: GPL-2.0
/*
 * Counts the system calls entered by one process (thread group). The smallest program that
 * proves the toolchain end to end: clang-built CO-RE object, libbpf-rs skeleton, read-only
 * configuration (.rodata), a result in .bss read through the skeleton's mmap.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "intf.h"

const volatile __u32 target_tgid = 0;

struct syscount_stats stats = {};

SEC("raw_tp/sys_enter")
int count_sys_enter(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (tgid == target_tgid)
		__sync_fetch_and_add(&stats.syscalls, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
