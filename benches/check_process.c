/* The baseline of benches/check_process.sh: a plain C loop that opens,
 * reads and closes each file named on its command line (the /proc/sys
 * files of the keys `holdfast check` reads), as whole processes are timed
 * against each other. It exits 1 when a file cannot be read, so a baseline
 * that silently did less work is never timed. */
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	char buf[4096];
	long total = 0;
	for (int i = 1; i < argc; i++) {
		int fd = open(argv[i], O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			perror(argv[i]);
			return 1;
		}
		ssize_t n;
		while ((n = read(fd, buf, sizeof buf)) > 0)
			total += n;
		close(fd);
		if (n < 0) {
			perror(argv[i]);
			return 1;
		}
	}
	/* Use the result, so the reads are the program's work. */
	return total > 0 ? 0 : 1;
}
