/*
 * stoke-vmm: runs one Linux x86-64 program in a process VM. The daemon's VM tier starts
 * one per function instance; it can also be run by hand:
 *
 *   stoke-vmm --rootfs ~/.cache/stoke/rootfs/python3 -- /usr/bin/python3 -c 'print(42)'
 *
 * Exit status: the program's, 128+signal when it faulted, 124 when a request ran past
 * --wall-ms, 125 when the VMM itself failed.
 */
#include "vm.h"
#include "jail.h"
#include "clock.h"
#include "vmsnap.h"
#include "frame.h"
#include "snap/snap.h"

#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define EXIT_VMM_FAILED 125

static const char usage[] =
	"usage: stoke-vmm [options] -- PROGRAM [ARG...]\n"
	"  --rootfs DIR     guest root file system (required); PROGRAM is a path in it\n"
	"  --task DIR       function files, shown at /var/task (also the cwd)\n"
	"  --runtime DIR    language runtime bootstrap, shown at /var/runtime\n"
	"  --mem-mb N       guest memory (default 256)\n"
	"  --tmp-mb N       size of the private writable /tmp (default 64, 0 for none)\n"
	"  --wall-ms N      wall-clock limit per request on the channel (default none)\n"
	"  --channel-fd N   host descriptor relayed as guest descriptor 3\n"
	"  --env NAME=VAL   environment variable (repeatable)\n"
	"  --no-jail        skip namespaces, seccomp, cgroup and privilege drop\n"
	"  --cgroup NAME    create cgroup stoke-NAME (\"auto\": one per VM) capping memory\n"
	"                   (guest memory + 64 MiB) and CPU (one core); needs the jail\n"
	"  --stats          print system-call counts to stderr at exit\n"
	"  --parent-pid N   exit (cleanly, as on SIGTERM) when process N, our parent, dies\n"
	"  --snapshot-dump F  at the first read of the channel, dump the VM to F (on a\n"
	"                   restored VM: at the first read after its first response)\n"
	"  --snapshot-base-dump F  dump the loaded program to F before it runs\n"
	"  --restore F      restore from snapshot file F instead of booting (on failure:\n"
	"                   boot); needs --snap-store, the same --mem-mb and mounts\n"
	"  --snap-store DIR page store holding the snapshot's restore image\n"
	"  --snap-ws F      working set to prefetch on restore\n"
	"  --ws-out F       record the first request's working set to F (raw)\n"
	"  --snap-huge      restore the working set's 2 MiB regions into private huge\n"
	"                   pages (fewer guest page faults, more private memory)\n"
	"  --state-dump F   when the daemon sends a state-dump frame while the guest waits\n"
	"                   for a request, dump the whole VM to F and end (state: keep)\n"
	"  --restore-strict a failed --restore ends the VMM (status 125) instead of booting\n"
	"  --snap-touch     before waiting for the request, have the guest touch the\n"
	"                   working set (its page faults happen ahead of the request)\n"
	"  --shell          a generic shell: set up the jail and the VM now, then read the\n"
	"                   rest of the command line from the channel (a socket: one\n"
	"                   launch frame; --mem-mb and --tmp-mb must be the shell's);\n"
	"                   --rootfs and PROGRAM come with it\n"
	"   or: stoke-vmm --build-snapshot DUMP STORE_DIR SNAPSHOT_FILE\n"
	"   or: stoke-vmm --build-runtime BASE_DUMP DUMP STORE_DIR SNAPSHOT_FILE\n"
	"   or: stoke-vmm --commit-ws RAW STORE_DIR\n";

enum { OPT_ROOTFS = 256, OPT_TASK, OPT_RUNTIME, OPT_MEM, OPT_TMP, OPT_WALL, OPT_CHAN, OPT_ENV,
       OPT_NOJAIL, OPT_STATS, OPT_CGROUP, OPT_PARENT, OPT_DUMP, OPT_RESTORE, OPT_STORE,
       OPT_WS, OPT_WS_OUT, OPT_HUGE, OPT_STATE_DUMP, OPT_STRICT, OPT_BASE_DUMP,
       OPT_TOUCH, OPT_SHELL };

