/* Tiny helpers for the system-call test programs: print results Linux-comparably. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Prints "name: result" where result is the value or the errno name. */
#define SHOW(name, expr) do {						\
		long r_ = (long)(expr);						\
		if (r_ < 0)							\
			printf("%s: -1 %s\n", name, strerrorname_np(errno));	\
		else								\
			printf("%s: %ld\n", name, r_);				\
		fflush(stdout);							\
	} while (0)
#define SHOWOK(name, expr) do {						\
		long r_ = (long)(expr);						\
		if (r_ < 0)							\
			printf("%s: -1 %s\n", name, strerrorname_np(errno));	\
		else								\
			printf("%s: ok\n", name);				\
		fflush(stdout);							\
	} while (0)
#define TRUTH(name, cond) do { printf("%s: %s\n", name, (cond) ? "yes" : "no"); \
	fflush(stdout); } while (0)
