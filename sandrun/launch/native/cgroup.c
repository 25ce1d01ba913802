/* The launch cgroup of the native front: cgroup.create / Cgroup.enter / Cgroup.remove /
 * Cgroup.handoff (sandrun/sandbox/cgroup.py) for a plan decided by the cold path
 * (cgroup.native_plan, in the native record: front.h). Keep them in step.
 *
 * Per node of the plan: our cgroup's directory DIR in one hierarchy, opened as
 * open_trusted_path resolves it and checked to be on that cgroup mount (st_dev); then
 * DIR/sandrun (root's, not writable by others) and DIR/sandrun/<name>, everything after
 * DIR relative to directory fds. Every DIR is opened before anything is made, so a
 * refusal there changes nothing on the host. What the supervisor does with the nodes
 * afterwards: supervise.c's remove_cgroup (the same as cgroup_remove here).
 *
 * A setting belongs to one limit (memory, tasks, cpu_quota, cpu_weight), known from its
 * file name; the settings of a limit are consecutive in the plan, as cgroup._settings
 * lists them. A required limit that cannot be written refuses the launch; one that is not
 * required stops at its first failed write (what it wrote before stays, as in Python).
 */
#include "front.h"
#include "cgroupfs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#define PARENT "sandrun"                  /* cgroup.PARENT */
#define LAUNCHER_LEAF "sandrun-launcher"  /* cgroup.LAUNCHER_LEAF */
#define NAME_MAX_LEN 100                  /* cgroup.NAME_MAX */
#define PARENT_RETRIES 3                  /* cgroup._PARENT_RETRIES */
#define DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)

/* Why the last helper failed when errno alone does not say it (cgroup.py's OSError
 * texts); NULL: strerror(errno). Set together with errno by fail(). */
static const char *failure_text;

static int fail(int err, const char *text) {
    failure_text = text;
    errno = err;
    return -1;
}

static const char *why(int err) { return failure_text ? failure_text : strerror(err); }


/* Append to a NUL-terminated message of `size` bytes; truncates, never overflows. */
__attribute__((format(printf, 3, 4))) static void append(char *buf, size_t size,
                                                         const char *fmt, ...) {
    size_t used = strnlen(buf, size);
    if (used + 1 >= size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, size - used, fmt, ap);
    va_end(ap);
}

static void close_fd(int *fd) {
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* ------------------------------------------------------------ fd-based file access */


/* _open_owned_dir: `name` under dir_fd, a directory owned by root, writable by it only. */
static int open_owned_dir(int dir_fd, const char *name) {
    int fd = openat(dir_fd, name, DIR_FLAGS);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int saved = errno;
        close(fd);
        return fail(saved, NULL);
    }
    if (st.st_uid != 0 || (st.st_mode & 022)) {
        close(fd);
        return fail(EPERM, "not owned by root or writable by others");
    }
    return fd;
}

/* ------------------------------------------------------------ limits and messages */

/* The limit a setting's file belongs to (cgroup._settings, reversed); the file itself
 * for a file that none of them writes. */
static const char *limit_of(const char *file) {
    if (strncmp(file, "memory.", 7) == 0)
        return "memory";
    if (strncmp(file, "pids.", 5) == 0)
        return "tasks";
    if (!strcmp(file, "cpu.max") || !strcmp(file, "cpu.cfs_period_us") ||
        !strcmp(file, "cpu.cfs_quota_us"))
        return "cpu_quota";
    if (!strcmp(file, "cpu.weight") || !strcmp(file, "cpu.shares"))
        return "cpu_weight";
    return file;
}

static const char *controller_of(const char *limit) {
    if (!strcmp(limit, "tasks"))
        return "pids";
    if (!strncmp(limit, "cpu_", 4))
        return "cpu";
    return limit;
}

/* The end of the limit whose settings start at `first` (exclusive). */
static size_t limit_end(const struct cgroup_node *node, size_t first) {
    const char *limit = limit_of(node->settings[first].file);
    size_t end = first + 1;
    while (end < node->n_settings && !strcmp(limit_of(node->settings[end].file), limit))
        end++;
    return end;
}

