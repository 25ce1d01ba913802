/* cgroupfs file access and the removal of a launch cgroup, shared by the native front
 * (cgroup.c: a launch refused after its cgroup was made) and the native supervisor
 * (supervise.c: after the app), so that both remove exactly as cgroup.Cgroup.remove. */
#ifndef SANDRUN_CGROUPFS_H
#define SANDRUN_CGROUPFS_H

#include <stddef.h>

#define CGROUP_EMPTY_TIMEOUT_NS 2000000000LL /* cgroup._EMPTY_TIMEOUT */
#define CGROUP_KILL_ROUNDS 50                /* cgroup._KILL_ROUNDS */

long long cgfs_now_ns(void);           /* CLOCK_MONOTONIC */
void cgfs_sleep_ns(long long ns);      /* through EINTR */
int cgfs_gone(int err);                /* ENOENT or ENODEV: a removed cgroup (or file) */
/* The whole of a cgroupfs file under dir_fd, malloc'ed and NUL-terminated; NULL with
 * errno on failure (cgroup._read). */
char *cgfs_read_all(int dir_fd, const char *name);
/* Kernfs.write: one write(2), cgroupfs takes a value only whole; -1 with errno. */
int cgfs_write_at(int dir_fd, const char *name, const char *text);
/* 1 exists, 0 does not (ENOENT), -1 another error (cgroup._exists). */
int cgfs_exists_at(int dir_fd, const char *name);
/* Whether `word` (len bytes) is one of the whitespace-separated words of `text`. */
int cgfs_has_word(const char *text, const char *word, size_t len);
/* Kill every process of the launch cgroup open at `fd` (v2 with cgroup.kill: at once;
 * else SIGKILL by pidfd, rounds) and wait until it is empty: 1 empty (or gone), 0 some
 * survive, -1 with errno. */
int cgfs_empty(int version, int fd);
/* rmdir parent_fd/name, retrying while killed processes leave; then base_fd/sandrun
 * (EBUSY while other launches use it: fine). 1 done, 0 still busy, -1 with errno. */
int cgfs_remove_launch_dir(int base_fd, int parent_fd, const char *name);

#endif
