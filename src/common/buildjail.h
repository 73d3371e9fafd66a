/*
 * The sandbox of a deploy-time build: esbuild bundling a TypeScript entry, gcc compiling
 * a native function's C source. Both read whatever the tenant's source names (an
 * import of an absolute path, #include "/proc/self/environ"), so when the daemon runs as
 * root they run as nobody, chrooted into a root of their own: a tmpfs holding the
 * function's files read-only at /src, an output directory at /out, a private /tmp, the
 * host's /usr (with bin, lib and lib64 as on the host) and /dev/null, nothing else, and
 * a clean environment (the daemon's may hold secrets).
 *
 * The parent prepares (bj_prepare) before it forks; the child calls bj_enter, which
 * makes only system calls, then execs; the parent cleans up once the child is gone.
 */
#ifndef STOKE_COMMON_BUILDJAIL_H
#define STOKE_COMMON_BUILDJAIL_H

#define BJ_NHOST 4

struct bj {
	char root[64];			/* /tmp/stoke-build-XXXXXX, the jail's mount point */
	char src[96], out[96], tmp[96], exe[96], dev[96], null[96];
	char host[BJ_NHOST][2][96];	/* the host's /NAME, and root/NAME */
	const char *src_dir;		/* the function's files: /src, read-only */
	const char *out_dir;		/* /out, writable by nobody; or NULL */
	char exe_host[4096];		/* the program, bound at /exe; or "" */
};

/* The clean environment a jailed build runs with. */
extern char *const bj_env[];

/*
 * Makes the jail's mount point and paths. exe: a program to bind at /exe (one that may
 * live outside /usr), or NULL. Returns 0 or -errno.
 */
int bj_prepare(struct bj *j, const char *src_dir, const char *out_dir, const char *exe);
/* In the forked child: enters the jail (cwd /src) as nobody. 0, or -1 with errno. */
int bj_enter(const struct bj *j);
/*
 * In the forked child, whether jailed or not: stdin from /dev/null, stdout and stderr to
 * out and err, at most mem bytes of address space, a process group of its own (a build
 * that runs out of time is killed whole), then the jail j, or cwd when j is NULL.
 * 0, or -1 with errno.
 */
int bj_child_setup(const struct bj *j, const char *cwd, int out, int err,
		   unsigned long long mem);
/* Removes the mount point (the child's mounts went with its namespace). */
void bj_cleanup(struct bj *j);

#endif
