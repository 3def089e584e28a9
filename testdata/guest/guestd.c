/*
 * guestd: what the tiny test guest of connector/libvirt runs (built static
 * by testdata/guest.sh into its initramfs).
 *
 *   guestd gap          measures the guest-visible stun: sleeps 1 ms in a
 *                       loop and prints, for every 250 ms window, the
 *                       largest gap between two wake-ups ("G seq max_us").
 *   guestd write DIR    writes a 4 KiB file DIR/NNNNNN every 100 ms, each
 *                       fsync'd with its folder, and prints the latency
 *                       of each write+fsync ("W seq lat_us"); a file's
 *                       content names its number, so a reader can check
 *                       every reported write reached the disk.
 *
 * Output goes to stdout (the serial console file) one line per write(2).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long now_us(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void say(const char *line) {
	ssize_t n = write(1, line, strlen(line));
	(void)n;
}

static int gap(void) {
	struct timespec ms = {0, 1000000};
	long long last = now_us(), start = last, max = 0;
	long seq = 0;
	char buf[96];
	for (;;) {
		nanosleep(&ms, NULL);
		long long t = now_us();
		if (t - last > max)
			max = t - last;
		last = t;
		if (t - start >= 250000) {
			snprintf(buf, sizeof buf, "G %ld %lld\n", seq++, max);
			say(buf);
			start = t;
			max = 0;
		}
	}
}

static int writer(const char *dir) {
	char path[512], buf[4096], line[96];
	struct timespec pause = {0, 100000000};
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	if (dfd < 0) {
		perror(dir);
		return 1;
	}
	for (long seq = 0;; seq++) {
		int n = snprintf(buf, sizeof buf, "snapscan guest write %06ld\n", seq);
		for (int i = n; i < (int)sizeof buf; i++)
			buf[i] = 'a' + (seq + i) % 26;
		snprintf(path, sizeof path, "%s/%06ld", dir, seq);
		long long t0 = now_us();
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0 || write(fd, buf, sizeof buf) != (ssize_t)sizeof buf || fsync(fd) != 0 || fsync(dfd) != 0) {
			snprintf(line, sizeof line, "E %ld write failed\n", seq);
			say(line);
			return 1;
		}
		close(fd);
		snprintf(line, sizeof line, "W %ld %lld\n", seq, now_us() - t0);
		say(line);
		nanosleep(&pause, NULL);
	}
}

int main(int argc, char **argv) {
	if (argc == 2 && strcmp(argv[1], "gap") == 0)
		return gap();
	if (argc == 3 && strcmp(argv[1], "write") == 0)
		return writer(argv[2]);
	fprintf(stderr, "usage: guestd gap | guestd write DIR\n");
	return 2;
}
