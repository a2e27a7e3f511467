// SPDX-License-Identifier: GPL-2.0
/*
 * agentd's tool-call-aware sched_ext scheduler, in partial mode (SCX_OPS_SWITCH_PARTIAL,
 * set by the loader from the kernel's BTF): only tasks whose policy is SCHED_EXT (session
 * tasks: the sandbox sets it before each agent and call exec) are scheduled here; the host's
 * own tasks stay in the fair class. Design: docs/scheduler.md.
 *
 * - Classes by cgroup id: the daemon writes a `sched_call` per cgroup before its first task
 *   starts; latency (the agent leaf, interactive calls) is served before batch (builds,
 *   tests), and a latency enqueue preempts a CPU running batch work.
 * - Two-level fairness by weight: one pair of dispatch queues (latency, batch) per session
 *   slot, ordered by the call's virtual time (charged used_ns * 100 / call_weight), and
 *   dispatch takes the session with the lowest session virtual time (charged used_ns * 100
 *   / session_weight). A woken call or session banks at most one slice of credit.
 * - Demotion: a latency task that ran its whole slice `demote_after` times in a row is
 *   queued as batch until it blocks on its own.
 * - Starvation guard: after `lat_burst` latency dispatches in a row on a CPU with batch work
 *   waiting, one batch task goes first (the sched_ext watchdog ejects a scheduler that
 *   leaves a task runnable for 30 s; this keeps batch far from that).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "scx_min.h"
#include "intf.h"

/* Set by the loader before load. */
const volatile __u64 slice_latency_ns = 3000000;
const volatile __u64 slice_batch_ns = 20000000;
const volatile __u32 demote_after = 4;
const volatile __u32 lat_burst = 8;
const volatile __u32 nr_cpus = 1;

struct sched_stats stats = {};
/* Why the kernel ended the scheduler (ops.exit), for the daemon and doctor. */
__s64 exit_code = 0;
char exit_reason[128] = {};
__u32 exited = 0;

/* The session level's virtual clock: the vtime of the session last dispatched. */
__u64 vnow = 0;
/* Slots below this have been seen (bounds dispatch's scan). */
__u32 nr_slots = 1;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct sched_call);
} calls SEC(".maps");

struct slot_state {
	__u64 vtime;     /* the session's virtual time */
	__u64 call_vnow; /* the vtime of its call last dispatched */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, AGENTD_SCHED_SLOTS);
	__type(key, __u32);
	__type(value, struct slot_state);
} slots SEC(".maps");

/* Cgroups not in `calls` share this entry (slot 0, batch, weight 100). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sched_call);
} unknown SEC(".maps");

struct task_ctx {
	__u64 cgid;       /* the cgroup the task was last enqueued from */
	__u64 started_ns; /* when it last got a CPU */
	__u32 full_runs;  /* whole slices run in a row */
	__u32 latency;    /* queued as latency (after demotion) */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_ctx);
} tasks SEC(".maps");

struct cpu_ctx {
	__u32 running_batch; /* the CPU runs one of our batch tasks */
	__u32 lat_streak;    /* latency dispatches in a row while batch waited */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_ctx);
} cpus SEC(".maps");

/* Whether each CPU runs batch work, readable from any CPU (kick target search); a map so
 * every index is bounds-checked by the lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, AGENTD_SCHED_MAX_CPUS);
	__type(key, __u32);
	__type(value, __u32);
} cpu_batch SEC(".maps");

static __always_inline void set_cpu_batch(__s32 cpu, __u32 v)
{
	__u32 k = cpu;
	__u32 *b = bpf_map_lookup_elem(&cpu_batch, &k);

	if (b)
		*b = v;
}

static __always_inline __u64 dsq_of(__u32 slot, int latency)
{
	return (__u64)slot * 2 + (latency ? 0 : 1);
}

static __always_inline __u64 task_cgid(struct task_struct *p)
{
	return BPF_CORE_READ(p, cgroups, dfl_cgrp, kn, id);
}

static __always_inline struct sched_call *call_of(__u64 cgid)
{
	struct sched_call *c = bpf_map_lookup_elem(&calls, &cgid);
	__u32 zero = 0;

	if (c && c->slot < AGENTD_SCHED_SLOTS)
		return c;
	return bpf_map_lookup_elem(&unknown, &zero);
}

static __always_inline struct task_ctx *ctx_of(struct task_struct *p)
{
	return bpf_task_storage_get(&tasks, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
}

static __always_inline __u64 weight_or_default(__u32 w)
{
	return w ? w : 100;
}

/* Whether `p` queues as latency now (its class, unless demoted). */
static __always_inline int is_latency(struct sched_call *c, struct task_ctx *t)
{
	return c->cls == AGENTD_CLASS_LATENCY && t->full_runs < demote_after;
}