static const struct option options[] = {
	{ "rootfs", required_argument, NULL, OPT_ROOTFS },
	{ "task", required_argument, NULL, OPT_TASK },
	{ "runtime", required_argument, NULL, OPT_RUNTIME },
	{ "mem-mb", required_argument, NULL, OPT_MEM },
	{ "tmp-mb", required_argument, NULL, OPT_TMP },
	{ "wall-ms", required_argument, NULL, OPT_WALL },
	{ "channel-fd", required_argument, NULL, OPT_CHAN },
	{ "env", required_argument, NULL, OPT_ENV },
	{ "no-jail", no_argument, NULL, OPT_NOJAIL },
	{ "cgroup", required_argument, NULL, OPT_CGROUP },
	{ "stats", no_argument, NULL, OPT_STATS },
	{ "parent-pid", required_argument, NULL, OPT_PARENT },
	{ "snapshot-dump", required_argument, NULL, OPT_DUMP },
	{ "snapshot-base-dump", required_argument, NULL, OPT_BASE_DUMP },
	{ "restore", required_argument, NULL, OPT_RESTORE },
	{ "snap-store", required_argument, NULL, OPT_STORE },
	{ "snap-ws", required_argument, NULL, OPT_WS },
	{ "ws-out", required_argument, NULL, OPT_WS_OUT },
	{ "snap-huge", no_argument, NULL, OPT_HUGE },
	{ "state-dump", required_argument, NULL, OPT_STATE_DUMP },
	{ "restore-strict", no_argument, NULL, OPT_STRICT },
	{ "snap-touch", no_argument, NULL, OPT_TOUCH },
	{ "shell", no_argument, NULL, OPT_SHELL },
	{ NULL, 0, NULL, 0 },
};

/* Start-up phases, printed with --stats: where a spawn or restore spends its time. */
struct mark {
	const char *what;
	double ms;
};
static struct mark marks[16];
static int nmarks;

static double now_ms(void);

static void mark(const char *what)
{
	if (nmarks < (int)(sizeof(marks) / sizeof(marks[0])))
		marks[nmarks++] = (struct mark){ what, now_ms() };
}

static char *env[128];
static int nenv;
static pid_t parent_pid;
static int shell;

static void set_defaults(struct vm_config *cfg)
{
	cfg->mem_bytes = 256ULL << 20;
	cfg->tmp_bytes = 64ULL << 20;
	cfg->channel_fd = -1;
	cfg->jail = 1;
	cfg->trace = getenv("STOKE_VMM_TRACE") != NULL;
}

/* Adds options to cfg; a shell's first pass may lack --rootfs and the program. */
static int parse_args(int argc, char **argv, struct vm_config *cfg, struct jail_config *jc)
{
	int c;

	while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) {
		switch (c) {
		case OPT_ROOTFS: cfg->rootfs = optarg; break;
		case OPT_TASK: cfg->task_dir = optarg; break;
		case OPT_RUNTIME: cfg->runtime_dir = optarg; break;
		case OPT_MEM: cfg->mem_bytes = strtoull(optarg, NULL, 10) << 20; break;
		case OPT_TMP: cfg->tmp_bytes = strtoull(optarg, NULL, 10) << 20; break;
		case OPT_WALL: cfg->wall_ms = (uint32_t)strtoul(optarg, NULL, 10); break;
		case OPT_CHAN: cfg->channel_fd = atoi(optarg); break;
		case OPT_ENV:
			if (nenv < (int)(sizeof(env) / sizeof(env[0])) - 1)
				env[nenv++] = optarg;
			break;
		case OPT_NOJAIL: cfg->jail = 0; break;
		case OPT_CGROUP: jc->cgroup = optarg; break;
		case OPT_STATS: cfg->stats = 1; break;
		case OPT_PARENT: parent_pid = (pid_t)atoi(optarg); break;
		case OPT_DUMP: cfg->snap_dump = optarg; break;
		case OPT_BASE_DUMP: cfg->snap_base_dump = optarg; break;
		case OPT_RESTORE: cfg->snap_restore = optarg; break;
		case OPT_STORE: cfg->snap_store = optarg; break;
		case OPT_WS: cfg->snap_ws = optarg; break;
		case OPT_WS_OUT: cfg->snap_ws_out = optarg; break;
		case OPT_HUGE: cfg->snap_huge = 1; break;
		case OPT_STATE_DUMP: cfg->state_dump = optarg; break;
		case OPT_STRICT: cfg->restore_strict = 1; break;
		case OPT_TOUCH: cfg->snap_touch = 1; break;
		case OPT_SHELL: shell = 1; break;
		default: return -EINVAL;
		}
	}
	if (!cfg->rootfs || optind >= argc)
		return shell && !cfg->rootfs && optind == argc ? 0 : -EINVAL;
	cfg->argv = argv + optind;
	cfg->envp = env;
	return 0;
}