static int limit_required(const struct cgroup_node *node, size_t first, size_t end) {
    for (size_t i = first; i < end; i++)
        if (node->settings[i].required)
            return 1;
    return 0;
}

/* " (VALUE)" of cgroup._refusal: the limit's value as the profile gave it, recovered from
 * the file that carries it; "" when none does. */
static void limit_value(const struct cgroup_node *node, size_t first, size_t end, char *out,
                        size_t size) {
    out[0] = 0;
    for (size_t i = first; i < end; i++) {
        const char *file = node->settings[i].file, *value = node->settings[i].value;
        char *rest;
        errno = 0;
        unsigned long long v = strtoull(value, &rest, 10);
        if (errno || rest == value)
            continue;
        if (!strcmp(file, "memory.max") || !strcmp(file, "memory.limit_in_bytes") ||
            !strcmp(file, "pids.max") || !strcmp(file, "cpu.weight")) {
            if (*rest)
                continue;
        } else if (!strcmp(file, "cpu.max") || !strcmp(file, "cpu.cfs_quota_us")) {
            v /= 1000; /* percent of one CPU * CFS_PERIOD_US / 100 */
        } else if (!strcmp(file, "cpu.shares")) {
            if (*rest)
                continue;
            v = (v * 100 + 1023) / 1024; /* max(2, weight * 1024 // 100), inverted */
        } else {
            continue;
        }
        snprintf(out, size, " (%llu)", v);
        return;
    }
}

/* "the LIMIT limit (VALUE) cannot be enforced here: " + `reason` for every required
 * limit of `node` ("; "-separated: cgroup._refusal); `unavailable`: the reason follows
 * "no CONTROLLER controller available: ". */
static void refuse_node(const struct cgroup_node *node, int unavailable, const char *reason,
                        char *err, size_t size) {
    int found = 0;
    for (size_t first = 0, end; first < node->n_settings; first = end) {
        end = limit_end(node, first);
        if (!limit_required(node, first, end))
            continue;
        char value[64];
        limit_value(node, first, end, value, sizeof value);
        const char *limit = limit_of(node->settings[first].file);
        append(err, size, "%sthe %s limit%s cannot be enforced here: %s%s%s%s",
               found++ ? "; " : "", limit, value, unavailable ? "no " : "",
               unavailable ? controller_of(limit) : "",
               unavailable ? " controller available: " : "", reason);
    }
    if (!found)
        append(err, size, "%s", reason);
}

/* ------------------------------------------------------------ creating */

/* cgroup._open_dir_path (front.h): a directory opened one component at a time from "/",
 * following no symbolic link at all ("..": EINVAL). -1 with errno. */
int cgroup_open_dir(const char *path) {
    int fd = open("/", DIR_FLAGS);
    if (fd < 0)
        return -1;
    const char *p = path;
    while (*p) {
        size_t len = strcspn(p, "/");
        if (len == 0 || (len == 1 && p[0] == '.')) {
            p += len + (p[len] == '/');
            continue;
        }
        char part[NAME_MAX + 1];
        if (len > NAME_MAX || (len == 2 && p[0] == '.' && p[1] == '.')) {
            close(fd);
            errno = len > NAME_MAX ? ENAMETOOLONG : EINVAL;
            return -1;
        }
        memcpy(part, p, len);
        part[len] = 0;
        int child = openat(fd, part, DIR_FLAGS);
        int saved = errno;
        close(fd);
        if (child < 0) {
            errno = saved;
            return -1;
        }
        fd = child;
        p += len + (p[len] == '/');
    }
    return fd;
}

/* _open_cgroup: our cgroup's directory in the node's hierarchy, on that cgroup mount. */
static int open_cgroup(const struct cgroup_node *node) {
    failure_text = NULL;
    int fd = cgroup_open_dir(node->dir);
    if (fd < 0)
        return fail(errno, NULL);
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int saved = errno;
        close(fd);
        return fail(saved, NULL);
    }
    if (major(st.st_dev) != node->dev_major || minor(st.st_dev) != node->dev_minor) {
        close(fd);
        return fail(EXDEV, "not on the cgroup mount that mountinfo names");
    }
    return fd;
}

/* "+a +b" for the words of `delegate` missing from dir_fd's cgroup.subtree_control, into
 * `out`; 0 with out "" when none is missing, -1 with errno. */