__s32 AGENTD_OPS(agentd_select_cpu, struct task_struct *p, __s32 prev_cpu, __u64 wake_flags)
{
	_Bool idle = 0;
	__s32 cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &idle);

	if (idle) {
		/* No contention: straight onto the idle CPU. */
		struct task_ctx *t = ctx_of(p);
		struct sched_call *c = call_of(task_cgid(p));
		__u64 slice = slice_batch_ns;

		if (t && c && is_latency(c, t))
			slice = slice_latency_ns;
		__sync_fetch_and_add(&stats.direct_idle, 1);
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice, 0);
	}
	return cpu;
}

static long kick_one(__u32 i, void *data)
{
	__u32 k = i;
	__u32 *b;

	if (i >= nr_cpus)
		return 1;
	b = bpf_map_lookup_elem(&cpu_batch, &k);
	if (!b)
		return 1;
	if (!*b)
		return 0;
	__sync_fetch_and_add(&stats.kicks, 1);
	scx_bpf_kick_cpu(i, SCX_KICK_PREEMPT);
	return 1;
}

/* Preempts one CPU that runs batch work, for a latency task just queued. */
static __always_inline void kick_batch_cpu(void)
{
	bpf_loop(AGENTD_SCHED_MAX_CPUS, kick_one, NULL, 0);
}

void AGENTD_OPS(agentd_enqueue, struct task_struct *p, __u64 enq_flags)
{
	__u64 cgid = task_cgid(p);
	struct sched_call *c = call_of(cgid);
	struct task_ctx *t = ctx_of(p);
	struct slot_state *s;
	__u32 slot;
	int lat;
	__u64 slice, vt;

	if (!c || !t) {
		/* Out of memory for the task's context: still schedule it, as batch. */
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_batch_ns, enq_flags);
		return;
	}
	t->cgid = cgid;
	slot = c->slot;
	if (slot == 0)
		__sync_fetch_and_add(&stats.enq_unknown, 1);
	if (slot >= nr_slots && slot < AGENTD_SCHED_SLOTS)
		nr_slots = slot + 1;
	s = bpf_map_lookup_elem(&slots, &slot);
	if (!s) {
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_batch_ns, enq_flags);
		return;
	}
	lat = is_latency(c, t);
	if (c->cls == AGENTD_CLASS_LATENCY && !lat)
		__sync_fetch_and_add(&stats.demoted, 1);
	t->latency = lat;
	slice = lat ? slice_latency_ns : slice_batch_ns;
	/* A call or session back from sleep banks at most one slice of credit. */
	if (c->vtime + slice < s->call_vnow)
		c->vtime = s->call_vnow - slice;
	if (s->vtime + slice < vnow)
		s->vtime = vnow - slice;
	vt = c->vtime;
	scx_bpf_dsq_insert_vtime(p, dsq_of(slot, lat), slice, vt, enq_flags);
	if (lat) {
		__sync_fetch_and_add(&stats.enq_latency, 1);
		kick_batch_cpu();
	} else {
		__sync_fetch_and_add(&stats.enq_batch, 1);
	}
}

struct pick_ctx {
	int latency;
	int best;
	__u64 bestv;
};

/* One slot of the scan (a bpf_loop callback: verified once, whatever the slot count). */
static long pick_one(__u32 i, void *data)
{
	struct pick_ctx *pc = data;
	struct slot_state *s;
	__u32 k = i;

	if (i >= nr_slots)
		return 1;
	if (scx_bpf_dsq_nr_queued(dsq_of(i, pc->latency)) <= 0)
		return 0;
	s = bpf_map_lookup_elem(&slots, &k);
	if (s && s->vtime < pc->bestv) {
		pc->bestv = s->vtime;
		pc->best = i;
	}
	return 0;
}

