/* A few macros for the CLI unit tests: each test binary runs alone, reports every
 * failed check with its line and exits non-zero if any failed. */
#ifndef STOKE_TEST_CLI_CHECK_H
#define STOKE_TEST_CLI_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures;

#define CHECK(cond)								\
	do {									\
		if (!(cond)) {							\
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__,	\
				__LINE__, #cond);				\
			check_failures++;					\
		}								\
	} while (0)

#define CHECK_STR(got, want)							\
	do {									\
		const char *g_ = (got), *w_ = (want);				\
		if (!g_ || strcmp(g_, w_)) {					\
			fprintf(stderr, "%s:%d: got \"%s\", want \"%s\"\n",	\
				__FILE__, __LINE__, g_ ? g_ : "(null)", w_);	\
			check_failures++;					\
		}								\
	} while (0)

#define CHECK_INT(got, want)							\
	do {									\
		long long g_ = (got), w_ = (want);				\
		if (g_ != w_) {							\
			fprintf(stderr, "%s:%d: %s is %lld, want %lld\n",	\
				__FILE__, __LINE__, #got, g_, w_);		\
			check_failures++;					\
		}								\
	} while (0)

static inline int check_done(const char *name)
{
	if (check_failures)
		fprintf(stderr, "%s: %d check(s) failed\n", name, check_failures);
	else
		printf("%s: ok\n", name);
	return check_failures ? 1 : 0;
}

#endif