static void print_stats(struct vm *vm, double ms)
{
	char nb[32];
	int i;

	for (i = 1; i < nmarks; i++)
		fprintf(stderr, "stoke-vmm: %-22s %7.2f ms\n", marks[i].what,
			marks[i].ms - marks[i - 1].ms);
	fprintf(stderr, "stoke-vmm: %llu system calls in %.1f ms; %llu KVM_RUN, %.1f ms in them\n",
		(unsigned long long)vm->nr_syscalls, ms, (unsigned long long)vm->nr_runs,
		(double)vm->run_ns / 1e6);
	for (i = 0; i < VM_NR_SYSCALLS; i++)
		if (vm->counts[i])
			fprintf(stderr, "  %-18s %6llu%s\n", sys_name((uint64_t)i, nb, sizeof(nb)),
				(unsigned long long)vm->counts[i], vm->enosys[i] ? "  ENOSYS" : "");
}

/*
 * A VM must not outlive the daemon that started it (it would run on to its wall limit
 * with nobody listening): SIGTERM when the parent goes, and exit if it already went.
 */
static int die_with_parent(void)
{
	if (!parent_pid)
		return 0;
	if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0)
		return -errno;
	return getppid() == parent_pid ? 0 : -ESRCH;
}

static double now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/*
 * Restores guest memory and VMM state before the jail. Returns 1 when restored, 0 when
 * the program must boot instead (no snapshot, or one that failed its checks before
 * anything of the VM changed), or -errno when the VM is unusable.
 */
static int try_restore(struct vm *vm)
{
	char why[512] = "";
	int mapped, r;

	if (!vm->cfg->snap_restore)
		return 0;
	r = vmsnap_restore_memory(vm, &mapped, why, sizeof(why));
	if (!r)
		return 1;
	/* Kept state must not silently become a fresh boot: strict ends the VMM. */
	mapped |= vm->cfg->restore_strict;
	fprintf(stderr, "stoke-vmm: restoring %s: %s%s\n", vm->cfg->snap_restore,
		why[0] ? why : strerror(-r), mapped ? "" : "; booting instead");
	return mapped ? r : 0;
}

static int start(struct vm *vm, int restored)
{
	uint64_t entry, sp;
	char why[512] = "";
	int r;

	if (restored) {
		r = vmsnap_restore_vcpu(vm, why, sizeof(why));
		if (r)
			return fprintf(stderr, "stoke-vmm: restoring: %s\n",
				       why[0] ? why : strerror(-r)), r;
		mark("vCPU state");
		return vm_resume(vm);
	}
	r = elf_load_program(vm, &entry, &sp);
	if (r)
		return fprintf(stderr, "stoke-vmm: loading %s: %s\n", vm->cfg->argv[0],
			       strerror(-r)), r;
	vmsnap_at_load(vm);
	return vm_run(vm, entry, sp);
}

/* The channel is a stream socket (the tier's socketpair): one call reads len bytes. */
static int recv_full(int fd, void *buf, size_t len)
{
	ssize_t n = recv(fd, buf, len, MSG_WAITALL);

	if (n == (ssize_t)len)
		return 0;
	return n < 0 ? -errno : -EPIPE;
}