/* The session slot with queued work of this class and the lowest session vtime, or -1. */
static __always_inline int pick_slot(int latency, __u64 *vt)
{
	struct pick_ctx pc = { .latency = latency, .best = -1, .bestv = ~0ULL };

	bpf_loop(AGENTD_SCHED_SLOTS, pick_one, &pc, 0);
	*vt = pc.bestv;
	return pc.best;
}

static __always_inline int take(int latency)
{
	__u64 vt = 0;
	int slot = pick_slot(latency, &vt);

	if (slot < 0)
		return 0;
	if (!scx_bpf_dsq_move_to_local(dsq_of(slot, latency)))
		return 0;
	if (vt > vnow)
		vnow = vt;
	__sync_fetch_and_add(&stats.dispatched, 1);
	return 1;
}

void AGENTD_OPS(agentd_dispatch, __s32 cpu, struct task_struct *prev)
{
	__u32 zero = 0;
	struct cpu_ctx *cc = bpf_map_lookup_elem(&cpus, &zero);

	if (cc && cc->lat_streak >= lat_burst) {
		cc->lat_streak = 0;
		if (take(0)) {
			__sync_fetch_and_add(&stats.starve_guard, 1);
			return;
		}
	}
	if (take(1)) {
		if (cc)
			cc->lat_streak++;
		return;
	}
	if (cc)
		cc->lat_streak = 0;
	take(0);
}

void AGENTD_OPS(agentd_running, struct task_struct *p)
{
	struct task_ctx *t = ctx_of(p);
	struct sched_call *c;
	struct slot_state *s;
	__u32 slot;
	__s32 cpu = bpf_get_smp_processor_id();

	if (!t)
		return;
	t->started_ns = bpf_ktime_get_ns();
	set_cpu_batch(cpu, !t->latency);
	c = call_of(t->cgid);
	if (!c)
		return;
	slot = c->slot;
	s = bpf_map_lookup_elem(&slots, &slot);
	if (s && c->vtime > s->call_vnow)
		s->call_vnow = c->vtime;
}

void AGENTD_OPS(agentd_stopping, struct task_struct *p, _Bool runnable)
{
	struct task_ctx *t = ctx_of(p);
	struct sched_call *c;
	struct slot_state *s;
	__u64 used;
	__u32 slot;
	__s32 cpu = bpf_get_smp_processor_id();

	set_cpu_batch(cpu, 0);
	if (!t || !t->started_ns)
		return;
	used = bpf_ktime_get_ns() - t->started_ns;
	/* A task still runnable with nothing left of its slice ran the whole slice. */
	if (runnable && BPF_CORE_READ(p, scx.slice) == 0)
		t->full_runs++;
	else if (!runnable)
		t->full_runs = 0;
	c = call_of(t->cgid);
	if (!c)
		return;
	c->vtime += used * 100 / weight_or_default(c->call_weight);
	slot = c->slot;
	s = bpf_map_lookup_elem(&slots, &slot);
	if (s)
		s->vtime += used * 100 / weight_or_default(c->session_weight);
}

__s32 AGENTD_OPS_SLEEPABLE(agentd_init)
{
	__u32 i;
	__s32 err;

	for (i = 0; i < AGENTD_SCHED_SLOTS; i++) {
		err = scx_bpf_create_dsq(dsq_of(i, 1), -1);
		if (err)
			return err;
		err = scx_bpf_create_dsq(dsq_of(i, 0), -1);
		if (err)
			return err;
	}
	return 0;
}

void AGENTD_OPS(agentd_exit, struct scx_exit_info *info)
{
	exit_code = BPF_CORE_READ(info, exit_code);
	bpf_probe_read_kernel_str(exit_reason, sizeof(exit_reason), BPF_CORE_READ(info, reason));
	exited = 1;
}

SEC(".struct_ops.link")
struct sched_ext_ops agentd_ops = {
	.select_cpu = (void *)agentd_select_cpu,
	.enqueue = (void *)agentd_enqueue,
	.dispatch = (void *)agentd_dispatch,
	.running = (void *)agentd_running,
	.stopping = (void *)agentd_stopping,
	.init = (void *)agentd_init,
	.exit = (void *)agentd_exit,
	/* SCX_OPS_SWITCH_PARTIAL, from the kernel's BTF: the loader sets it. */
	.flags = 0,
	.name = "agentd",
};

char LICENSE[] SEC("license") = "GPL";
