/* SPDX-License-Identifier: GPL-2.0 */
/* Types and constants shared between agentd's BPF programs and their Rust loaders. */
#ifndef AGENTD_INTF_H
#define AGENTD_INTF_H

/* The syscall counter's state: one per loaded program. */
struct syscount_stats {
	unsigned long long syscalls;
};

/*
 * The scheduler (sched.bpf.c). The daemon writes one `sched_call` per cgroup (a call's
 * `calls/<n>`, a session's `agent` leaf) into the `calls` map, keyed by the cgroup's id
 * (its cgroupfs inode number), before the first task enters the cgroup (the call's clone3).
 * `vtime` belongs to the scheduler: the daemon writes 0 and never rewrites an entry.
 */
#define AGENTD_SCHED_SLOTS 64 /* sessions scheduled apart; slot 0: cgroups not in the map */
#define AGENTD_SCHED_MAX_CPUS 64
#define AGENTD_CLASS_BATCH 0
#define AGENTD_CLASS_LATENCY 1

struct sched_call {
	unsigned long long vtime;   /* the call's virtual time (scheduler-owned) */
	unsigned int slot;          /* the session's slot, 1..AGENTD_SCHED_SLOTS-1 */
	unsigned int cls;           /* AGENTD_CLASS_* */
	unsigned int call_weight;   /* the call's share within its session (cpu.weight scale) */
	unsigned int session_weight;/* the session's share among sessions */
};

/* Counters of the scheduler, in its .bss (read through the skeleton's mmap). */
struct sched_stats {
	unsigned long long enq_latency;   /* enqueued in a latency queue */
	unsigned long long enq_batch;     /* enqueued in a batch queue */
	unsigned long long enq_unknown;   /* of a cgroup not in the map (slot 0, batch) */
	unsigned long long direct_idle;   /* woke onto an idle CPU directly */
	unsigned long long demoted;       /* latency enqueues demoted to batch (ran full slices) */
	unsigned long long kicks;         /* batch CPUs preempted for a latency task */
	unsigned long long starve_guard;  /* batch served ahead of latency to bound its wait */
	unsigned long long dispatched;    /* tasks moved to a CPU from our queues */
};

/*
 * Per-call accounting (callacct.bpf.c): one `call_acct` per watched cgroup id in the
 * `acct` map; the daemon inserts it zeroed before the call's clone3 and reads and deletes it
 * when the call ends. Times in nanoseconds.
 */
struct call_acct {
	unsigned long long on_cpu_ns;      /* ran on a CPU */
	unsigned long long runq_wait_ns;   /* runnable, waiting for a CPU */
	unsigned long long off_cpu_ns;     /* blocked (sleeping, waiting for I/O) */
	unsigned long long runq_wait_max_ns;
	unsigned long long runs;           /* times switched onto a CPU */
	unsigned long long wakeups;
};

#endif /* AGENTD_INTF_H */
