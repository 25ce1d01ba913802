/* The launch of the native front: runner._launch(spec, args, handoff=True) for a
 * privileged spec, one for one (sandrun/launch/runner.py; the kernel calls of
 * sandrun/sandbox/kernel.py). Keep them in step: same order, same messages and hints.
 *
 * The launcher (this process) unshares its PID namespace, makes the launch cgroup and
 * forks the namespace's init; it puts the init in the cgroup, gives it its go and
 * becomes the native supervisor (`launcher` mode). The init (PID 1) makes its private
 * mount, IPC and UTS namespaces, the private /tmp, /var/tmp, /dev/shm and /run, binds
 * what the app may write noexec, mounts a private /proc, builds the Landlock ruleset on
 * what the app will see, waits for the go, forks the app and becomes the native
 * supervisor (`init` mode). The app drops everything in DESIGN.md's fixed order
 * (enter_sandbox) and execs the interpreter. A failure in the init or the app is
 * reported on the err pipe in runner._report's format (the supervisor prints it).
 *
 * After the fork only the init allocates (the paths it keeps visible: it is
 * single-threaded); the app writes only into what the launcher prepared.
 */
#include "front.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/filter.h>
#include <linux/seccomp.h>

extern char **environ;

/* ------------------------------------------------------------ kernel.py's numbers */

/* The fd-based mount API and Landlock: the same numbers on every architecture but
 * alpha. (Debian 12's uapi headers predate the Landlock fields used here, and
 * <linux/mount.h> clashes with glibc's <sys/mount.h>: defined here as kernel.py does.) */
#define NR_OPEN_TREE 428
#define NR_MOVE_MOUNT 429
#define NR_FSOPEN 430
#define NR_FSCONFIG 431
#define NR_FSMOUNT 432
#define NR_MOUNT_SETATTR 442
#define NR_LANDLOCK_CREATE_RULESET 444
#define NR_LANDLOCK_ADD_RULE 445
#define NR_LANDLOCK_RESTRICT_SELF 446
#define K_OPEN_TREE_CLONE 1
#define K_AT_EMPTY_PATH 0x1000
#define K_AT_RECURSIVE 0x8000
#define K_MOVE_MOUNT_F_EMPTY_PATH 0x04
#define K_MOVE_MOUNT_T_EMPTY_PATH 0x40
#define K_FSOPEN_CLOEXEC 1
#define K_FSMOUNT_CLOEXEC 1
#define K_FSCONFIG_SET_STRING 1
#define K_FSCONFIG_CMD_CREATE 6
#define K_NO_EXEC_SUID_DEV (2 | 4 | 8) /* MOUNT_ATTR_NOSUID | NODEV | NOEXEC */
#define K_PR_SET_PDEATHSIG 1
#define K_PR_CAPBSET_DROP 24
#define K_PR_SET_NO_NEW_PRIVS 38
#define K_PR_GET_NO_NEW_PRIVS 39
#define K_PR_CAP_AMBIENT 47
#define K_PR_CAP_AMBIENT_CLEAR_ALL 4
#define K_PR_SET_MDWE 65
#define K_PR_MDWE_REFUSE_EXEC_GAIN 1
#define K_CLONE_NEWNS 0x00020000
#define K_CLONE_NEWUTS 0x04000000
#define K_CLONE_NEWIPC 0x08000000
#define K_CLONE_NEWPID 0x20000000
#define K_MS_NOSUID 2
#define K_MS_NODEV 4
#define K_MS_NOEXEC 8
#define K_MS_REC 16384
#define K_MS_PRIVATE (1 << 18)
#define LANDLOCK_RULE_PATH_BENEATH_ 1
#define LANDLOCK_RULE_NET_PORT_ 2
#define ACCESS_NET_BIND_TCP (1ULL << 0)
#define ACCESS_NET_CONNECT_TCP (1ULL << 1)
#define FS_FILE_RIGHTS ((1ULL << 0) | (1ULL << 1) | (1ULL << 2) | (1ULL << 14) | (1ULL << 15))
#define RULESET_ATTR_SIZE_FS 8
#define RULESET_ATTR_SIZE_NET 16
#define RULESET_ATTR_SIZE_SCOPED 24
#define BPF_MAXINSNS_ 4096
static const unsigned char bpf_load_arch[8] = {0x20, 0, 0, 0, 4, 0, 0, 0};

#define REPORT_MAGIC "SANDRUN-REPORT"
#define MAX_NODES 16       /* supervise.c's */
#define MAX_LISTEN_FDS 4096 /* runner._listen_fds */
#define DEFAULT_TMP_SIZE "25%"

struct ruleset_attr {
    uint64_t handled_access_fs, handled_access_net, scoped;
};

struct path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

struct net_port_attr {
    uint64_t allowed_access, port;
};

struct mount_attr_ {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};

static const int forwarded[] = {SIGTERM, SIGINT,  SIGHUP,  SIGQUIT, SIGUSR1, SIGUSR2,
                                SIGWINCH, SIGALRM, SIGCONT, SIGTSTP, SIGTTIN, SIGTTOU};

static const char *const private_mounts[] = {"/tmp", "/var/tmp", "/dev/shm", "/run"};

/* ------------------------------------------------------------ hints (runner, kernel, cgroup) */

#define HINT_PID_NS "sandrun needs root with CAP_SYS_ADMIN to isolate the app"
#define HINT_NS "sandrun needs root (CAP_SYS_ADMIN) for its private namespaces"
#define HINT_PRCTL "this kernel lacks a protection the profile requires"
#define HINT_MOUNT                                                                          \
    "sandrun needs root (CAP_SYS_ADMIN) and the mount API of Linux >= 5.12 for its private " \
    "mounts"
#define HINT_LISTEN \
    "start sandrun from a systemd .socket unit, or unset LISTEN_PID and LISTEN_FDS"
#define HINT_WRITABLE "create it, or remove it from the profile's read_write list"
#define HINT_REQUIRED "create it, or remove it from the profile's [filesystem] lists"
#define HINT_RULE_PATH "check the path and its parent directories"
#define HINT_LANDLOCK_ON "check that the kernel enables Landlock (lsm=...,landlock)"
#define HINT_LANDLOCK_BUG "report this as a sandrun bug, with the profile and kernel version"
#define HINT_RLIMIT "lower it, or raise the hard limit of the service that starts sandrun"
#define HINT_SETUID "refusing to run; report this as a sandrun bug"
#define HINT_RECOMPILE "recompile the filter with compile_filter()"
#define HINT_EXEC "check the interpreter and the profile's rules"
#define HINT_EXEC_NOEXEC \
    " (every read_write path is mounted noexec: none may contain the interpreter)"
#define HINT_CGROUP_UNAVAILABLE                                                             \
    "give sandrun's cgroup the controller (cgroup v2: run sandrun exec as a service or "    \
    "under `systemd-run --scope -p Delegate=yes`; cgroup v1: mount the controller's "       \
    "hierarchy), or remove the limit from `required` in the profile's [limits]"
