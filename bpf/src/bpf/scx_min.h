/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The few kernel types and sched_ext kfuncs agentd's BPF programs use, written by hand for
 * agentd (not a generated vmlinux.h, not a copy of another project's headers).
 *
 * Why hand-written: the build host's kernel is not the target's, and a full vmlinux.h of the
 * 7.3 kernel is 135k lines we do not need. Every struct here is a CO-RE shadow
 * (preserve_access_index): it names only the members we read, and libbpf relocates each
 * access against the running kernel's BTF at load time, so offsets never come from this
 * file. The struct_ops table (`struct sched_ext_ops`) likewise lists only the callbacks and
 * fields agentd sets; libbpf matches members by name against the kernel's and refuses the
 * load when one is missing. Kfunc prototypes were checked against the BTF of the VM's 7.3
 * kernel (`bpftool btf dump file vmlinux`, see docs/scheduler.md); a kfunc the running
 * kernel lacks fails the load with its name, which `agentd doctor` reports.
 */
#ifndef AGENTD_SCX_MIN_H
#define AGENTD_SCX_MIN_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#define AGENTD_CORE __attribute__((preserve_access_index))

struct kernfs_node {
	__u64 id;
} AGENTD_CORE;

struct cgroup {
	struct kernfs_node *kn;
} AGENTD_CORE;

struct css_set {
	struct cgroup *dfl_cgrp;
} AGENTD_CORE;

struct sched_ext_entity {
	__u64 slice;
	__u64 dsq_vtime;
} AGENTD_CORE;

struct task_struct {
	int pid;
	struct css_set *cgroups;
	struct sched_ext_entity scx;
} AGENTD_CORE;

struct scx_init_task_args;
struct scx_exit_task_args;

struct scx_exit_info {
	__s64 exit_code;
	const char *reason;
	char *msg;
} AGENTD_CORE;

/* The ops table: only the members agentd fills (matched by name by libbpf). */
struct sched_ext_ops {
	__s32 (*select_cpu)(struct task_struct *p, __s32 prev_cpu, __u64 wake_flags);
	void (*enqueue)(struct task_struct *p, __u64 enq_flags);
	void (*dispatch)(__s32 cpu, struct task_struct *prev);
	void (*running)(struct task_struct *p);
	void (*stopping)(struct task_struct *p, _Bool runnable);
	__s32 (*init)(void);
	void (*exit)(struct scx_exit_info *info);
	__u64 flags;
	__u32 timeout_ms;
	char name[128];
};

/* Built-in dispatch queue ids (enum scx_dsq_id_flags; stable since sched_ext's merge). */
#define SCX_DSQ_FLAG_BUILTIN (1ULL << 63)
#define SCX_DSQ_LOCAL (SCX_DSQ_FLAG_BUILTIN | 2)
/* enum scx_kick_flags */
#define SCX_KICK_PREEMPT 2
/* enum scx_enq_flags */
#define SCX_ENQ_WAKEUP 1ULL

extern void scx_bpf_dsq_insert(struct task_struct *p, __u64 dsq_id, __u64 slice,
			       __u64 enq_flags) __ksym;
extern void scx_bpf_dsq_insert_vtime(struct task_struct *p, __u64 dsq_id, __u64 slice,
				     __u64 vtime, __u64 enq_flags) __ksym;
extern _Bool scx_bpf_dsq_move_to_local(__u64 dsq_id) __ksym;
extern __s32 scx_bpf_create_dsq(__u64 dsq_id, __s32 node) __ksym;
extern __s32 scx_bpf_dsq_nr_queued(__u64 dsq_id) __ksym;
extern __s32 scx_bpf_select_cpu_dfl(struct task_struct *p, __s32 prev_cpu, __u64 wake_flags,
				    _Bool *is_idle) __ksym;
extern void scx_bpf_kick_cpu(__s32 cpu, __u64 flags) __ksym;

/* A struct_ops callback: the kernel passes its arguments as a u64 array (BPF_PROG). */
#define AGENTD_OPS(name, args...) SEC("struct_ops/" #name) BPF_PROG(name, ##args)
/* A callback that may sleep (ops.init: creating dispatch queues allocates). */
#define AGENTD_OPS_SLEEPABLE(name, args...) SEC("struct_ops.s/" #name) BPF_PROG(name, ##args)

#endif /* AGENTD_SCX_MIN_H */
