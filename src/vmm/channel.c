/*
 * The invocation channel: guest descriptor 3 is relayed byte for byte to the host
 * socket the daemon gave us. The VMM follows the frame boundaries of what the guest
 * writes so that it can stop the wall clock when a response is complete and slip its
 * own statistics frame in before each response frame.
 */
#include "vm.h"
#include "frame.h"
#include "clock.h"
#include "vmsnap.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

static struct kvm_run *volatile timer_run;

static void on_wall_timer(int sig)
{
	(void)sig;
	/* Makes a KVM_RUN that has not started yet return at once with EINTR. */
	if (timer_run)
		timer_run->immediate_exit = 1;
}

int chan_arm_timer(struct vm *vm)
{
	struct sigevent sev = { 0 };
	struct sigaction sa = { 0 };

	if (!vm->cfg->wall_ms)
		return 0;
	sa.sa_handler = on_wall_timer;
	if (sigaction(SIGALRM, &sa, NULL) < 0)
		return -errno;
	sev.sigev_notify = SIGEV_SIGNAL;
	sev.sigev_signo = SIGALRM;
	if (timer_create(CLOCK_MONOTONIC, &sev, &vm->wall_timer) < 0)
		return -errno;
	vm->has_wall_timer = 1;
	timer_run = vm->run;
	return 0;
}

static void wall_clock(struct vm *vm, int start)
{
	struct itimerspec its = { 0 };
	uint32_t ms = vm->cfg->wall_ms;

	if (!vm->has_wall_timer)
		return;
	if (start) {
		its.it_value.tv_sec = ms / 1000;
		its.it_value.tv_nsec = (long)(ms % 1000) * 1000000L;
	}
	timer_settime(vm->wall_timer, 0, &its, NULL);
}

/* Guest time counts as this thread's CPU time (KVM accounts it to the vCPU thread). */
static uint64_t cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	ssize_t n;

	while (len) {
		n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EPIPE;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

void chan_open_status(struct vm *vm)
{
	vm->status_fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
}

/*
 * This process's resident high-water in KiB (VmHWM: guest memory is mapped here, so it
 * is the VM's), or 0 when unknown. /proc is gone after the jail: the file was opened
 * before it, and each pread at 0 reads it afresh.
 */
static unsigned long long hwm_kb(struct vm *vm)
{
	char buf[4096], *p;
	ssize_t n;

	if (vm->status_fd <= 0)
		return 0;
	n = pread(vm->status_fd, buf, sizeof(buf) - 1, 0);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	p = strstr(buf, "\nVmHWM:");
	return p ? strtoull(p + 7, NULL, 10) : 0;
}

/*
 * {"syscalls":N,"cpu_ns":N,"hwm_kb":N,"enosys":{"name":count,...}}: system calls so
 * far, CPU time of this request, the VM's resident high-water, and unimplemented calls
 * new since the last report.
 */
static int send_stats(struct vm *vm)
{
	char buf[8192], nbuf[32];
	size_t off = FRAME_HDR_SIZE;
	int i, first = 1;

	off += (size_t)snprintf(buf + off, sizeof(buf) - off,
				"{\"syscalls\":%llu,\"cpu_ns\":%llu,\"hwm_kb\":%llu,"
				"\"enosys\":{", (unsigned long long)vm->nr_syscalls,
				(unsigned long long)(cpu_ns() - vm->request_cpu_ns),
				hwm_kb(vm));
	for (i = 0; i < VM_NR_SYSCALLS && off < sizeof(buf) - 64; i++) {
		uint64_t d = vm->enosys[i] - vm->enosys_reported[i];

		if (!d)
			continue;
		off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%s\"%s\":%llu",
					first ? "" : ",", sys_name((uint64_t)i, nbuf,
					sizeof(nbuf)), (unsigned long long)d);
		vm->enosys_reported[i] = vm->enosys[i];
		first = 0;
	}
	off += (size_t)snprintf(buf + off, sizeof(buf) - off, "}}");
	frame_hdr_pack((uint8_t *)buf, (uint32_t)(off - FRAME_HDR_SIZE), FRAME_VMM_STATS);
	return write_all(vm->cfg->channel_fd, buf, off);
}

/* Reads up to len bytes, retrying when a signal interrupts before anything arrived. */
static ssize_t read_host(struct vm *vm, void *buf, size_t len)
{
	ssize_t n;

	do
		n = read(vm->cfg->channel_fd, buf, len);
	while (n < 0 && errno == EINTR && !vm->run->immediate_exit);
	return n;
}

/*
 * With --state-dump, the VMM reads each frame header that arrives while the guest
 * waits for a request (and hands it on from vm->stash): a FRAME_STATE_DUMP is the
 * daemon asking to dump the idle VM. Returns 1 to go on reading, 0 for end of file
 * (the daemon closed, or the dump is taken and the guest should end), or -errno.
 */
