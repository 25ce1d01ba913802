/* sandrun's native front: the `sandrun` command when a C compiler was there at install.
 *
 * `sandrun exec [OPTIONS] BUNDLE [ARGS]` run as root, with a native warm record for
 * exactly these options in the store, is served here without starting Python: the
 * record's checks (warm_exec._load_record's, one for one), then the launch
 * (runner._launch's, one for one), then exec of the native supervisor. Anything else,
 * and any doubt before the first action, execs the Python entry script (`sandrun-py`
 * next to this program), which does everything as it always did (its own warm path,
 * else the cold path, which writes the native record for next time:
 * sandrun/launch/native_record.py).
 *
 * Files: front.c (main, argv, key, record, checks, fallback), sandbox.c (the launch:
 * namespaces, mounts, Landlock, credentials, seccomp, exec), cgroup.c (the launch
 * cgroup), cgroupfs.c (its removal, shared with supervise.c). Nothing here allocates after the fork but what the child execs with.
 *
 * ------------------------------------------------------------------ the native record
 * <store>/launch/<NAME>.native, NAME = 16 lowercase hex digits of the 64-bit FNV-1a hash
 * (offset 0xcbf29ce484222325, prime 0x100000001b3) of the key bytes. Written by the
 * cold path only (root, after a fully checked launch), 0600 root in the 0700 launch/
 * dir, read as safefile.read_private reads (O_NOFOLLOW, regular, our uid, no group or
 * other bits, at most NATIVE_RECORD_MAX bytes).
 *
 * The key: "sandrun-native-key\0" FORMAT "\0" VERSION "\0" EUID "\0" CWD "\0" STORE "\0"
 * then every word of argv after "exec" up to and including the bundle word, each
 * followed by "\0" (app arguments are not part of the key). STORE is the store root as
 * the warm path takes it (--store's value if given, else $SANDRUN_STORE, else
 * /var/lib/sandrun), NOT made absolute (CWD is in the key). FORMAT is
 * NATIVE_RECORD_FORMAT, VERSION sandrun's __version__ (SANDRUN_VERSION, given by
 * setup.py at build time).
 *
 * The record body: netstrings "<decimal length>:<bytes>," one after the other, in this
 * fixed order (INT: decimal ASCII, maybe negative; BOOL: "0"/"1"; N: a count, then N
 * items as described):
 *   "sandrun-native-record"  NATIVE_RECORD_FORMAT  KEY (the bytes above)
 *   BOOT_ID (/proc/sys/kernel/random/boot_id without its newline)
 *   NOT_AFTER ("" or INT epoch seconds: at or after it, the record is not used)
 *   SUPERVISOR (absolute path of sandrun-supervise)
 *   N inputs: PATH FOLLOW(BOOL) PRESENT(BOOL) DEV INO MODE UID GID SIZE MTIME_NS CTIME_NS
 *        (stat, or lstat when FOLLOW is 0; PRESENT 0: the path must not exist, the 8
 *        INTs are then 0; ENOENT/ENOTDIR mean "not present", any other error: no match)
 *   TREE_SHA  TREE_TOP_MODE  (<store>/apps/<TREE_SHA>: lstat must be a dir with exactly
 *        this permission mode, uid EUID and gid SPEC.gid)
 *   N snapshot entries: NAME MODE UID SIZE INO CTIME_NS — every entry under the tree
 *        (relative names joined with "/"), lstat'ed, plus the top dir itself as NAME ""
 *        with SIZE 0 and CTIME_NS 0; sorted by NAME bytes (memcmp, shorter first). The
 *        walk must yield exactly these entries (warm_exec.tree_snapshot).
 *   the spec (runner.RunSpec; privileged launches only):
 *     UID GID USER_NAME APP_NAME INTERPRETER
 *     N argv words;  N env: NAME VALUE;  N env_pass: NAME;  N env_set: NAME VALUE
 *     CWD  STATE_DIR (<store>/state/<app>: lstat a dir, uid UID, mode 0700)
 *     N rlimits: RESOURCE(INT, RLIMIT_*) VALUE(INT, -1: infinity)
 *     MDWE(BOOL)  HOSTNAME  TMP_SIZE(INT bytes, 0: "25%")
 *     N writable paths
 *     LANDLOCK(BOOL); if 1: ABI HANDLED_FS HANDLED_NET SCOPED RESTRICT_FLAGS,
 *        N paths: PATH RIGHTS REQUIRED(BOOL) LABEL;  N bind_tcp ports;  N connect_tcp ports
 *     SECCOMP_BPF (raw bytes: struct sock_filter[])
 *     N failure notes: NOTE (RunSpec.failure_notes: the lines the supervisor says after
 *        the exit line of a failed run)
 *   the cgroup plan (cgroup.native_plan; empty: N = 0, no limits):
 *     OWN_CGROUP (the launcher's /proc/self/cgroup when the record was written: must be
 *        byte-identical now, else fall back)
 *     N nodes: VERSION  DIR (absolute: the hierarchy's mount point + our cgroup in it)
 *        DEV_MAJOR DEV_MINOR (of DIR's file system)  DELEGATE (v2: controllers to enable
 *        in DIR's and sandrun/'s cgroup.subtree_control, space-separated, maybe "")
 *        REQUIRED(BOOL: a failure to create this node refuses the launch; 0: best
 *        effort, as the v2 tracking node)
 *        N settings: FILE VALUE REQUIRED(BOOL) WHEN ("": always; "+F": only if file F
 *        exists in the launch dir; "-F": only if it does not)
 *   "end"
 * Anything that does not parse exactly so (a count over NATIVE_MAX_ITEMS, a string with
 * a NUL where a C string is needed, trailing bytes): not a record, fall back.
 */