#define HINT_CGROUP_SHARED                                                                  \
    "run sandrun exec as the only process of its cgroup, e.g. under `systemd-run --scope "  \
    "-p Delegate=yes`, or remove the limit from `required` in the profile's [limits]"
#define HINT_CGROUP_BUSY                                                                    \
    "another launch uses this name; launch cgroup names must be unique (they contain the " \
    "launcher's pid)"
#define HINT_CGROUP_NAME "launch cgroup names are made by sandrun (a sandrun bug)"
#define HINT_CGROUP_ENTER "the process must exist; sandrun exec must run as root"
#define HINT_SUPERVISOR \
    "reinstall sandrun (its native supervisor sandrun-supervise could not be executed)"

/* ------------------------------------------------------------ texts as Python shows them */

/* errno.errorcode's name (glibc's strerrorname_np, but where Python names an alias). */
static const char *errno_name(int err) {
    if (err == EDEADLK)
        return "EDEADLOCK";
    if (err == EOPNOTSUPP)
        return "ENOTSUP";
    return err == EHWPOISON ? NULL : strerrorname_np(err);
}

/* kernel.errno_text: "ENAME (strerror)" */
static const char *errno_text(int err, char *buf, size_t size) {
    const char *name = errno_name(err);
    if (name)
        snprintf(buf, size, "%s (%s)", name, strerror(err));
    else
        snprintf(buf, size, "errno %d (%s)", err, strerror(err));
    return buf;
}

/* What runner._report says for an OSError: "strerror (ENAME)" */
static const char *oserror_text(int err, char *buf, size_t size) {
    const char *name = errno_name(err);
    if (name)
        snprintf(buf, size, "%s (%s)", strerror(err), name);
    else
        snprintf(buf, size, "%s (%d)", strerror(err), err);
    return buf;
}

/* Python's repr() of a str, as the messages show paths: quoted, escaped (bounded). */
const char *py_repr(const char *s, char *out, size_t size) {
    char quote = strchr(s, '\'') && !strchr(s, '"') ? '"' : '\'';
    size_t at = 0;
    out[at++] = quote;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char piece[8];
        if (*p == '\\' || *p == (unsigned char)quote)
            snprintf(piece, sizeof piece, "\\%c", *p);
        else if (*p == '\n')
            snprintf(piece, sizeof piece, "\\n");
        else if (*p == '\r')
            snprintf(piece, sizeof piece, "\\r");
        else if (*p == '\t')
            snprintf(piece, sizeof piece, "\\t");
        else if (*p < 0x20 || *p == 0x7f)
            snprintf(piece, sizeof piece, "\\x%02x", *p);
        else
            snprintf(piece, sizeof piece, "%c", *p);
        size_t len = strlen(piece);
        if (at + len + 2 > size)
            break;
        memcpy(out + at, piece, len);
        at += len;
    }
    out[at++] = quote;
    out[at] = 0;
    return out;
}

/* ------------------------------------------------------------ the launcher's context */

struct env_list {
    char **entries; /* "NAME=VALUE", NULL-terminated */
    size_t count, capacity;
};

struct launch_ctx {
    struct spec *spec;
    char **argv; /* spec argv + args, NULL-terminated */
    struct env_list env;
    const char *cgroup;
    int cap_last, listen_fds, err_r, err_w, go_r, go_w, ruleset_fd;
    char title[512];
};

/* dict semantics: an entry of the same NAME is replaced where it is, else appended. */
static void env_put(struct env_list *env, char *entry) {
    size_t name_len = strcspn(entry, "=");
    for (size_t i = 0; i < env->count; i++) {
        if (strncmp(env->entries[i], entry, name_len) == 0 && env->entries[i][name_len] == '=') {
            env->entries[i] = entry;
            return;
        }
    }
    if (env->count + 1 < env->capacity) { /* never full: the launcher counted */
        env->entries[env->count++] = entry;
        env->entries[env->count] = NULL;
    }
}

/* ------------------------------------------------------------ failures after the fork */

static int report_fd = -1;
static const char *report_stage = "launch";

/* runner._report, then _exit(EXIT_REFUSED): "SANDRUN-REPORT\0stage\0message\0hint\0exit"
 * on the err pipe (the supervisor prints it and exits with `code`). */
