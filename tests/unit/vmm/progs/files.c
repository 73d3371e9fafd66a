/* File system calls on /tmp and error paths; output must match native Linux. */
#include "t.h"
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

int main(void)
{
	char dir[64], path[128], path2[128], buf[64] = "", cwd[256];
	struct stat st;
	struct termios tio;
	int fd, n = 0;
	DIR *d;

	snprintf(dir, sizeof(dir), "/tmp/stoke-files-%d-%ld", getpid(), 0L);
	SHOWOK("mkdir", mkdir(dir, 0755));
	SHOW("mkdir again", mkdir(dir, 0755));
	snprintf(path, sizeof(path), "%s/sub/", dir);
	SHOWOK("mkdir trailing slash", mkdir(path, 0755));
	SHOWOK("rmdir trailing slash", rmdir(path));
	snprintf(path, sizeof(path), "%s/..", dir);
	SHOW("rmdir dotdot", rmdir(path));
	snprintf(path, sizeof(path), "%s/a.txt", dir);
	fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0644);
	TRUTH("open creates", fd >= 0);
	SHOW("write", write(fd, "hello world\n", 12));
	SHOW("lseek cur", lseek(fd, 0, SEEK_CUR));
	SHOW("lseek set", lseek(fd, 6, SEEK_SET));
	SHOW("read", read(fd, buf, 5));
	printf("data: %s\n", buf);
	SHOW("pread", pread(fd, buf, 5, 0));
	SHOW("pwrite", pwrite(fd, "HELLO", 5, 0));
	SHOWOK("fstat", fstat(fd, &st));
	printf("size %ld reg %d\n", (long)st.st_size, S_ISREG(st.st_mode));
	SHOWOK("ftruncate", ftruncate(fd, 3));
	SHOWOK("stat", stat(path, &st));
	printf("size %ld\n", (long)st.st_size);
	SHOW("fcntl getfd", fcntl(fd, F_GETFD));
	SHOW("fcntl getfl accmode", fcntl(fd, F_GETFL) & O_ACCMODE);
	SHOW("ioctl TCGETS", ioctl(fd, TCGETS, &tio));
	SHOW("ioctl TCGETS stdin", ioctl(0, TCGETS, &tio) < 0 ? -1 : 0);
	SHOW("dup2", dup2(fd, 20));
	SHOW("lseek dup", lseek(20, 0, SEEK_CUR) == lseek(fd, 0, SEEK_CUR));
	SHOWOK("close", close(20));
	SHOW("close again", close(20));
	SHOW("read dir", read(open(dir, O_RDONLY | O_DIRECTORY), buf, 4));
	SHOW("open missing", open("/tmp/definitely/missing", O_RDONLY));
	SHOW("open notdir", open(path, O_RDONLY | O_DIRECTORY));
	SHOW("access missing", access("/tmp/definitely-missing", F_OK));
	SHOWOK("access", access(path, R_OK | W_OK));
	snprintf(path2, sizeof(path2), "%s/b.txt", dir);
	SHOWOK("rename", rename(path, path2));
	d = opendir(dir);
	for (struct dirent *e; d && (e = readdir(d));)
		n++;
	printf("entries: %d\n", n);
	closedir(d);
	SHOWOK("chdir", chdir(dir));
	printf("cwd ends with dir: %d\n", getcwd(cwd, sizeof(cwd)) && !strcmp(cwd, dir));
	SHOW("openat relative", openat(AT_FDCWD, "b.txt", O_RDONLY) >= 0);
	SHOW("getcwd small", getcwd(cwd, 2) ? 0 : -1);
	SHOWOK("unlink", unlink(path2));
	SHOW("unlink again", unlink(path2));
	SHOWOK("chdir /", chdir("/"));
	SHOWOK("rmdir", rmdir(dir));
	SHOW("write badfd", write(99, "x", 1));
	return 0;
}
