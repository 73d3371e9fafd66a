/*
 * An error built once, where it happens (errno plus a sentence naming the file, host or
 * field at fault), then passed up unchanged; only the verb prints it.
 */
#ifndef STOKE_CLI_ERR_H
#define STOKE_CLI_ERR_H

struct cli_err {
	int code;		/* negative errno; 0 while nothing failed */
	char msg[512];
};

/* Records code (a negative errno) and the formatted message in err, which may be NULL.
 * Returns code, so a failure site reads `return cli_err_set(err, -EINVAL, ...)`. */
int cli_err_set(struct cli_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
