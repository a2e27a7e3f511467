/* SPDX-License-Identifier: GPL-2.0 */
/* Types and constants shared between agentd's BPF programs and their Rust loaders. */
#ifndef AGENTD_INTF_H
#define AGENTD_INTF_H

/* The syscall counter's state: one per loaded program. */
struct syscount_stats {
	unsigned long long syscalls;
};

#endif /* AGENTD_INTF_H */