/*
 * A generic shell (--shell) is set up before anyone knows which function it will run:
 * the jail's namespaces, supervisor, cgroup and /tmp, and the VM with its vCPU. Then it
 * waits on the channel for one FRAME_VMM_LAUNCH frame: the rest of a command line
 * (options and the program, NUL-separated), parsed as if given at start. Memory and
 * /tmp sizes were fixed by the shell and must match; the jail and the channel stay.
 */
static int await_launch(struct vm_config *cfg, struct jail_config *jc)
{
	static char *argv[96];
	uint64_t mem = cfg->mem_bytes, tmp = cfg->tmp_bytes;
	int chan = cfg->channel_fd, jail = cfg->jail, argc = 1, r;
	uint8_t hdr[FRAME_HDR_SIZE];
	struct frame_hdr h;
	char *buf, *p;

	r = chan < 0 ? -EBADF : recv_full(chan, hdr, sizeof(hdr));
	if (r)
		return r;
	frame_hdr_unpack(hdr, &h);
	if (h.type != FRAME_VMM_LAUNCH || !h.len || h.len > 65536)
		return -EPROTO;
	/* Kept for the process's life: the configuration points into it. */
	buf = malloc(h.len + 1);
	if (!buf)
		return -ENOMEM;
	r = recv_full(chan, buf, h.len);
	if (r)
		return r;
	buf[h.len] = '\0';
	argv[0] = (char *)"stoke-vmm";
	for (p = buf; p < buf + h.len && argc < 95; p += strlen(p) + 1)
		argv[argc++] = p;
	argv[argc] = NULL;
	optind = 0;
	shell = 0;
	r = parse_args(argc, argv, cfg, jc);
	shell = 1;
	if (r)
		return r;
	if (cfg->mem_bytes != mem || cfg->tmp_bytes != tmp)
		return -EINVAL;
	cfg->channel_fd = chan;
	cfg->jail = jail;
	return 0;
}

/* Errors are kept in jc and returned by jail_enter. */
static void detach(void *jc)
{
	jail_detach(jc);
}

static int run(struct vm *vm, struct vm_config *cfg, struct jail_config *jc)
{
	char why[512] = "";
	int r, restored;
	double t0;

	r = vm_create(vm, cfg);
	if (r)
		return fprintf(stderr, "stoke-vmm: creating the VM: %s\n", strerror(-r)), r;
	/* Without a vDSO the guest still works, paying an exit per clock read. */
	clock_init(vm);
	mark("VM and vCPU");
	if (shell) {
		/* While nobody waits: the restore's first hash would pay it. */
		snap_warm_up();
		vmsnap_preload_fork();
		r = await_launch(cfg, jc);
		if (r)
			return fprintf(stderr, "stoke-vmm: shell launch: %s\n", strerror(-r)), r;
		mark("launch received");
		vmsnap_preload(cfg, 1);
	}
	r = vfs_init(vm);
	if (r)
		return fprintf(stderr, "stoke-vmm: %s: %s\n", cfg->rootfs, strerror(-r)), r;
	r = vmsnap_open(vm, why, sizeof(why));
	if (r)
		return fprintf(stderr, "stoke-vmm: snapshot: %s\n", why), r;
	chan_open_status(vm);
	mark("files, snapshot open");
	if (cfg->jail) {
		vm->host_files_done = detach;
		vm->host_files_done_arg = jc;
	}
	restored = try_restore(vm);
	vm->host_files_done = NULL;
	if (restored < 0)
		return restored;
	mark("restore memory");
	r = chan_arm_timer(vm);
	jc->ioctl_fds[0] = vm->vm_fd;
	jc->ioctl_fds[1] = vm->vcpu_fd;
	jc->before_filter = vmsnap_populate;
	jc->before_filter_arg = vm;
	if (!r && cfg->jail)
		r = jail_enter(jc);
	else if (!r)
		vmsnap_populate(vm);
	if (r)
		return fprintf(stderr, "stoke-vmm: jail: %s\n", strerror(-r)), r;
	/*
	 * Set-up is over (snapshot file, store, seccomp filter): give its freed heap back,
	 * or each idle VM keeps a few hundred KiB of it.
	 */
	malloc_trim(0);
	mark("jail: pivot, seccomp");
	t0 = now_ms();
	r = start(vm, restored);
	if (cfg->stats)
		print_stats(vm, now_ms() - t0);
	if (r == -EFAULT || r == -EIO || r == -EINTR)
		fprintf(stderr, "stoke-vmm: %s\n", vm->stop_reason);
	else if (r)
		fprintf(stderr, "stoke-vmm: running the VM: %s\n", strerror(-r));
	return r;
}

