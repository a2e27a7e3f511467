// SPDX-License-Identifier: GPL-2.0
/*
 * Per-call CPU accounting, whatever scheduler runs (sched_ext or the fair class): for the
 * tasks of each watched cgroup id (a call's `calls/<n>`), time on a CPU, time runnable but
 * waiting for one (run-queue wait, the figure a scheduler changes) and time blocked.
 * Scheduler tracepoints (tp_btf: sched_wakeup, sched_wakeup_new, sched_switch) keep one
 * timestamp and state per task in task storage; the daemon inserts a zeroed `call_acct`
 * before the call's clone3 and reads it when the call ends.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "scx_min.h"
#include "intf.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct call_acct);
} acct SEC(".maps");

#define ST_NONE 0
#define ST_QUEUED 1
#define ST_RUNNING 2
#define ST_BLOCKED 3

struct task_acct {
	__u64 ts;
	__u32 state;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_acct);
} tstate SEC(".maps");

static __always_inline struct call_acct *watched(struct task_struct *p)
{
	__u64 cgid = BPF_CORE_READ(p, cgroups, dfl_cgrp, kn, id);

	return bpf_map_lookup_elem(&acct, &cgid);
}

static __always_inline void woke(struct task_struct *p)
{
	struct call_acct *a = watched(p);
	struct task_acct *t;
	__u64 now;

	if (!a)
		return;
	t = bpf_task_storage_get(&tstate, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!t)
		return;
	now = bpf_ktime_get_ns();
	if (t->state == ST_BLOCKED)
		__sync_fetch_and_add(&a->off_cpu_ns, now - t->ts);
	if (t->state != ST_RUNNING) {
		t->state = ST_QUEUED;
		t->ts = now;
	}
	__sync_fetch_and_add(&a->wakeups, 1);
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(acct_wakeup, struct task_struct *p)
{
	woke(p);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(acct_wakeup_new, struct task_struct *p)
{
	woke(p);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(acct_switch, _Bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	__u64 now = bpf_ktime_get_ns();
	struct call_acct *a = watched(prev);
	struct task_acct *t;

	if (a) {
		t = bpf_task_storage_get(&tstate, prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (t) {
			if (t->state == ST_RUNNING)
				__sync_fetch_and_add(&a->on_cpu_ns, now - t->ts);
			/* Preempted (still runnable): back in the run queue; else it blocked. */
			t->state = (preempt || prev_state == 0) ? ST_QUEUED : ST_BLOCKED;
			t->ts = now;
		}
	}
	a = watched(next);
	if (a) {
		t = bpf_task_storage_get(&tstate, next, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (t) {
			if (t->state == ST_QUEUED) {
				__u64 w = now - t->ts;

				__sync_fetch_and_add(&a->runq_wait_ns, w);
				if (w > a->runq_wait_max_ns)
					a->runq_wait_max_ns = w;
			}
			t->state = ST_RUNNING;
			t->ts = now;
			__sync_fetch_and_add(&a->runs, 1);
		}
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
