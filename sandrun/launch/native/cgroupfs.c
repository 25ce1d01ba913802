/* cgroupfs.h: cgroupfs file access and the removal of a launch cgroup, shared by the
 * native front (cgroup.c) and the native supervisor (supervise.c). */
#define _GNU_SOURCE
#include "cgroupfs.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define CGROUP_FILE_MAX (256u << 20) /* cgroup._read_fd's bound */

long long cgfs_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void cgfs_sleep_ns(long long ns) {
    struct timespec ts = {ns / 1000000000LL, ns % 1000000000LL};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

int cgfs_gone(int err) { return err == ENOENT || err == ENODEV; }

/* The whole of a cgroupfs file under dir_fd, malloc'ed and NUL-terminated; NULL with
 * errno on failure (cgroup._read). */
char *cgfs_read_all(int dir_fd, const char *name) {
    int fd = openat(dir_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t size = 4096, len = 0;
    char *buf = malloc(size);
    while (buf) {
        if (len + 1 == size) {
            char *bigger = size < CGROUP_FILE_MAX ? realloc(buf, size * 2) : NULL;
            if (!bigger) {
                free(buf);
                buf = NULL;
                errno = size < CGROUP_FILE_MAX ? ENOMEM : EFBIG;
                break;
            }
            buf = bigger;
            size *= 2;
        }
        ssize_t n = read(fd, buf + len, size - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int saved = errno;
            free(buf);
            buf = NULL;
            errno = saved;
            break;
        }
        if (n == 0) {
            buf[len] = 0;
            break;
        }
        len += (size_t)n;
    }
    int saved = errno;
    close(fd);
    errno = saved;
    return buf;
}

/* Kernfs.write: one write(2), cgroupfs takes a value only whole. */
int cgfs_write_at(int dir_fd, const char *name, const char *text) {
    int fd = openat(dir_fd, name, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = strlen(text);
    ssize_t n = write(fd, text, len);
    int saved = n < 0 ? errno : EIO; /* a short write: cgroup.py's "short write" */
    close(fd);
    if (n == (ssize_t)len)
        return 0;
    errno = saved;
    return -1;
}

/* 1 exists, 0 does not (ENOENT), -1 another error (cgroup._exists). */
int cgfs_exists_at(int dir_fd, const char *name) {
    struct stat st;
    if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
        return 1;
    return errno == ENOENT ? 0 : -1;
}

/* Whether `word` is one of the whitespace-separated words of `text`. */
int cgfs_has_word(const char *text, const char *word, size_t len) {
    for (const char *p = text; *p;) {
        p += strspn(p, " \t\n");
        size_t n = strcspn(p, " \t\n");
        if (n == len && n && memcmp(p, word, n) == 0)
            return 1;
        p += n;
    }
    return 0;
}

/* 1 while the v2 cgroup holds processes; 0 empty; -1 error. */
static int populated(int fd) {
    char *events = cgfs_read_all(fd, "cgroup.events");
    if (!events)
        return -1;
    int result = strstr(events, "populated 0") ? 0 : 1;
    free(events);
    return result;
}

/* Whether a cgroup.procs text lists no process. */
static int no_pids(const char *text) { return text[strspn(text, " \n")] == 0; }

/* SIGKILL the pids listed in `list` (read from fd's cgroup.procs) through pidfds taken
 * before looking again: a pid that exited and was reused outside is never hit. */
static void kill_listed(int fd, const char *list) {
    size_t count = 0, max = 0;
    for (const char *p = list; *p; p++)
        max += *p == '\n';
    max++;
    int *pids = calloc(max, sizeof *pids), *pidfds = calloc(max, sizeof *pidfds);
    if (!pids || !pidfds)
        goto out;
    for (const char *p = list; *p && count < max;) {
        char *end;
        long pid = strtol(p, &end, 10);
        if (end == p)
            break;
        p = end + strspn(end, " \n");
        if (pid <= 0 || pid > 0x7fffffff)
            continue;
        int pidfd = (int)syscall(SYS_pidfd_open, (int)pid, 0);
        if (pidfd >= 0) {
            pids[count] = (int)pid;
            pidfds[count++] = pidfd;
        }
    }
    char *still = cgfs_read_all(fd, "cgroup.procs");
    for (size_t i = 0; i < count; i++) {
        char me[32];
        int n = snprintf(me, sizeof me, "%d", pids[i]);
        if (still && cgfs_has_word(still, me, (size_t)n))
            syscall(SYS_pidfd_send_signal, pidfds[i], SIGKILL, NULL, 0);
        close(pidfds[i]);
    }
    free(still);
out:
    free(pids);
    free(pidfds);
}

int cgfs_empty(int version, int fd) {
    if (version == 2 && cgfs_exists_at(fd, "cgroup.kill") == 1) {
        int p = populated(fd);
        if (p < 0)
            return cgfs_gone(errno) ? 1 : -1;
        if (p && cgfs_write_at(fd, "cgroup.kill", "1") < 0)
            return cgfs_gone(errno) ? 1 : -1;
        long long deadline = cgfs_now_ns() + CGROUP_EMPTY_TIMEOUT_NS, delay = 200000;
        for (;;) {
            p = populated(fd);
            if (p < 0)
                return cgfs_gone(errno) ? 1 : -1;
            if (!p)
                return 1;
            if (cgfs_now_ns() > deadline)
                return 0;
            cgfs_sleep_ns(delay);
            delay = delay * 2 < 20000000 ? delay * 2 : 20000000;
        }
    }
    for (int round = 0; round <= CGROUP_KILL_ROUNDS; round++) {
        char *procs = cgfs_read_all(fd, "cgroup.procs");
        if (!procs)
            return cgfs_gone(errno) ? 1 : -1;
        int empty = no_pids(procs);
        if (!empty && round < CGROUP_KILL_ROUNDS)
            kill_listed(fd, procs);
        free(procs);
        if (empty)
            return 1;
        long long pause = 500000LL * (round + 1);
        if (round < CGROUP_KILL_ROUNDS)
            cgfs_sleep_ns(pause < 20000000 ? pause : 20000000);
    }
    return 0;
}

int cgfs_remove_launch_dir(int base_fd, int parent_fd, const char *name) {
    long long deadline = cgfs_now_ns() + CGROUP_EMPTY_TIMEOUT_NS, delay = 200000;
    while (unlinkat(parent_fd, name, AT_REMOVEDIR) < 0 && !cgfs_gone(errno)) {
        if (errno != EBUSY)
            return -1;
        if (cgfs_now_ns() > deadline)
            return 0;
        cgfs_sleep_ns(delay);
        delay = delay * 2 < 20000000 ? delay * 2 : 20000000;
    }
    int saved = errno;
    unlinkat(base_fd, "sandrun", AT_REMOVEDIR); /* EBUSY, ENOTEMPTY: other launches */
    errno = saved;
    return 1;
}