/* One JSON line per build: what each layer stored (benchmarks and tests read it). */
static void print_build(const struct vmsnap_build_info *info)
{
	char hex[65];
	int i;

	printf("{\"image_built\":%d,\"layer_ms\":%.3f,\"image_ms\":%.3f,\"layers\":[",
	       info->image_built, info->layer_ms, info->image_ms);
	for (i = 0; i < info->nlayers; i++) {
		const struct snap_layer_info *l = &info->layer[i];

		snap_id_hex(&l->id, hex);
		printf("%s{\"id\":\"%s\",\"pages\":%llu,\"new\":%llu,\"dup\":%llu,"
		       "\"zero\":%llu,\"bytes_new\":%llu,\"compared\":%llu,\"existed\":%d}",
		       i ? "," : "", hex, (unsigned long long)l->pages,
		       (unsigned long long)l->pages_new, (unsigned long long)l->pages_dup,
		       (unsigned long long)l->pages_zero, (unsigned long long)l->bytes_new,
		       (unsigned long long)l->compared, l->existed);
	}
	printf("]}\n");
}

/* The daemon-side snapshot steps, runnable by hand and from tests. */
static int tool_mode(int argc, char **argv)
{
	struct vmsnap_build_info info = { 0 };
	char why[512] = "";
	int r;

	if (argc == 5 && !strcmp(argv[1], "--build-snapshot"))
		r = vmsnap_build_info(argv[2], argv[3], argv[4], &info, why, sizeof(why));
	else if (argc == 6 && !strcmp(argv[1], "--build-runtime"))
		r = vmsnap_build_runtime(argv[2], argv[3], argv[4], argv[5], &info, why,
					 sizeof(why));
	else if (argc == 4 && !strcmp(argv[1], "--commit-ws"))
		r = vmsnap_ws_commit(argv[2], argv[3], why, sizeof(why));
	else
		return -1;
	if (r)
		fprintf(stderr, "stoke-vmm: %s: %s\n", argv[1] + 2, why[0] ? why : strerror(-r));
	else if (info.nlayers)
		print_build(&info);
	return r ? 1 : 0;
}

int main(int argc, char **argv)
{
	static struct vm vm;
	struct vm_config cfg = { 0 };
	struct jail_config jc = { 0 };
	sigset_t none;
	int r;

	if (argc > 1 && (r = tool_mode(argc, argv)) >= 0)
		return r;
	set_defaults(&cfg);
	if (parse_args(argc, argv, &cfg, &jc)) {
		fputs(usage, stderr);
		return 2;
	}

	/* Whatever mask we inherited, the wall clock (SIGALRM) and SIGTERM must arrive. */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* A daemon that went away must not kill us mid-write: writes report EPIPE. */
	signal(SIGPIPE, SIG_IGN);
	if (die_with_parent())
		return EXIT_VMM_FAILED;
	mark("start");
	if (!shell)
		vmsnap_preload(&cfg, 0);
	mark("working-set readahead");
	jc.tmp_bytes = cfg.tmp_bytes;
	jc.jail = cfg.jail;
	r = jail_prepare(&jc, &cfg);
	if (r) {
		fprintf(stderr, "stoke-vmm: preparing /tmp and the jail: %s\n", strerror(-r));
		return EXIT_VMM_FAILED;
	}
	mark("jail: namespaces, fork");
	r = run(&vm, &cfg, &jc);
	vmsnap_close(&vm);
	vfs_close_all(&vm);
	vm_destroy(&vm);
	jail_cleanup(&jc);
	if (vm.exit_code)
		return vm.exit_code;
	return r ? EXIT_VMM_FAILED : 0;
}