static int missing_controllers(int dir_fd, const char *delegate, char *out, size_t size) {
    out[0] = 0;
    if (!delegate[strspn(delegate, " ")])
        return 0; /* nothing to delegate (v1, the tracking node) */
    char *enabled = cgfs_read_all(dir_fd, "cgroup.subtree_control");
    if (!enabled)
        return -1;
    for (const char *p = delegate; *p;) {
        p += strspn(p, " ");
        size_t n = strcspn(p, " ");
        if (n && !cgfs_has_word(enabled, p, n))
            append(out, size, "%s+%.*s", out[0] ? " " : "", (int)n, p);
        p += n;
    }
    free(enabled);
    if (strnlen(out, size) + 1 >= size) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

/* _delegate: enable the node's controllers for the children of our v2 cgroup. */
static int delegate(int base_fd, const char *controllers) {
    char missing[1024];
    if (missing_controllers(base_fd, controllers, missing, sizeof missing) < 0)
        return -1;
    if (!missing[0] || cgfs_write_at(base_fd, "cgroup.subtree_control", missing) == 0)
        return 0;
    if (errno != EBUSY)
        return -1;
    /* EBUSY: the no-internal-processes rule. We are the only process here: move into a
     * leaf so our cgroup can delegate; shared with others: it cannot. */
    char me[32];
    snprintf(me, sizeof me, "%d", (int)getpid());
    char *procs = cgfs_read_all(base_fd, "cgroup.procs");
    if (!procs)
        return -1;
    int alone = 0;
    for (const char *p = procs; *p;) {
        p += strspn(p, " \n");
        size_t n = strcspn(p, " \n");
        if (n && (n != strlen(me) || memcmp(p, me, n))) {
            alone = 0;
            break;
        }
        if (n)
            alone = 1;
        p += n;
    }
    free(procs);
    if (!alone)
        return fail(EBUSY, NULL);
    if (mkdirat(base_fd, LAUNCHER_LEAF, 0755) < 0 && errno != EEXIST)
        return -1;
    int leaf = open_owned_dir(base_fd, LAUNCHER_LEAF);
    if (leaf < 0)
        return -1;
    int moved = cgfs_write_at(leaf, "cgroup.procs", me);
    int saved = errno;
    close(leaf);
    if (moved < 0)
        return fail(saved, NULL);
    return cgfs_write_at(base_fd, "cgroup.subtree_control", missing);
}

/* _make_launch_dir: DIR/sandrun/<name>, reusing a stale empty one. -1 with errno, or -2
 * with `err` filled (in use by processes). */
static int make_launch_dir(int parent_fd, const char *name, char *err, size_t size) {
    if (mkdirat(parent_fd, name, 0755) < 0) {
        if (errno != EEXIST)
            return -1;
        /* Left by a launcher that died (SIGKILL) with the same pid: reuse it only if
         * empty. */
        int stale = openat(parent_fd, name, DIR_FLAGS);
        if (stale < 0)
            return -1;
        char *procs = cgfs_read_all(stale, "cgroup.procs");
        int saved = errno;
        close(stale);
        if (!procs)
            return fail(saved, NULL);
        const char *p = procs + strspn(procs, " \n");
        if (*p) {
            char pids[128] = "";
            for (int i = 0; i < 5 && *p; i++) {
                size_t n = strcspn(p, " \n");
                append(pids, sizeof pids, "%s%.*s", i ? " " : "", (int)n, p);
                p += n;
                p += strspn(p, " \n");
            }
            snprintf(err, size, "cgroup %s already exists and holds processes (%s)", name,
                     pids);
            free(procs);
            return -2;
        }
        free(procs);
        if (unlinkat(parent_fd, name, AT_REMOVEDIR) < 0 || mkdirat(parent_fd, name, 0755) < 0)
            return -1;
    }
    return openat(parent_fd, name, DIR_FLAGS);
}

/* _make_node: sandrun/<name> under the node's base_fd (already open), delegating the
 * node's controllers (v2). Fills parent_fd and fd. -1 with errno (and failure_text), or
 * -2 with `err` filled. */
static int make_node(struct cgroup_node *node, const char *name, char *err, size_t size) {
    failure_text = NULL;
    const char *controllers = node->version == 2 && node->delegate ? node->delegate : "";
    if (controllers[strspn(controllers, " ")] && delegate(node->base_fd, controllers) < 0)
        return -1;
    int made_parent = 0; /* only what this call made may be removed on a failure */
    for (int attempt = 0;; attempt++) {
        failure_text = NULL;
        int result = -1;
        char missing[1024] = "";
        if (mkdirat(node->base_fd, PARENT, 0755) == 0)
            made_parent = 1;
        else if (errno != EEXIST)
            return -1;
        node->parent_fd = open_owned_dir(node->base_fd, PARENT);
        if (node->parent_fd >= 0 &&
            missing_controllers(node->parent_fd, controllers, missing, sizeof missing) == 0 &&
            (!missing[0] || cgfs_write_at(node->parent_fd, "cgroup.subtree_control", missing) == 0))
            result = make_launch_dir(node->parent_fd, name, err, size);
        if (result >= 0) {
            node->fd = result;
            return 0;
        }
        int saved = errno;
        close_fd(&node->parent_fd);
        /* A concurrent remove took `sandrun` away between our mkdir and now: again. */
        if (result == -2 || !cgfs_gone(saved) || attempt + 1 == PARENT_RETRIES) {
            /* Not left behind when we made it (a launch using it keeps it: EBUSY);
             * one found there, maybe refused as another user's, is never touched. */
            if (made_parent)
                unlinkat(node->base_fd, PARENT, AT_REMOVEDIR);
            errno = saved;
            return result;
        }
    }
}

/* The node's settings, in order (cgroup._build). -1 with `err` filled when a required
 * one fails. */
static int write_settings(struct cgroup_node *node, char *err, size_t size) {
    for (size_t first = 0, end; first < node->n_settings; first = end) {
        end = limit_end(node, first);
        for (size_t i = first; i < end; i++) {
            const struct cgroup_setting *s = &node->settings[i];
            const char *when = s->when ? s->when : "";
            char reason[4600];
            int present = 1;
            if (when[0] == '+' || when[0] == '-') {
                present = cgfs_exists_at(node->fd, when + 1);
                if (present == (when[0] == '+' ? 0 : 1))
                    continue; /* not for this kernel's files */
            }
            if (present < 0) {
                snprintf(reason, sizeof reason, "looking for %s in %s failed: %s", when + 1,
                         node->path, strerror(errno));
            } else if (cgfs_write_at(node->fd, s->file, s->value) == 0) {
                continue;
            } else {
                snprintf(reason, sizeof reason, "writing %s=%s in %s failed: %s", s->file,
                         s->value, node->path, strerror(errno));
            }
            if (s->required) {
                char value[64];
                limit_value(node, first, end, value, sizeof value);
                snprintf(err, size, "the %s limit%s cannot be enforced here: %s",
                         limit_of(s->file), value, reason);
                return -1;
            }
            break; /* not required: this limit stays as far as it got */
        }
    }
    return 0;
}

static void reset_node(struct cgroup_node *node) {
    close_fd(&node->fd);
    close_fd(&node->parent_fd);
    close_fd(&node->base_fd);
}

int cgroup_create(struct spec *spec, const char *name, char *err, size_t err_size) {
    err[0] = 0;
    for (size_t i = 0; i < spec->n_nodes; i++) {
        struct cgroup_node *node = &spec->nodes[i];
        node->base_fd = node->parent_fd = node->fd = -1;
        node->path[0] = 0;
    }
    /* cgroup.check_name */
    size_t len = strlen(name);
    if (!len || len > NAME_MAX_LEN ||
        strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789._-") != len ||
        !strchr("abcdefghijklmnopqrstuvwxyz0123456789", name[0]) || !strcmp(name, PARENT) ||
        !strcmp(name, LAUNCHER_LEAF)) {
        snprintf(err, err_size, "invalid cgroup name '%s'", name);
        return -1;
    }
    /* Decide first: every DIR opened and checked before anything is made. */
    for (size_t i = 0; i < spec->n_nodes; i++) {
        struct cgroup_node *node = &spec->nodes[i];
        const char *dir = node->dir;
        size_t dir_len = strlen(dir);
        while (dir_len > 1 && dir[dir_len - 1] == '/')
            dir_len--; /* hierarchy.dir.rstrip("/") */
        if (dir_len == 1 && dir[0] == '/')
            dir_len = 0;
        int n = snprintf(node->path, sizeof node->path, "%.*s/%s/%s", (int)dir_len, dir, PARENT,
                         name);
        node->base_fd = n > 0 && (size_t)n < sizeof node->path ? open_cgroup(node)
                                                               : fail(ENAMETOOLONG, NULL);
        if (node->base_fd >= 0 || !node->required)
            continue;
        char reason[4600];
        snprintf(reason, sizeof reason, "cannot use %s: %s", dir, why(errno));
        refuse_node(node, 1, reason, err, err_size);
        goto undo;
    }
    int made = 0;
    for (size_t i = 0; i < spec->n_nodes; i++) {
        struct cgroup_node *node = &spec->nodes[i];
        /* The v2 tracking node (no settings) only along with a node that enforces. */
        if (node->base_fd < 0 || (!node->n_settings && !made)) {
            reset_node(node);
            node->path[0] = 0;
            continue;
        }
        char held[512] = "";
        int result = make_node(node, name, held, sizeof held);
        if (result < 0) {
            int saved = errno;
            reset_node(node);
            if (!node->required && (result == -1 || !node->n_settings)) {
                node->path[0] = 0;
                continue; /* best effort (the tracking node) or only limits not required */
            }
            if (result == -2) {
                snprintf(err, err_size, "%s", held);
            } else {
                char reason[4600];
                snprintf(reason, sizeof reason, "cannot create cgroup %s under %s: %s", name,
                         node->dir, why(saved));
                refuse_node(node, 0, reason, err, err_size);
            }
            goto undo;
        }
        made++;
        if (write_settings(node, err, err_size) < 0)
            goto undo;
    }
    return 0;
undo:
    cgroup_remove(spec, name);
    return -1;
}

int cgroup_enter(struct spec *spec, pid_t pid, char *err, size_t err_size) {
    char text[32];
    snprintf(text, sizeof text, "%d", (int)pid);
    for (size_t i = 0; i < spec->n_nodes; i++) {
        struct cgroup_node *node = &spec->nodes[i];
        if (node->fd < 0)
            continue;
        if (cgfs_write_at(node->fd, "cgroup.procs", text) < 0) {
            snprintf(err, err_size, "cannot put process %d into cgroup %s: %s", (int)pid,
                     node->path, strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ removing */

void cgroup_remove(struct spec *spec, const char *name) {
    int saved = errno;
    /* v2 first: cgroup.kill kills every process of the launch at once. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < spec->n_nodes; i++) {
            struct cgroup_node *node = &spec->nodes[i];
            if ((node->version == 2) != (pass == 0))
                continue;
            if (node->fd >= 0 && node->parent_fd >= 0 && node->base_fd >= 0 &&
                cgfs_empty(node->version, node->fd) == 1)
                cgfs_remove_launch_dir(node->base_fd, node->parent_fd, name);
            reset_node(node);
            node->path[0] = 0;
        }
    }
    errno = saved;
}

int cgroup_handoff(struct spec *spec, char out[][4200], int max) {
    int count = 0;
    for (size_t i = 0; i < spec->n_nodes; i++) {
        struct cgroup_node *node = &spec->nodes[i];
        if (node->fd < 0)
            continue;
        if (count == max)
            return fail(E2BIG, NULL);
        int fds[3] = {node->base_fd, node->parent_fd, node->fd};
        for (int j = 0; j < 3; j++) {
            int flags = fcntl(fds[j], F_GETFD);
            if (flags < 0 || fcntl(fds[j], F_SETFD, flags & ~FD_CLOEXEC) < 0)
                return -1;
        }
        int n = snprintf(out[count], sizeof out[count], "%d:%d:%d:%d:%s", node->version,
                         node->base_fd, node->parent_fd, node->fd, node->path);
        if (n < 0 || (size_t)n >= sizeof out[count])
            return fail(ENAMETOOLONG, NULL);
        count++;
    }
    return count;
}