static long chan_control(struct vm *vm)
{
	struct frame_hdr h;
	uint8_t skip[256];
	ssize_t n;

	while (vm->stash_off >= vm->stash_len) {
		vm->stash_len = vm->stash_off = 0;
		while (vm->stash_len < FRAME_HDR_SIZE) {
			n = read_host(vm, vm->stash + vm->stash_len,
				      FRAME_HDR_SIZE - vm->stash_len);
			if (n <= 0)
				return vm->stash_len ? 1 : n < 0 && errno != ECONNRESET ? -errno : 0;
			vm->stash_len += (uint32_t)n;
		}
		frame_hdr_unpack(vm->stash, &h);
		if (h.type != FRAME_STATE_DUMP)
			return 1;
		vm->stash_len = 0;
		for (; h.len; h.len -= (uint32_t)n) {
			n = read_host(vm, skip, h.len < sizeof(skip) ? h.len : sizeof(skip));
			if (n <= 0)
				return 0;
		}
		/* Dumped: the guest sees the channel end and exits. Refused: serve on. */
		if (vmsnap_dump_state(vm) == 0)
			return 0;
	}
	return 1;
}

long chan_read(struct vm *vm, void *buf, size_t len)
{
	ssize_t n;
	long c;

	/* The runtime waits for its first request: the point a snapshot is taken at. */
	if (!vm->in_request)
		vmsnap_at_read(vm);
	if (!vm->in_request && vm->cfg->state_dump) {
		c = chan_control(vm);
		if (c <= 0)
			return c;
	}
	if (vm->stash_off < vm->stash_len) {
		n = (ssize_t)(vm->stash_len - vm->stash_off);
		if ((size_t)n > len)
			n = (ssize_t)len;
		memcpy(buf, vm->stash + vm->stash_off, (size_t)n);
		vm->stash_off += (uint32_t)n;
	} else {
		n = read_host(vm, buf, len);
	}
	/* A daemon that closed with frames unread resets the socket: that is still EOF. */
	if (n < 0 && errno == ECONNRESET)
		return 0;
	if (n < 0)
		return -errno;
	if (n > 0 && !vm->in_request) {
		vm->in_request = 1;
		vm->request_cpu_ns = cpu_ns();
		clock_rebase(vm);	/* an idle VM may have slept for minutes */
		wall_clock(vm, 1);
	}
	return n;
}

/*
 * The guest may only answer the request it has read. Another type (a forged VMM
 * statistics frame), a second response (the daemon would give it to the next caller)
 * or a length over the limit would reach the daemon as if the VMM or the runtime had
 * sent it; such a header is dropped and the guest's write fails.
 */
static int guest_frame_ok(const struct vm *vm, const struct frame_hdr *h)
{
	return h->type == FRAME_RESPONSE && vm->in_request && h->len <= FRAME_MAX_PAYLOAD;
}

/*
 * Header bytes are held back until the header is complete, so that the statistics
 * frame can go out before a response frame: the daemon then has both when the
 * response ends.
 */
static int header_byte(struct vm *vm, uint8_t b)
{
	struct chan_track *t = &vm->out;
	struct frame_hdr h;
	int r;

	t->hdr[t->hdr_len++] = b;
	if (t->hdr_len < FRAME_HDR_SIZE)
		return 0;
	frame_hdr_unpack(t->hdr, &h);
	if (!guest_frame_ok(vm, &h)) {
		t->hdr_len = 0;
		return -EPROTO;
	}
	t->left = h.len;
	t->type = h.type;
	if (h.type == FRAME_RESPONSE) {
		r = send_stats(vm);
		if (r)
			return r;
	}
	r = write_all(vm->cfg->channel_fd, t->hdr, FRAME_HDR_SIZE);
	if (!r && !t->left)
		t->hdr_len = 0;
	return r;
}

static void frame_done(struct vm *vm)
{
	vm->out.hdr_len = 0;
	if (vm->out.type == FRAME_RESPONSE) {
		wall_clock(vm, 0);
		vm->in_request = 0;
		vmsnap_after_response(vm);
	}
}

long chan_write(struct vm *vm, const void *buf, size_t len)
{
	struct chan_track *t = &vm->out;
	const uint8_t *p = buf;
	size_t off = 0, hdr_at = 0, n;
	int r;

	while (off < len) {
		if (t->hdr_len < FRAME_HDR_SIZE) {
			if (!t->hdr_len)
				hdr_at = off;
			r = header_byte(vm, p[off++]);
			/* What went before a refused header was sent: report that first. */
			if (r)
				return hdr_at ? (long)hdr_at : r;
			if (t->hdr_len == 0)
				frame_done(vm);	/* empty payload */
			continue;
		}
		n = len - off < t->left ? len - off : (size_t)t->left;
		r = write_all(vm->cfg->channel_fd, p + off, n);
		if (r)
			return off ? (long)off : r;
		off += n;
		t->left -= n;
		if (!t->left)
			frame_done(vm);
	}
	return (long)len;
}
