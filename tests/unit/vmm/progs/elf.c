/*
 * ELF loading: built static, static-PIE and dynamic (run against the python3 root file
 * system's glibc). Prints what the loader and the initial stack gave it; the output
 * must match a native run.
 */
#include "t.h"
#include <stdlib.h>
#include <sys/auxv.h>

static int counter = 41;	/* .data */
static char zeros[8192];	/* .bss */

int main(int argc, char **argv, char **envp)
{
	int i, bss_zero = 1;

	for (i = 0; i < (int)sizeof(zeros); i++)
		bss_zero &= zeros[i] == 0;
	printf("argc %d\n", argc);
	for (i = 1; i < argc; i++)
		printf("argv[%d] %s\n", i, argv[i]);
	printf("data %d bss zero %d\n", ++counter, bss_zero);
	printf("env STOKE_T %s\n", getenv("STOKE_T") ? getenv("STOKE_T") : "(unset)");
	TRUTH("envp after argv", envp == argv + argc + 1);
	TRUTH("AT_PAGESZ", getauxval(AT_PAGESZ) == 4096);
	TRUTH("AT_RANDOM", getauxval(AT_RANDOM) != 0);
	TRUTH("AT_PHDR", getauxval(AT_PHDR) != 0);
	TRUTH("stack aligned", ((unsigned long)__builtin_frame_address(0) & 7) == 0);
	return 3;
}
