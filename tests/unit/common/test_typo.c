#include "check.h"
#include "common/typo.h"

#include <stddef.h>

static const char *const verbs[] = { "deploy", "invoke", "ls", "rm", "show", NULL };
static const char *const fields[] = { "name", "limits", "runtime", "tier", NULL };

int main(void)
{
	const char *w;

	w = typo_closest("deploi", verbs);
	CHECK(w && !strcmp(w, "deploy"));
	w = typo_closest("DEPLOY", verbs);
	CHECK(w && !strcmp(w, "deploy"));
	w = typo_closest("invok", verbs);
	CHECK(w && !strcmp(w, "invoke"));
	w = typo_closest("limts", fields);
	CHECK(w && !strcmp(w, "limits"));
	/* Too far from every word, or too short for two edits to mean a typo. */
	CHECK(!typo_closest("frobnicate", verbs));
	CHECK(!typo_closest("xy", verbs));
	CHECK(!typo_closest("", verbs));
	/* Longer than the distance table: never a match, never an overflow. */
	CHECK(!typo_closest("deployyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy",
			    verbs));
	return check_done();
}
