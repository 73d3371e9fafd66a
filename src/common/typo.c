#include "typo.h"

#include <ctype.h>
#include <string.h>

/* Edit distance between a and b, ignoring case, capped at 9 (enough to rank typos). */
static int typo_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), i, j;
	int row[64], diag, up, cost;

	if (la > 60 || lb > 60)
		return 9;
	for (j = 0; j <= lb; j++)
		row[j] = (int)j;
	for (i = 1; i <= la; i++) {
		diag = row[0];
		row[0] = (int)i;
		for (j = 1; j <= lb; j++) {
			up = row[j];
			cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
			row[j] = diag + cost;
			if (up + 1 < row[j])
				row[j] = up + 1;
			if (row[j - 1] + 1 < row[j])
				row[j] = row[j - 1] + 1;
			diag = up;
		}
	}
	return row[lb] > 9 ? 9 : row[lb];
}

const char *typo_closest(const char *s, const char *const *words)
{
	const char *best = NULL;
	int d, best_d = 9;
	size_t i;

	for (i = 0; words[i]; i++) {
		d = typo_distance(s, words[i]);
		if (d < best_d && d <= 2 && (size_t)d <= strlen(words[i]) / 2) {
			best = words[i];
			best_d = d;
		}
	}
	return best;
}