#ifndef SANDRUN_FRONT_H
#define SANDRUN_FRONT_H

#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define NATIVE_RECORD_FORMAT "1"
#define NATIVE_RECORD_MAX (64u << 20)
#define NATIVE_MAX_ITEMS 1000000
#define EXIT_REFUSED 125
#define EXIT_CANNOT_EXECUTE 126
#define EXIT_NOT_FOUND 127

#ifndef SANDRUN_VERSION
#error "SANDRUN_VERSION must be given by setup.py (-DSANDRUN_VERSION=\"x.y.z\")"
#endif

struct str_pair {
    const char *name, *value;
};

struct rlimit_rule {
    int resource;
    long long value; /* -1: RLIM_INFINITY */
};

struct landlock_path {
    const char *path, *label;
    uint64_t rights;
    int required;
};

struct landlock_spec {
    int present, abi;
    uint64_t handled_fs, handled_net, scoped;
    uint32_t restrict_flags;
    size_t n_paths, n_bind, n_connect;
    struct landlock_path *paths;
    uint64_t *bind_tcp, *connect_tcp;
};

struct cgroup_setting {
    const char *file, *value, *when; /* when: "", "+F" or "-F" */
    int required;
};

struct cgroup_node {
    int version, required;
    const char *dir, *delegate;
    unsigned dev_major, dev_minor;
    size_t n_settings;
    struct cgroup_setting *settings;
    /* filled by cgroup_create: the fds the supervisor takes (base = DIR, parent =
     * DIR/sandrun, fd = DIR/sandrun/<name>), -1 when the node was not made */
    int base_fd, parent_fd, fd;
    char path[4096]; /* DIR/sandrun/<name> */
};

struct spec {
    uid_t uid;
    gid_t gid;
    const char *user_name, *app_name, *interpreter, *cwd, *state_dir, *hostname;
    const char *supervisor;
    int supervisor_fd; /* front.c: SUPERVISOR opened as runner.open_supervisor does
                        * (O_RDONLY|O_CLOEXEC, trusted, regular, root's, exec bit):
                        * exec it with fexecve, never by its path */
    size_t n_argv, n_env, n_env_pass, n_env_set, n_rlimits, n_writable, n_nodes;
    const char **argv;
    struct str_pair *env, *env_set;
    const char **env_pass;
    struct rlimit_rule *rlimits;
    int mdwe;
    long long tmp_size;
    const char **writable;
    struct landlock_spec landlock;
    const unsigned char *seccomp_bpf;
    size_t seccomp_len;
    size_t n_failure_notes;
    const char **failure_notes; /* the supervisor's NOTE arguments after "-- UID" */
    struct cgroup_node *nodes;
};

/* ---- front.c */
/* Print "sandrun: error: MESSAGE\n  hint: HINT\n" (the one error format; hint may be
 * NULL) and exit with `code`. For failures after the first action (nothing to fall
 * back to). */
_Noreturn void die(int code, const char *hint, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* An O_PATH fd of `path` resolved as kernel.open_trusted_path does (links followed only
 * while every directory so far is root's and not group/other-writable, and the link is
 * root's; ".." in `path` refused). `want_dir`: 1 directory, 0 not a directory, -1
 * either. Returns -1 with errno (ENOENT/ENOTDIR: missing; EPERM: an untrusted link or
 * "..", with *why set to the whole message, see trusted_path_hint; others as the kernel
 * says). */
int open_trusted_path(const char *path, int want_dir, const char **why);
/* With a refusal of open_trusted_path (*why: kernel.open_trusted_path's message, the
 * path included), its hint (static text). */
extern const char *trusted_path_hint;
/* Python's repr() of a str, as the messages show paths ('...' or "..."); into `out`. */
const char *py_repr(const char *s, char *out, size_t size);

/* ---- sandbox.c */
/* runner._launch(spec, args, handoff=True, explain_failure=True) for a privileged spec:
 * never returns on success (this process becomes the native supervisor, which says how
 * a failed run ended, then spec->failure_notes); on a failure before the fork,
 * dies (die(), exit 125) after undoing what it made (the cgroup). `args`: the app's
 * arguments (argv after the bundle word, a leading "--" already dropped). */
_Noreturn void launch(struct spec *spec, char **args, int n_args);

/* ---- cgroup.c */
/* cgroup.create for the plan in spec->nodes, named `name` (runner._cgroup_name): make
 * every node's launch dir (DIR/sandrun/<name>), delegating and writing the settings as
 * cgroup._make_node and _build do. 0 on success. On a required failure: removes what it
 * made, fills `err` (a message naming the file and errno) and returns -1. */
int cgroup_create(struct spec *spec, const char *name, char *err, size_t err_size);
/* cgroup._open_dir_path: an O_RDONLY fd of the directory `path`, opened one component
 * at a time from "/" following no symbolic link ("..": EINVAL); -1 with errno. */
int cgroup_open_dir(const char *path);
/* Cgroup.enter: write `pid` to every made node's cgroup.procs; -1 and `err` on failure. */
int cgroup_enter(struct spec *spec, pid_t pid, char *err, size_t err_size);
/* Best-effort removal of what cgroup_create made (before the supervisor took over). */
void cgroup_remove(struct spec *spec, const char *name);
/* The supervisor's NODE arguments (VERSION:BASE_FD:PARENT_FD:FD:PATH) of the made
 * nodes, into `out` (at most `max`); their fds made inheritable. Returns the count. */
int cgroup_handoff(struct spec *spec, char out[][4200], int max);

#endif
