/* Typo hints: which word of a known list a mistyped one was probably meant to be (a
 * manifest field, a tier, a CLI verb). */
#ifndef STOKE_COMMON_TYPO_H
#define STOKE_COMMON_TYPO_H

/* The word of the NULL-terminated list words closest to s (edit distance, ignoring
 * case) if it is close enough to be a typo: at most 2 edits and at most half the word's
 * length. NULL when none is. */
const char *typo_closest(const char *s, const char *const *words);

#endif
