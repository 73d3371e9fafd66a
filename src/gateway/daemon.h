/* The daemon behind `stoke serve`: gateway, registry and both tiers in one process. */
#ifndef STOKE_DAEMON_H
#define STOKE_DAEMON_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct daemon_config {
	const char *listen;		/* "ADDR:PORT"; default 127.0.0.1:8080 */
	const char *data_dir;		/* default $XDG_DATA_HOME/stoke or ~/.local/share/stoke */
	const char *domain;		/* NAME.<domain> routes to NAME; default "localhost" */
	const char *rootfs_dir;		/* runtime root file systems; default $STOKE_CACHE/rootfs */
	size_t max_body;		/* request body limit; default 10 MiB */
	size_t max_deploy;		/* deploy size limit; default 50 MiB */
	int workers;			/* isolate worker threads; 0 = one per core */
	int log_json;			/* JSON logs instead of text */
	int log_level;			/* enum log_level */
	unsigned shutdown_grace_ms;	/* in-flight bound at SIGTERM; default 10000 */
};

/*
 * Parses --listen: HOST:PORT or [IPv6]:PORT, HOST a numeric address or a name resolved
 * with getaddrinfo (an IPv4 answer preferred: "localhost" then means 127.0.0.1), PORT
 * 1-65535. Returns 0 with the address, or -EINVAL with a sentence in why.
 */
int daemon_parse_listen(const char *listen, struct sockaddr_storage *ss, socklen_t *len,
			char *why, size_t size);

/* Fills defaults for every unset field. Returns 0 or -errno (no home directory...). */
int daemon_config_defaults(struct daemon_config *cfg);
/* Runs until SIGTERM/SIGINT. Returns 0 after a clean shutdown, -errno on start-up failure
 * (after logging why). */
int daemon_run(const struct daemon_config *cfg);

#endif