__attribute__((format(printf, 3, 4))) static _Noreturn void fail(int code, const char *hint,
                                                                 const char *fmt, ...) {
    static char message[2048], payload[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    int n = snprintf(payload, sizeof payload, "%s%c%s%c%s%c%.1000s%c%d", REPORT_MAGIC, 0,
                     report_stage, 0, message, 0, hint ? hint : "", 0, code);
    if (n > 0 && (size_t)n < sizeof payload) {
        ssize_t ignored = write(report_fd, payload, (size_t)n);
        (void)ignored;
    }
    _exit(EXIT_REFUSED);
}

/* An OSError as runner._report words it (no hint). */
static _Noreturn void fail_os(int err) {
    char text[256];
    fail(EXIT_REFUSED, NULL, "%s", oserror_text(err, text, sizeof text));
}

/* open_trusted_path failed (not as "missing"): its refusal (kernel.open_trusted_path's
 * EnforcementError: `why` completes "PATH ..." and says what to do), or the OSError. */
static _Noreturn void fail_open(const char *path, int err, const char *why) {
    (void)path; /* the refusal names it */
    if (why)
        fail(EXIT_REFUSED, trusted_path_hint, "%s", why);
    fail_os(err);
}

/* runner._check / _check_prctl */
static void check(int result, const char *what, const char *hint) {
    if (result != 0)
        fail(EXIT_REFUSED, hint, "%s failed: %s", what, strerror(errno));
}

/* ------------------------------------------------------------ mounts (runner) */

/* runner._mount_syscall */
static long mount_syscall(const char *what, long number, long a, long b, long c, long d,
                          long e) {
    long result = syscall(number, a, b, c, d, e);
    if (result < 0) {
        char text[256];
        fail(EXIT_REFUSED, HINT_MOUNT, "%s failed: %s", what, errno_text(errno, text, sizeof text));
    }
    return result;
}

/* runner._clone_tree: a detached copy of the mount at `fd` and everything beneath it. */
static int clone_tree(int fd, const char *what) {
    return (int)mount_syscall(what, NR_OPEN_TREE, fd, (long)"",
                              K_OPEN_TREE_CLONE | K_AT_RECURSIVE | K_AT_EMPTY_PATH | O_CLOEXEC,
                              0, 0);
}

static void move_mount_(int source, int target, const char *what) {
    mount_syscall(what, NR_MOVE_MOUNT, source, (long)"", target, (long)"",
                  K_MOVE_MOUNT_F_EMPTY_PATH | K_MOVE_MOUNT_T_EMPTY_PATH);
}

/* runner._new_tmpfs: a detached noexec,nosuid,nodev tmpfs; the fd of its root. */
static int new_tmpfs(const char *const options[][2], size_t count) {
    int fs_fd = (int)mount_syscall("fsopen(tmpfs)", NR_FSOPEN, (long)"tmpfs", K_FSOPEN_CLOEXEC,
                                   0, 0, 0);
    for (size_t i = 0; i < count; i++) {
        char what[256];
        snprintf(what, sizeof what, "tmpfs option %s=%s", options[i][0], options[i][1]);
        mount_syscall(what, NR_FSCONFIG, fs_fd, K_FSCONFIG_SET_STRING, (long)options[i][0],
                      (long)options[i][1], 0);
    }
    mount_syscall("create a tmpfs", NR_FSCONFIG, fs_fd, K_FSCONFIG_CMD_CREATE, 0, 0, 0);
    int root = (int)mount_syscall("fsmount(tmpfs)", NR_FSMOUNT, fs_fd, K_FSMOUNT_CLOEXEC,
                                  K_NO_EXEC_SUID_DEV, 0, 0);
    close(fs_fd);
    return root;
}

struct used_paths {
    const char **paths;
    size_t count;
};

/* runner._paths_used: every host path the launch names, and where a link among them
 * leads (only which host paths stay visible: the rules still refuse untrusted links). */
static void paths_used(const struct spec *spec, struct used_paths *used) {
    const struct landlock_spec *ll = &spec->landlock;
    size_t max = 3 + spec->n_writable + spec->n_argv + (ll->present ? ll->n_paths : 0);
    used->paths = calloc(2 * max, sizeof *used->paths);
    if (!used->paths)
        fail_os(ENOMEM);
    size_t n = 0;
    used->paths[n++] = spec->state_dir;
    used->paths[n++] = spec->cwd;
    used->paths[n++] = spec->interpreter;
    for (size_t i = 0; i < spec->n_writable; i++)
        used->paths[n++] = spec->writable[i];
    for (size_t i = 0; i < spec->n_argv; i++)
        if (spec->argv[i][0] == '/')
            used->paths[n++] = spec->argv[i];
    if (ll->present)
        for (size_t i = 0; i < ll->n_paths; i++)
            used->paths[n++] = ll->paths[i].path;
    size_t named = n;
    for (size_t i = 0; i < named; i++) {
        struct stat st;
        if (lstat(used->paths[i], &st) == 0 && S_ISLNK(st.st_mode)) {
            char *real = realpath(used->paths[i], NULL); /* absent: not kept anyway */
            if (real)
                used->paths[n++] = real;
        }
    }
    used->count = n;
}

struct kept {
    const char *path;
    char *key; /* the path beneath the tmp dir, its parts joined with "/" */
    int tree, is_dir;
};

static int compare_kept(const void *a, const void *b) {
    return strcmp(((const struct kept *)a)->key, ((const struct kept *)b)->key);
}

/* runner._keep_beneath: clone, before the tmpfs covers them, the used paths beneath
 * `tmp` (outermost only: a clone holds what is beneath it). Returns how many. */
static size_t keep_beneath(const char *tmp, const struct used_paths *used, struct kept *kept) {
    size_t tmp_len = strlen(tmp), wanted = 0;
    for (size_t i = 0; i < used->count; i++) {
        const char *path = used->paths[i];
        if (strncmp(path, tmp, tmp_len) != 0 || path[tmp_len] != '/')
            continue;
        const char *rest = path + tmp_len + 1;
        char *key = malloc(strlen(rest) + 1);
        if (!key)
            fail_os(ENOMEM);
        size_t at = 0;
        for (const char *part = rest; *part;) {
            size_t len = strcspn(part, "/");
            if (len && !(len == 1 && part[0] == '.')) {
                if (at)
                    key[at++] = '/';
                memcpy(key + at, part, len);
                at += len;
            }
            part += len;
            if (*part == '/')
                part++;
        }
        key[at] = 0;
        if (!at) {
            free(key);
            continue;
        }
        size_t j = 0;
        while (j < wanted && strcmp(kept[j].key, key) != 0)
            j++;
        if (j < wanted) { /* a dict: the later path of the same key */
            kept[j].path = path;
            free(key);
        } else {
            kept[wanted++] = (struct kept){path, key, -1, 0};
        }
    }
    qsort(kept, wanted, sizeof *kept, compare_kept); /* an ancestor sorts first */
    size_t chosen = 0;
    for (size_t i = 0; i < wanted; i++) {
        int inside = 0;
        for (size_t j = 0; j < chosen && !inside; j++) {
            size_t len = strlen(kept[j].key);
            inside = strncmp(kept[i].key, kept[j].key, len) == 0 && kept[i].key[len] == '/';
        }
        if (inside)
            continue;
        const char *why = NULL;
        int fd = open_trusted_path(kept[i].path, -1, &why);
        if (fd < 0) {
            if (errno == ENOENT || errno == ENOTDIR)
                continue; /* an absent optional grant; a required one: the ruleset refuses */
            fail_open(kept[i].path, errno, why);
        }
        struct stat st;
        if (fstat(fd, &st) < 0)
            fail_os(errno);
        char what[4400];
        snprintf(what, sizeof what, "clone %s for the private %s", kept[i].path, tmp);
        struct kept made = kept[i];
        made.is_dir = S_ISDIR(st.st_mode);
        made.tree = clone_tree(fd, what);
        close(fd);
        kept[chosen++] = made;
    }
    return chosen;
}

/* runner._graft: mount `tree` at `key` beneath the fresh tmpfs `root`, making the way
 * there (only root has written to that tmpfs yet: nothing in it can be a trap). */
static void graft(int root, const char *key, int tree, int is_dir, const char *what) {
    char *parts = strdup(key);
    if (!parts)
        fail_os(ENOMEM);
    int current = root;
    for (char *name = parts; name;) {
        char *slash = strchr(name, '/');
        if (slash)
            *slash = 0;
        if (!slash && !is_dir) {
            int fd = openat(current, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                            0644);
            if (fd >= 0)
                close(fd);
            else if (errno != EEXIST)
                fail_os(errno);
        } else if (mkdirat(current, name, 0755) < 0 && errno != EEXIST) {
            fail_os(errno); /* EEXIST: made for an earlier path */
        }
        int next = openat(current, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (next < 0)
            fail_os(errno);
        if (current != root)
            close(current);
        current = next;
        name = slash ? slash + 1 : NULL;
    }
    move_mount_(tree, current, what);
    if (current != root)
        close(current);
    free(parts);
}

/* runner._mount_private_tmp: a fresh tmpfs (0700, the app user's) on /tmp, /var/tmp,
 * /dev/shm and /run, with the paths the launch names beneath them mounted through. */
static void mount_private_tmp(const struct spec *spec) {
    char size[32], uid[32], gid[32];
    if (spec->tmp_size)
        snprintf(size, sizeof size, "%lld", spec->tmp_size);
    else
        snprintf(size, sizeof size, "%s", DEFAULT_TMP_SIZE);
    snprintf(uid, sizeof uid, "%u", (unsigned)spec->uid);
    snprintf(gid, sizeof gid, "%u", (unsigned)spec->gid);
    const char *const options[][2] = {{"size", size}, {"mode", "0700"}, {"uid", uid},
                                      {"gid", gid}};
    struct used_paths used;
    paths_used(spec, &used);
    struct {
        dev_t dev;
        ino_t ino;
    } done[4];
    size_t n_done = 0;
    for (size_t m = 0; m < sizeof private_mounts / sizeof *private_mounts; m++) {
        const char *tmp = private_mounts[m], *why = NULL;
        int target = open_trusted_path(tmp, 1, &why);
        if (target < 0) {
            if (errno == ENOENT || errno == ENOTDIR)
                continue;
            fail_open(tmp, errno, why);
        }
        struct stat st;
        if (fstat(target, &st) < 0)
            fail_os(errno);
        int seen = 0;
        for (size_t i = 0; i < n_done; i++)
            seen |= done[i].dev == st.st_dev && done[i].ino == st.st_ino;
        if (seen) { /* /var/tmp is a link to /tmp */
            close(target);
            continue;
        }
        struct kept *kept = calloc(used.count + 1, sizeof *kept);
        if (!kept)
            fail_os(ENOMEM);
        size_t n_kept = keep_beneath(tmp, &used, kept);
        int root = new_tmpfs(options, sizeof options / sizeof *options);
        char what[4400];
        snprintf(what, sizeof what, "mount a private tmpfs on %s", tmp);
        move_mount_(root, target, what);
        if (fstat(root, &st) < 0)
            fail_os(errno);
        done[n_done].dev = st.st_dev;
        done[n_done++].ino = st.st_ino;
        for (size_t i = 0; i < n_kept; i++) {
            snprintf(what, sizeof what, "keep %s visible beneath the private %s", kept[i].path,
                     tmp);
            graft(root, kept[i].key, kept[i].tree, kept[i].is_dir, what);
        }
        close(root);
        for (size_t i = 0; i < n_kept; i++) {
            close(kept[i].tree);
            free(kept[i].key);
        }
        free(kept);
        close(target);
    }
}

static int is_private_mount(const char *path) {
    size_t len = strlen(path);
    while (len && path[len - 1] == '/')
        len--; /* path.rstrip("/") */
    for (size_t m = 0; m < sizeof private_mounts / sizeof *private_mounts; m++)
        if (strlen(private_mounts[m]) == len && strncmp(private_mounts[m], path, len) == 0)
            return 1;
    return 0;
}

/* runner._bind_writable_noexec: every path the app may write bound onto itself
 * noexec,nosuid,nodev (with what is mounted beneath it); devices are left to Landlock. */
static void bind_writable_noexec(const struct spec *spec) {
    struct mount_attr_ attr = {K_NO_EXEC_SUID_DEV, 0, 0, 0};
    for (size_t i = 0; i <= spec->n_writable; i++) {
        const char *path = i ? spec->writable[i - 1] : spec->state_dir;
        int again = 0; /* dict.fromkeys: each path once, first place */
        for (size_t j = 0; j < i && !again; j++)
            again = strcmp(path, j ? spec->writable[j - 1] : spec->state_dir) == 0;
        if (again || is_private_mount(path))
            continue;
        const char *why = NULL;
        int fd = open_trusted_path(path, -1, &why);
        if (fd < 0) {
            char shown[1100];
            if (errno == ENOENT || errno == ENOTDIR)
                fail(EXIT_REFUSED, HINT_WRITABLE, "writable path %s does not exist",
                     py_repr(path, shown, sizeof shown));
            fail_open(path, errno, why);
        }
        struct stat st;
        if (fstat(fd, &st) < 0)
            fail_os(errno);
        if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
            close(fd);
            continue;
        }
        char what[4400];
        snprintf(what, sizeof what, "bind %s", path);
        int tree = clone_tree(fd, what);
        snprintf(what, sizeof what, "make %s noexec,nosuid,nodev", path);
        mount_syscall(what, NR_MOUNT_SETATTR, tree, (long)"", K_AT_EMPTY_PATH | K_AT_RECURSIVE,
                      (long)&attr, sizeof attr);
        snprintf(what, sizeof what, "mount %s noexec,nosuid,nodev", path);
        move_mount_(tree, fd, what);
        close(tree);
        close(fd);
    }
}

/* ------------------------------------------------------------ Landlock (kernel.py) */

static const char *create_meaning(int err) {
    switch (err) {
    case EOPNOTSUPP: return "Landlock is supported by the kernel but disabled at boot";
    case ENOSYS: return "the kernel has no Landlock";
    case EINVAL: return "a handled right or scope is unknown to this kernel";
    case E2BIG: return "the attribute struct is larger than this kernel knows";
    case ENOMSG: return "the ruleset handles nothing";
    case EMFILE: return "too many open files";
    default: return "unexpected error";
    }
}

static const char *add_rule_meaning(int err) {
    switch (err) {
    case EINVAL:
        return "rights not handled by the ruleset or not applicable to this file type";
    case ENOMSG: return "the rule grants no right";
    case EBADF: return "the ruleset or path fd is not open";
    case EBADFD: return "the ruleset fd is not a ruleset, or the path fd is not O_PATH-opened";
    case EPERM: return "the ruleset fd was not opened for writing";
    case EFAULT: return "bad rule address (a bug in sandrun)";
    default: return "unexpected error";
    }
}

static const char *restrict_meaning(int err) {
    switch (err) {
    case EPERM: return "no_new_privs is not set and the caller lacks CAP_SYS_ADMIN";
    case E2BIG: return "the process already has 16 nested Landlock domains";
    case EBADF: return "the ruleset fd was closed before restrict_self";
    case EBADFD: return "the fd is not a Landlock ruleset";
    case EINVAL: return "unknown restrict_self flags for this kernel";
    case EOPNOTSUPP: return "Landlock is disabled";
    default: return "unexpected error";
    }
}

/* kernel._landlock_error */
static _Noreturn void fail_landlock(const char *what, int err, const char *meaning,
                                    const char *hint) {
    char text[256];
    fail(EXIT_REFUSED, hint, "%s: %s: %s", what, errno_text(err, text, sizeof text), meaning);
}

static void add_rule(int ruleset_fd, int type, const void *attr, const char *what) {
    if (syscall(NR_LANDLOCK_ADD_RULE, ruleset_fd, type, attr, 0) != 0) {
        int err = errno;
        char full[4400];
        snprintf(full, sizeof full, "cannot add the Landlock rule for %s", what);
        fail_landlock(full, err, add_rule_meaning(err), HINT_LANDLOCK_BUG);
    }
}

/* kernel.build_ruleset, in the init: each path opened as the app will see it. */
static int build_ruleset(const struct landlock_spec *ll) {
    struct ruleset_attr attr = {ll->handled_fs, ll->handled_net, ll->scoped};
    size_t size = ll->scoped ? RULESET_ATTR_SIZE_SCOPED
                  : ll->handled_net ? RULESET_ATTR_SIZE_NET
                                    : RULESET_ATTR_SIZE_FS;
    int ruleset_fd = (int)syscall(NR_LANDLOCK_CREATE_RULESET, &attr, size, 0);
    if (ruleset_fd < 0)
        fail_landlock("cannot create the Landlock ruleset", errno, create_meaning(errno),
                      HINT_LANDLOCK_ON);
    for (size_t i = 0; i < ll->n_paths; i++) {
        const struct landlock_path *rule = &ll->paths[i];
        char shown[1100], what[1400];
        py_repr(rule->path, shown, sizeof shown);
        /* kernel._open_rule_path */
        const char *why = NULL;
        int path_fd = open_trusted_path(rule->path, -1, &why);
        if (path_fd < 0) {
            int err = errno;
            char text[256];
            if (err == ENOENT || err == ENOTDIR) {
                if (!rule->required)
                    continue;
                fail(EXIT_REFUSED, HINT_REQUIRED, "required path %s (%s) does not exist", shown,
                     rule->label);
            }
            if (why) /* a refusal, not an OSError: as it is */
                fail_open(rule->path, err, why);
            fail(EXIT_REFUSED, HINT_RULE_PATH, "cannot open %s for a Landlock rule: %s", shown,
                 errno_text(err, text, sizeof text));
        }
        struct stat st;
        if (fstat(path_fd, &st) < 0)
            fail_os(errno);
        uint64_t rights = rule->rights;
        if (!S_ISDIR(st.st_mode))
            rights &= FS_FILE_RIGHTS; /* the kernel rejects directory rights on files */
        if (rights) {
            struct path_beneath_attr beneath = {rights, path_fd};
            snprintf(what, sizeof what, "%s (%s)", shown, rule->label);
            add_rule(ruleset_fd, LANDLOCK_RULE_PATH_BENEATH_, &beneath, what);
        }
        close(path_fd);
    }
    if (ll->handled_net) {
        for (int pass = 0; pass < 2; pass++) {
            size_t count = pass ? ll->n_connect : ll->n_bind;
            const uint64_t *ports = pass ? ll->connect_tcp : ll->bind_tcp;
            for (size_t i = 0; i < count; i++) {
                struct net_port_attr net = {pass ? ACCESS_NET_CONNECT_TCP : ACCESS_NET_BIND_TCP,
                                            ports[i]};
                char what[64];
                snprintf(what, sizeof what, "TCP %s port %llu", pass ? "connect" : "bind",
                         (unsigned long long)ports[i]);
                add_rule(ruleset_fd, LANDLOCK_RULE_NET_PORT_, &net, what);
            }
        }
    }
    return ruleset_fd;
}

/* kernel.restrict_self */
static void restrict_self(int ruleset_fd, uint32_t flags) {
    if (ruleset_fd < 0)
        return; /* Landlock absent and accepted */
    if (prctl(K_PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1)
        fail(EXIT_REFUSED,
             "call prctl(PR_SET_NO_NEW_PRIVS, 1) after dropping privileges (a sandrun bug)",
             "no_new_privs is not set: refusing to enforce Landlock");
    if (syscall(NR_LANDLOCK_RESTRICT_SELF, ruleset_fd, flags) != 0)
        fail_landlock("cannot enforce the Landlock ruleset", errno, restrict_meaning(errno),
                      HINT_LANDLOCK_BUG);
    close(ruleset_fd);
}

/* ------------------------------------------------------------ seccomp (kernel.py) */

/* kernel.load_seccomp_filter, flags 0 (the warm path never explains) */
static void load_seccomp_filter(const unsigned char *bpf, size_t len) {
    size_t count = len / 8;
    if (len % 8 || count == 0 || count > BPF_MAXINSNS_)
        fail(EXIT_REFUSED, HINT_RECOMPILE,
             "not a seccomp BPF program: %zu bytes (need 1..%d instructions of 8 bytes)", len,
             BPF_MAXINSNS_);
    if (memcmp(bpf, bpf_load_arch, sizeof bpf_load_arch) != 0)
        fail(EXIT_REFUSED, HINT_RECOMPILE,
             "refusing a seccomp program that does not check the architecture first");
    if (prctl(K_PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1)
        fail(EXIT_REFUSED,
             "call prctl(PR_SET_NO_NEW_PRIVS, 1) first (the launch order sets it before "
             "Landlock and seccomp)",
             "no_new_privs is not set: refusing to load the seccomp filter");
    struct sock_fprog program = {(unsigned short)count, (struct sock_filter *)(void *)bpf};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program) != 0) {
        int err = errno;
        const char *hint = err == EINVAL   ? "the kernel rejected the BPF program or a flag; "
                                             "recompile it"
                           : err == EACCES ? "set no_new_privs first"
                           : err == ENOSYS ? "the kernel has no seccomp() (CONFIG_SECCOMP_FILTER)"
                           : err == ENOMEM ? "too many filters are already stacked on this "
                                             "process"
                                           : "check the kernel's seccomp support";
        char text[256];
        fail(EXIT_REFUSED, hint, "seccomp(SECCOMP_SET_MODE_FILTER) failed: %s",
             errno_text(err, text, sizeof text));
    }
}

/* ------------------------------------------------------------ the app */

static const char *rlimit_name(int resource) {
    static const struct {
        int resource;
        const char *name;
    } names[] = {{RLIMIT_CPU, "cpu"},         {RLIMIT_FSIZE, "fsize"},
                 {RLIMIT_DATA, "data"},       {RLIMIT_STACK, "stack"},
                 {RLIMIT_CORE, "core"},       {RLIMIT_RSS, "rss"},
                 {RLIMIT_NPROC, "nproc"},     {RLIMIT_NOFILE, "nofile"},
                 {RLIMIT_MEMLOCK, "memlock"}, {RLIMIT_AS, "as"},
                 {RLIMIT_LOCKS, "locks"},     {RLIMIT_SIGPENDING, "sigpending"},
                 {RLIMIT_MSGQUEUE, "msgqueue"}, {RLIMIT_NICE, "nice"},
                 {RLIMIT_RTPRIO, "rtprio"},   {RLIMIT_RTTIME, "rttime"}};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (names[i].resource == resource)
            return names[i].name;
    return "?";
}

/* resource.setrlimit's errors: EINVAL and EPERM are ValueErrors, others OSErrors. */
static _Noreturn void fail_setrlimit(int err) {
    if (err == EINVAL)
        fail(EXIT_REFUSED, NULL, "ValueError: current limit exceeds maximum limit");
    if (err == EPERM)
        fail(EXIT_REFUSED, NULL, "ValueError: not allowed to raise maximum limit");
    fail_os(err);
}

static void set_rlimits(const struct spec *spec) {
    for (size_t i = 0; i < spec->n_rlimits; i++) {
        const struct rlimit_rule *rule = &spec->rlimits[i];
        rlim_t limit = rule->value == -1 ? RLIM_INFINITY : (rlim_t)rule->value;
        struct rlimit value = {limit, limit};
        if (setrlimit((__rlimit_resource_t)rule->resource, &value) == 0)
            continue;
        if (errno != EINVAL && errno != EPERM)
            fail_os(errno);
        /* above the hard limit, and no CAP_SYS_RESOURCE to raise it */
        struct rlimit now;
        if (getrlimit((__rlimit_resource_t)rule->resource, &now) < 0)
            fail_os(errno);
        long long hard = now.rlim_max == RLIM_INFINITY ? -1 : (long long)now.rlim_max;
        if (rule->value != -1 && rule->value > hard)
            fail(EXIT_REFUSED, HINT_RLIMIT,
                 "rlimit %s = %lld is above the hard limit %lld sandrun itself runs under",
                 rlimit_name(rule->resource), rule->value, hard);
        struct rlimit highest = {now.rlim_max, now.rlim_max}; /* "infinity": as high as allowed */
        if (setrlimit((__rlimit_resource_t)rule->resource, &highest) < 0)
            fail_setrlimit(errno);
    }
}

static int compare_int(const void *a, const void *b) {
    return *(const int *)a - *(const int *)b;
}

/* runner._enter_sandbox, DESIGN.md's fixed order; never returns. */
static _Noreturn void enter_sandbox(struct launch_ctx *ctx) {
    static char listen_fds[32], listen_pid[32];
    const struct spec *spec = ctx->spec;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
        signal(forwarded[i], SIG_DFL);
    int keep[2], kept = 0;
    keep[kept++] = ctx->err_w;
    if (ctx->ruleset_fd >= 0)
        keep[kept++] = ctx->ruleset_fd;
    qsort(keep, (size_t)kept, sizeof *keep, compare_int);
    int low = 3 + ctx->listen_fds; /* socket activation: fds 3.. go to the app */
    if (ctx->listen_fds) {
        for (int fd = 3; fd < low; fd++) {
            int flags = fcntl(fd, F_GETFD);
            if (flags < 0 || fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC) < 0)
                fail_os(errno);
        }
        snprintf(listen_fds, sizeof listen_fds, "LISTEN_FDS=%d", ctx->listen_fds);
        env_put(&ctx->env, listen_fds);
        /* the app's pid, as its PID namespace sees it */
        snprintf(listen_pid, sizeof listen_pid, "LISTEN_PID=%d", (int)getpid());
        env_put(&ctx->env, listen_pid);
        for (char **entry = environ; *entry; entry++) {
            if (strncmp(*entry, "LISTEN_FDNAMES=", 15) == 0) {
                env_put(&ctx->env, *entry);
                break;
            }
        }
    }
    for (int i = 0; i < kept; i++) {
        if (keep[i] > low && syscall(SYS_close_range, (unsigned)low, (unsigned)keep[i] - 1, 0) < 0)
            fail_os(errno);
        if (keep[i] + 1 > low)
            low = keep[i] + 1;
    }
    if (syscall(SYS_close_range, (unsigned)low, ~0U, 0) < 0)
        fail_os(errno);

    set_rlimits(spec);

    for (int cap = 0; cap <= ctx->cap_last; cap++) {
        char what[64];
        snprintf(what, sizeof what, "drop capability %d", cap);
        check(prctl(K_PR_CAPBSET_DROP, cap, 0, 0, 0), what, HINT_PRCTL);
    }
    if (setgroups(0, NULL) < 0)
        fail_os(errno);
    if (setresgid(spec->gid, spec->gid, spec->gid) < 0)
        fail_os(errno);
    if (setresuid(spec->uid, spec->uid, spec->uid) < 0)
        fail_os(errno);
    if (setuid(0) == 0)
        fail(EXIT_REFUSED, HINT_SETUID, "setuid(0) still succeeds after dropping privileges");
    if (errno != EPERM)
        fail_os(errno);
    prctl(K_PR_CAP_AMBIENT, K_PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    check(prctl(K_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs", HINT_PRCTL);
    if (spec->mdwe)
        check(prctl(K_PR_SET_MDWE, K_PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0),
              "set memory-deny-write-execute", HINT_PRCTL);
    if (chdir(spec->cwd) < 0)
        fail_os(errno);
    umask(077);
    restrict_self(ctx->ruleset_fd, spec->landlock.present ? spec->landlock.restrict_flags : 0);
    load_seccomp_filter(spec->seccomp_bpf, spec->seccomp_len); /* last: then only execve */
    execve(spec->interpreter, ctx->argv, ctx->env.entries);
    int err = errno;
    fail(err == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_EXECUTE,
         err == EACCES ? HINT_EXEC HINT_EXEC_NOEXEC : HINT_EXEC, "cannot execute %s: %s",
         spec->interpreter, strerror(err));
}

/* ------------------------------------------------------------ the init */

/* runner._await_go: the launcher's go (we are in our cgroup by then); exits quietly if
 * the launcher is gone (died before the pdeathsig took effect, or gave up). */
static void await_go(int go_r) {
    char byte;
    ssize_t n;
    while ((n = read(go_r, &byte, 1)) < 0 && errno == EINTR) {
    }
    if (n < 0)
        fail_os(errno);
    if (n != 1 || byte != 'g')
        _exit(EXIT_REFUSED);
    /* Did it die right after the go? Its end of the pipe tells (getppid() cannot: the
     * parent is outside our PID namespace). */
    int flags = fcntl(go_r, F_GETFL);
    if (flags < 0 || fcntl(go_r, F_SETFL, flags | O_NONBLOCK) < 0)
        fail_os(errno);
    while ((n = read(go_r, &byte, 1)) < 0 && errno == EINTR) {
    }
    if (n == 0)
        _exit(EXIT_REFUSED);
    if (n < 0 && errno != EAGAIN)
        fail_os(errno);
    close(go_r); /* still there: its death now sends SIGKILL */
}

/* runner._init_process: PID 1 of the app's PID namespace; never returns. */
static _Noreturn void init_process(struct launch_ctx *ctx) {
    const struct spec *spec = ctx->spec;
    report_fd = ctx->err_w;
    report_stage = "launch";
    close(ctx->err_r);
    /* runner._die_with_launcher (as bwrap --die-with-parent) */
    close(ctx->go_w);
    check(prctl(K_PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0), "set the parent-death signal", HINT_PRCTL);
    umask(022); /* what it creates (the private /tmp's skeleton) must be traversable */
    check(unshare(K_CLONE_NEWNS | K_CLONE_NEWIPC | K_CLONE_NEWUTS),
          "unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS)", HINT_NS);
    check(mount(NULL, "/", NULL, K_MS_REC | K_MS_PRIVATE, NULL), "make mounts private", HINT_NS);
    if (sethostname(spec->hostname, strlen(spec->hostname)) != 0) {
        char shown[300];
        fail(EXIT_REFUSED, HINT_NS, "set the host name %s failed: %s",
             py_repr(spec->hostname, shown, sizeof shown), strerror(errno));
    }
    mount_private_tmp(spec);
    bind_writable_noexec(spec);
    check(mount("proc", "/proc", "proc", K_MS_NOSUID | K_MS_NODEV | K_MS_NOEXEC,
                "hidepid=invisible"),
          "mount a private /proc", HINT_NS);
    if (spec->landlock.present)
        ctx->ruleset_fd = build_ruleset(&spec->landlock);
    await_go(ctx->go_r); /* in the cgroup from here on: the app inherits it */
    pid_t app = fork();
    if (app < 0)
        fail_os(errno);
    if (app == 0) {
        report_stage = "sandbox";
        enter_sandbox(ctx);
    }
    if (ctx->ruleset_fd >= 0)
        close(ctx->ruleset_fd);
    /* The native init; its parent-death signal stays set across the exec (same
     * credentials). The err pipe closes with the exec (O_CLOEXEC): kept until then to
     * say why, should the exec fail. */
    char app_text[32];
    snprintf(app_text, sizeof app_text, "%d", (int)app);
    char *argv[] = {ctx->title, "init", ctx->title, app_text, NULL};
    char *envp[] = {NULL};
    fexecve(spec->supervisor_fd, argv, envp);
    int err = errno;
    kill(app, SIGKILL);
    waitpid(app, NULL, 0);
    fail(EXIT_REFUSED, HINT_SUPERVISOR, "cannot execute the native supervisor %s: %s",
         spec->supervisor, strerror(err));
}

/* ------------------------------------------------------------ the launcher */

/* runner._cgroup_name: <user>-<launcher pid>, in the characters cgroup names allow
 * (one "_" per character that is not, as Python's str.lower() and join see them). */
static void cgroup_name(const char *user_name, char *out, size_t size) {
    char user[65];
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)user_name; *p && n < 64; p++) {
        unsigned char c = *p;
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        if (c < 0x80) {
            user[n++] = strchr("abcdefghijklmnopqrstuvwxyz0123456789._-", c) ? (char)c : '_';
        } else if (c >= 0xc0) { /* a UTF-8 lead byte: one character */
            if (c == 0xc4 && p[1] == 0xb0) { /* U+0130 lowers to "i" + U+0307 */
                user[n++] = 'i';
                if (n < 64)
                    user[n++] = '_';
            } else {
                user[n++] = '_';
            }
        }
    }
    user[n] = 0;
    if (n && strchr("abcdefghijklmnopqrstuvwxyz0123456789", user[0]))
        snprintf(out, size, "%s-%d", user, (int)getpid());
    else
        snprintf(out, size, "app-%d", (int)getpid());
}

/* Undo the cgroup (if made), then die: a failure in the launcher before the handoff. */
__attribute__((format(printf, 5, 6))) static _Noreturn void
refuse(struct launch_ctx *ctx, pid_t child, int code, const char *hint, const char *fmt, ...) {
    char message[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    if (child > 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    }
    if (ctx->cgroup)
        cgroup_remove(ctx->spec, ctx->cgroup);
    die(code, hint, "%s", message);
}

static const char *cgroup_hint(const char *err) {
    if (strstr(err, "no-internal-processes"))
        return HINT_CGROUP_SHARED;
    if (strstr(err, "already exists and holds processes"))
        return HINT_CGROUP_BUSY;
    if (strstr(err, "invalid cgroup name"))
        return HINT_CGROUP_NAME;
    return HINT_CGROUP_UNAVAILABLE;
}

/* runner._listen_fds: systemd socket activation (sd_listen_fds): how many fds from 3
 * on were passed to us (LISTEN_PID is ours), to pass on to the app; 0 for none. */
static int listen_fds(struct launch_ctx *ctx) {
    char me[32];
    snprintf(me, sizeof me, "%d", (int)getpid());
    const char *pid = getenv("LISTEN_PID"), *raw = getenv("LISTEN_FDS");
    if (!pid || strcmp(pid, me) != 0)
        return 0;
    if (!raw)
        raw = "";
    size_t len = strlen(raw), digits = strspn(raw, "0123456789"), zeros = strspn(raw, "0");
    int count = 0;
    if (len && digits == len && len - zeros <= 4)
        count = atoi(raw);
    if (count <= 0 || count > MAX_LISTEN_FDS) {
        char shown[300];
        refuse(ctx, 0, EXIT_REFUSED, HINT_LISTEN,
               "LISTEN_FDS=%s is not a number of file descriptors", py_repr(raw, shown, sizeof shown));
    }
    for (int fd = 3; fd < 3 + count; fd++) {
        struct stat st;
        if (fstat(fd, &st) < 0)
            refuse(ctx, 0, EXIT_REFUSED, HINT_LISTEN, "LISTEN_FDS=%d but fd %d is not open", count,
                   fd);
    }
    return count;
}

static int read_cap_last(struct launch_ctx *ctx) {
    char buf[32];
    int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
    int err = errno;
    if (fd >= 0)
        close(fd);
    if (n <= 0)
        refuse(ctx, 0, EXIT_REFUSED, NULL, "cannot read /proc/sys/kernel/cap_last_cap: %s",
               n < 0 ? strerror(err) : "empty");
    buf[n] = 0;
    char *end;
    long value = strtol(buf, &end, 10);
    if (end == buf || (*end && *end != '\n') || value < 0 || value > 255)
        refuse(ctx, 0, EXIT_REFUSED, NULL, "/proc/sys/kernel/cap_last_cap is not a number: %s", buf);
    return (int)value;
}

static char *joined(struct launch_ctx *ctx, const char *name, const char *value) {
    size_t size = strlen(name) + strlen(value) + 2;
    char *entry = malloc(size);
    if (!entry)
        refuse(ctx, 0, EXIT_REFUSED, NULL, "out of memory");
    snprintf(entry, size, "%s=%s", name, value);
    return entry;
}

/* The app's argv and environment (RunSpec.environment: the spec's env, then env_pass
 * from ours, then env_set; room for the LISTEN_* entries the app adds). */
static void prepare_exec(struct launch_ctx *ctx, char **args, int n_args) {
    const struct spec *spec = ctx->spec;
    size_t n_argv = spec->n_argv + (size_t)(n_args > 0 ? n_args : 0);
    ctx->argv = calloc(n_argv + 1, sizeof *ctx->argv);
    ctx->env.capacity = spec->n_env + spec->n_env_pass + spec->n_env_set + 3 + 1;
    ctx->env.entries = calloc(ctx->env.capacity, sizeof *ctx->env.entries);
    if (!ctx->argv || !ctx->env.entries)
        refuse(ctx, 0, EXIT_REFUSED, NULL, "out of memory");
    for (size_t i = 0; i < spec->n_argv; i++)
        ctx->argv[i] = (char *)spec->argv[i];
    for (int i = 0; i < n_args; i++)
        ctx->argv[spec->n_argv + (size_t)i] = args[i];
    for (size_t i = 0; i < spec->n_env; i++)
        env_put(&ctx->env, joined(ctx, spec->env[i].name, spec->env[i].value));
    for (size_t i = 0; i < spec->n_env_pass; i++) {
        const char *value = getenv(spec->env_pass[i]);
        if (value)
            env_put(&ctx->env, joined(ctx, spec->env_pass[i], value));
    }
    for (size_t i = 0; i < spec->n_env_set; i++)
        env_put(&ctx->env, joined(ctx, spec->env_set[i].name, spec->env_set[i].value));
}

/* runner._read_report, then refuse with what it says (the child failed first). Returns
 * if there was no report. */
static void refuse_with_report(struct launch_ctx *ctx) {
    static char data[65536];
    size_t len = 0;
    for (;;) {
        ssize_t n = read(ctx->err_r, data + len, sizeof data - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len == sizeof data - 1)
            break;
    }
    close(ctx->err_r);
    if (!len)
        return;
    data[len] = 0;
    const char *field[6];
    size_t at = 0;
    int fields = 0;
    while (at <= len && fields < 6) {
        field[fields++] = data + at;
        at += strlen(data + at) + 1;
    }
    if (fields == 5 && strcmp(field[0], REPORT_MAGIC) == 0 && field[4][0] &&
        strspn(field[4], "0123456789") == strlen(field[4])) {
        int code = atoi(field[4]);
        if (code <= 0 || code > 255)
            code = EXIT_REFUSED;
        refuse(ctx, 0, code, field[3][0] ? field[3] : NULL,
               "the sandbox could not be set up (%s): %s", field[1], field[2]);
    }
    refuse(ctx, 0, EXIT_REFUSED, NULL, "the sandbox could not be set up (launch): %s", data);
}

_Noreturn void launch(struct spec *spec, char **args, int n_args) {
    static struct launch_ctx ctx;
    static char name[128], nodes[MAX_NODES][4200];
    ctx.spec = spec;
    ctx.err_r = ctx.err_w = ctx.go_r = ctx.go_w = ctx.ruleset_fd = -1;
    snprintf(ctx.title, sizeof ctx.title, "sandrun: %s",
             spec->app_name && spec->app_name[0] ? spec->app_name : spec->user_name);
    /* What the Python launcher runs with (the interpreter ignores both), so that the
     * supervisors inherit the same; the app gets the defaults back. */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);
    fflush(NULL); /* nothing buffered is written twice by a child */
    /* First, before any fd or signal mask that a failure here would leave behind. */
    if (unshare(K_CLONE_NEWPID) != 0)
        die(EXIT_REFUSED, HINT_PID_NS, "unshare(CLONE_NEWPID) failed: %s", strerror(errno));
    cgroup_name(spec->user_name, name, sizeof name);
    if (spec->n_nodes) {
        static char err[8192];
        if (cgroup_create(spec, name, err, sizeof err) < 0)
            die(EXIT_REFUSED, cgroup_hint(err), "%s", err); /* it removed what it made */
        ctx.cgroup = name;
    }
    prepare_exec(&ctx, args, n_args);
    ctx.listen_fds = listen_fds(&ctx);
    ctx.cap_last = read_cap_last(&ctx);
    int err_pipe[2], go_pipe[2];
    if (pipe2(err_pipe, O_CLOEXEC) < 0)
        refuse(&ctx, 0, EXIT_REFUSED, NULL, "pipe2 failed: %s", strerror(errno));
    ctx.err_r = err_pipe[0];
    ctx.err_w = err_pipe[1];
    /* The launcher holds go_w open until the app has exited: the child reads its go from
     * go_r, and end of file there means the launcher is gone. */
    if (pipe2(go_pipe, O_CLOEXEC) < 0)
        refuse(&ctx, 0, EXIT_REFUSED, NULL, "pipe2 failed: %s", strerror(errno));
    ctx.go_r = go_pipe[0];
    ctx.go_w = go_pipe[1];
    sigset_t waited;
    sigemptyset(&waited);
    for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
        sigaddset(&waited, forwarded[i]);
    sigaddset(&waited, SIGCHLD);
    sigprocmask(SIG_BLOCK, &waited, NULL); /* kept across the exec: the supervisor's */
    pid_t child = fork();
    if (child < 0)
        refuse(&ctx, 0, EXIT_REFUSED, NULL, "fork failed: %s", strerror(errno));
    if (child == 0)
        init_process(&ctx);
    close(ctx.err_w);
    close(ctx.go_r);
    /* Entering the cgroup overlaps the child's namespace setup: it waits for the go
     * only before it forks the app. */
    if (ctx.cgroup) {
        static char err[8192];
        if (cgroup_enter(spec, child, err, sizeof err) < 0) {
            kill(child, SIGKILL);
            waitpid(child, NULL, 0);
            refuse_with_report(&ctx); /* the child failed first: that is the error */
            refuse(&ctx, 0, EXIT_REFUSED, HINT_CGROUP_ENTER, "%s", err);
        }
    }
    ssize_t sent;
    while ((sent = write(ctx.go_w, "g", 1)) < 0 && errno == EINTR) {
    }
    if (sent < 0 && errno != EPIPE) /* EPIPE: the child failed before its go: it says why */
        refuse(&ctx, child, EXIT_REFUSED, NULL, "cannot give the child its go: %s",
               strerror(errno));
    /* runner._exec_supervisor: become the native supervisor. */
    int count = ctx.cgroup ? cgroup_handoff(spec, nodes, MAX_NODES) : 0;
    if (count < 0) /* a supervisor that cannot remove the cgroup would leave it behind */
        refuse(&ctx, child, EXIT_REFUSED, NULL, "cannot hand the launch cgroup over to the "
               "native supervisor: %s", strerror(errno));
    char child_text[32], err_text[32], go_text[32], uid_text[32];
    snprintf(child_text, sizeof child_text, "%d", (int)child);
    snprintf(err_text, sizeof err_text, "%d", ctx.err_r);
    snprintf(go_text, sizeof go_text, "%d", ctx.go_w);
    snprintf(uid_text, sizeof uid_text, "%u", (unsigned)spec->uid);
    /* ... NODE... -- UID NOTE...: it says how a failed run ended (launch(explain_failure)) */
    char **argv = calloc(8 + MAX_NODES + 2 + spec->n_failure_notes + 1, sizeof *argv);
    if (!argv)
        refuse(&ctx, child, EXIT_REFUSED, NULL, "out of memory");
    char *fixed[8] = {ctx.title, "launcher", ctx.title, child_text, err_text,
                      go_text,   "0",        ctx.cgroup ? name : "-"};
    size_t at = 0;
    for (; at < 8; at++)
        argv[at] = fixed[at];
    for (int i = 0; i < count && i < MAX_NODES; i++)
        argv[at++] = nodes[i];
    argv[at++] = "--";
    argv[at++] = uid_text;
    for (size_t i = 0; i < spec->n_failure_notes; i++)
        argv[at++] = (char *)spec->failure_notes[i];
    char *envp[] = {NULL};
    int err = 0;
    for (int i = 0; i < 2 && !err; i++) {
        int fd = i ? ctx.go_w : ctx.err_r;
        int flags = fcntl(fd, F_GETFD);
        if (flags < 0 || fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC) < 0)
            err = errno;
    }
    if (!err) {
        fexecve(spec->supervisor_fd, argv, envp);
        err = errno;
    }
    /* No Python supervisor to fall back to here: take everything down. */
    refuse(&ctx, child, EXIT_REFUSED, HINT_SUPERVISOR,
           "cannot execute the native supervisor %s: %s", spec->supervisor, strerror(err));
}
