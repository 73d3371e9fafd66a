/*
 * Escape attempts from the guest's root file system. Run only in the VM (compare.py
 * gives it a root holding this program and a symlink "escape" -> "/etc"): each attempt
 * must fail, and every line must read "blocked".
 */
#include "t.h"
#include <fcntl.h>
#include <unistd.h>

static void attempt(const char *what, const char *path, int flags)
{
	int fd = open(path, flags);

	printf("%s: %s\n", what, fd < 0 ? "blocked" : "ESCAPED");
	if (fd >= 0)
		close(fd);
}

int main(void)
{
	char buf[64];

	attempt("host shadow", "/etc/shadow", O_RDONLY);
	attempt("dotdot", "/../../../../../etc/passwd", O_RDONLY);
	attempt("symlink escape", "/escape/passwd", O_RDONLY);
	attempt("proc root", "/proc/self/root/etc/passwd", O_RDONLY);
	attempt("dev kvm", "/dev/kvm", O_RDWR);
	attempt("write root", "/newfile", O_WRONLY | O_CREAT);
	attempt("tmp dotdot", "/tmp/../../etc/passwd", O_RDONLY);
	printf("readlink escape: %s\n", readlink("/escape", buf, sizeof(buf)) == 4 ?
	       "blocked" : "odd");
	return 0;
}
