/* sandrun's native front: main, the exec words, the record's key, the record, its
 * checks (warm_exec._load_record's, one for one) and the fallback to the Python entry
 * script. The contract is front.h; the design /work/notes/native.md.
 *
 * Until launch() is called nothing has been done: every doubt (an option the warm path
 * does not serve, no record, a record that does not parse exactly, any check that does
 * not pass, any error reading what the checks read) execs `sandrun-py`, which decides
 * everything again. Memory is not freed on those paths: the exec frees it.
 */
#include "front.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "exec_options.h"

#define MAX_SYMLINKS 40 /* as the kernel's path walk (safefile/kernel.MAX_SYMLINKS) */
#define DEFAULT_STORE "/var/lib/sandrun"
#define RECORD_DIR "launch"
#define RECORD_SUFFIX ".native"
/* warm_exec.BYTECODE_PENDING_SUFFIX: apps/.<sha>.bytecode, a tree whose bytecode a cold
 * start's detached compile is adding (store.compile_bytecode, under apps/.<sha>.lock) */
#define BYTECODE_PENDING_SUFFIX ".bytecode"
#define BOOT_ID "/proc/sys/kernel/random/boot_id"
#define OWN_CGROUP "/proc/self/cgroup"
#define KEY_MAGIC "sandrun-native-key"
#define RECORD_MAGIC "sandrun-native-record"
#define PYTHON_FRONT "sandrun-py"
/* native_record.COLD_ENV: the cold path exec'd us on the record it just wrote */
#define COLD_ENV "SANDRUN_FRONT_COLD"
#define SMALL_FILE_MAX (1u << 20) /* boot id, /proc/self/cgroup */
#define INSTALL_HINT                                                                   \
    "install sandrun root-owned, e.g. `python3 -m venv /opt/sandrun && "               \
    "/opt/sandrun/bin/pip install /path/to/sandrun` as root (README: Install), and run " \
    "that `sandrun`"

extern char **environ;

/* ------------------------------------------------------------------ small helpers */

_Noreturn void die(int code, const char *hint, const char *fmt, ...) {
    va_list ap;
    fputs("sandrun: error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (hint && *hint)
        fprintf(stderr, "  hint: %s\n", hint);
    fflush(stderr);
    exit(code);
}

/* The concatenation of the NULL-terminated strings, malloc'd; NULL when out of memory. */
static char *concat(const char *first, ...) {
    va_list ap;
    size_t len = 0;
    va_start(ap, first);
    for (const char *s = first; s; s = va_arg(ap, const char *))
        len += strlen(s);
    va_end(ap);
    char *out = malloc(len + 1), *at = out;
    if (!out)
        return NULL;
    va_start(ap, first);
    for (const char *s = first; s; s = va_arg(ap, const char *)) {
        size_t n = strlen(s);
        memcpy(at, s, n);
        at += n;
    }
    va_end(ap);
    *at = 0;
    return out;
}

static void close_keep_errno(int fd) {
    int saved = errno;
    if (fd >= 0)
        close(fd);
    errno = saved;
}

/* A whole small file (at most `max` bytes; /proc files have no size), NUL-terminated
 * after *len bytes; NULL with errno on failure. */
static char *read_small(const char *path, size_t max, size_t *len) {
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, used = 0;
    char *buf = malloc(cap);
    if (!buf)
        goto fail;
    for (;;) {
        if (used + 1 >= cap) {
            if (cap > max) {
                errno = EFBIG;
                goto fail;
            }
            char *bigger = realloc(buf, cap * 2);
            if (!bigger)
                goto fail;
            buf = bigger;
            cap *= 2;
        }
        ssize_t n = read(fd, buf + used, cap - 1 - used);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            goto fail;
        }
        if (n == 0)
            break;
        used += (size_t)n;
    }
    close(fd);
    buf[used] = 0;
    *len = used;
    return buf;
fail:
    close_keep_errno(fd);
    free(buf);
    return NULL;
}

/* ------------------------------------------------------------------ component stacks */

/* Path components still to walk, last pushed first popped (each malloc'd). */
struct names {
    char **items;
    size_t n, cap;
};

static int names_push(struct names *s, const char *name, size_t len) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        char **items = realloc(s->items, cap * sizeof *items);
        if (!items)
            return -1;
        s->items = items;
        s->cap = cap;
    }
    char *copy = malloc(len + 1);
    if (!copy)
        return -1;
    memcpy(copy, name, len);
    copy[len] = 0;
    s->items[s->n++] = copy;
    return 0;
}

/* Push the components of `path` (those that are not "" or ".") so that they pop in
 * order: the last one first. */
static int names_push_path(struct names *s, const char *path) {
    size_t end = strlen(path);
    while (end > 0) {
        size_t start = end;
        while (start > 0 && path[start - 1] != '/')
            start--;
        size_t len = end - start;
        if (len && !(len == 1 && path[start] == '.') && names_push(s, path + start, len))
            return -1;
        end = start ? start - 1 : 0;
    }
    return 0;
}

static char *names_pop(struct names *s) {
    return s->items[--s->n];
}

static void names_free(struct names *s) {
    while (s->n)
        free(s->items[--s->n]);
    free(s->items);
    s->items = NULL;
    s->cap = 0;
}

/* Whether a component of `path` is "..". */
static int has_dotdot(const char *path) {
    for (const char *p = path; *p;) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.')
            return 1;
        p += len;
        while (*p == '/')
            p++;
    }
    return 0;
}

/* ------------------------------------------------------------------ trusted paths */

static const char *file_kind(mode_t mode) {
    switch (mode & S_IFMT) {
    case S_IFREG: return "a regular file";
    case S_IFDIR: return "a directory";
    case S_IFLNK: return "a symbolic link";
    case S_IFIFO: return "a FIFO (named pipe)";
    case S_IFSOCK: return "a socket";
    case S_IFCHR: return "a character device";
    case S_IFBLK: return "a block device";
    default: return "a file of unknown type";
    }
}

/* safefile.dir_problem: 0 if `st` is a directory root or `owner` owns and nobody else
 * may write (unless sticky and root's, like /tmp); else 1 and why in `why`. */
static int dir_problem(const struct stat *st, uid_t owner, char *why, size_t size) {
    unsigned mode = st->st_mode & 07777;
    if (!S_ISDIR(st->st_mode)) {
        snprintf(why, size, "is %s, not a directory", file_kind(st->st_mode));
        return 1;
    }
    if (st->st_uid != 0 && st->st_uid != owner) {
        if (owner == 0)
            snprintf(why, size, "is owned by uid %u, not root: its owner could replace "
                     "what is in it", (unsigned)st->st_uid);
        else
            snprintf(why, size, "is owned by uid %u, not root or uid %u: its owner could "
                     "replace what is in it", (unsigned)st->st_uid, (unsigned)owner);
        return 1;
    }
    if ((mode & 022) && !((mode & S_ISVTX) && st->st_uid == 0)) {
        const char *who = (mode & 022) == 022 ? "group and others"
                          : (mode & 002)      ? "others"
                                              : "its group";
        snprintf(why, size, "is writable by %s (mode %04o): they could replace what is "
                 "in it", who, mode);
        return 1;
    }
    return 0;
}

/* safefile._link_trusted: a root-owned link in a root-owned dir nobody else may write. */
static int link_trusted(const struct stat *link, const struct stat *parent) {
    return link->st_uid == 0 && parent->st_uid == 0 && !(parent->st_mode & 022);
}

/* The target of the link `fd` (an O_PATH|O_NOFOLLOW fd), malloc'd; NULL with errno. */
static char *read_link(int fd) {
    char *target = malloc(PATH_MAX);
    if (!target)
        return NULL;
    ssize_t n = readlinkat(fd, "", target, PATH_MAX);
    if (n < 0 || n >= PATH_MAX) {
        if (n >= PATH_MAX)
            errno = ENAMETOOLONG;
        free(target);
        return NULL;
    }
    target[n] = 0;
    return target;
}

struct walked_dir {
    int fd;
    struct stat st;
    char *where;
};

struct dir_stack {
    struct walked_dir *items;
    size_t n, cap;
};

static int dirs_push(struct dir_stack *s, int fd, const struct stat *st, char *where) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        struct walked_dir *items = realloc(s->items, cap * sizeof *items);
        if (!items)
            return -1;
        s->items = items;
        s->cap = cap;
    }
    s->items[s->n++] = (struct walked_dir){fd, *st, where};
    return 0;
}

static void dirs_pop(struct dir_stack *s) {
    struct walked_dir *top = &s->items[--s->n];
    close_keep_errno(top->fd);
    free(top->where);
}

/* safefile.open_trusted_dir(path, owner): an O_PATH fd of the directory `path`
 * (relative: to the cwd), every component of which passes dir_problem, reached from "/"
 * following only links root owns in root's dirs nobody else may write. -1 with errno:
 * ENOENT & co. as the kernel says; EPERM when a component is not trusted (*problem:
 * "<where> <why>", malloc'd, or NULL when out of memory) or `path` has a ".." (the warm
 * path leaves those to Python; a trusted link's ".." goes up, as in Python). */
static int open_trusted_dir(const char *path, uid_t owner, char **problem) {
    char why[256], *full = NULL, *where = NULL;
    struct names pending = {0};
    struct dir_stack stack = {0};
    struct stat st;
    int links = 0, fd = -1, result;
    *problem = NULL;
    if (has_dotdot(path)) {
        *problem = concat(path, " has a '..' component", NULL);
        errno = EPERM;
        return -1;
    }
    if (path[0] != '/') {
        char *cwd = getcwd(NULL, 0);
        if (!cwd)
            return -1;
        full = concat(cwd, "/", path, NULL);
        free(cwd);
        if (!full)
            return -1;
        path = full;
    }
    if (names_push_path(&pending, path))
        goto fail;
    fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st))
        goto fail;
    where = strdup("");
    if (!where || dirs_push(&stack, fd, &st, where)) {
        free(where);
        goto fail;
    }
    fd = -1;
    if (dir_problem(&st, owner, why, sizeof why)) {
        *problem = concat("/ ", why, NULL);
        errno = EPERM;
        goto fail;
    }
    while (pending.n) {
        char *name = names_pop(&pending);
        if (strcmp(name, "..") == 0) { /* only from a link's target */
            free(name);
            if (stack.n > 1)
                dirs_pop(&stack);
            continue;
        }
        struct walked_dir *parent = &stack.items[stack.n - 1];
        where = concat(parent->where, "/", name, NULL);
        if (!where) {
            free(name);
            goto fail;
        }
        fd = openat(parent->fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        free(name);
        if (fd < 0 || fstat(fd, &st)) {
            free(where);
            goto fail;
        }
        if (S_ISLNK(st.st_mode)) {
            if (!link_trusted(&st, &parent->st)) {
                snprintf(why, sizeof why, " is a symbolic link owned by uid %u in a directory "
                         "owned by uid %u (mode %04o): root follows only links that root "
                         "alone can change", (unsigned)st.st_uid, (unsigned)parent->st.st_uid,
                         (unsigned)(parent->st.st_mode & 07777));
                *problem = concat(where, why, NULL);
                free(where);
                errno = EPERM;
                goto fail;
            }
            if (++links > MAX_SYMLINKS) {
                *problem = concat(where, " leads through too many symbolic links", NULL);
                free(where);
                errno = EPERM;
                goto fail;
            }
            free(where);
            char *target = read_link(fd);
            close(fd);
            fd = -1;
            if (!target)
                goto fail;
            if (target[0] == '/')
                while (stack.n > 1)
                    dirs_pop(&stack);
            int failed = names_push_path(&pending, target);
            free(target);
            if (failed)
                goto fail;
            continue;
        }
        if (dir_problem(&st, owner, why, sizeof why)) {
            *problem = concat(where, " ", why, NULL);
            free(where);
            errno = EPERM;
            goto fail;
        }
        if (dirs_push(&stack, fd, &st, where)) {
            free(where);
            goto fail;
        }
        fd = -1;
    }
    result = stack.items[--stack.n].fd;
    free(stack.items[stack.n].where);
    while (stack.n)
        dirs_pop(&stack);
    free(stack.items);
    names_free(&pending);
    free(full);
    return result;
fail:
    close_keep_errno(fd);
    while (stack.n)
        dirs_pop(&stack);
    free(stack.items);
    int saved = errno;
    names_free(&pending);
    free(full);
    errno = saved;
    return -1;
}

struct fd_stack {
    int *items;
    size_t n, cap;
};

static int fds_push(struct fd_stack *s, int fd) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        int *items = realloc(s->items, cap * sizeof *items);
        if (!items)
            return -1;
        s->items = items;
        s->cap = cap;
    }
    s->items[s->n++] = fd;
    return 0;
}

static void fds_close(struct fd_stack *s) {
    while (s->n)
        close_keep_errno(s->items[--s->n]);
}

/* The refusals of kernel.open_trusted_path, worded as there (EnforcementError's message
 * in *why, its hint in trusted_path_hint): REFUSED_WHAT "'PATH' DETAIL", REFUSED_MESSAGE
 * "'PATH': DETAIL", REFUSED_OUT_OF "'PATH': a link's target leads back out of 'DETAIL'". */
const char *trusted_path_hint;
enum refused { REFUSED_WHAT, REFUSED_MESSAGE, REFUSED_OUT_OF };

static void refusal(const char *path, enum refused kind, const char *detail,
                    const char *hint, const char **why) {
    static char text[3 * PATH_MAX + 300];
    char shown[2 * PATH_MAX + 8], out_of[2 * PATH_MAX + 8];
    py_repr(path, shown, sizeof shown);
    if (kind == REFUSED_WHAT)
        snprintf(text, sizeof text, "%s %s", shown, detail);
    else if (kind == REFUSED_MESSAGE)
        snprintf(text, sizeof text, "%s: %s", shown, detail);
    else
        snprintf(text, sizeof text, "%s: a link's target leads back out of %s, which another "
                 "user can change", shown, py_repr(*detail ? detail : "/", out_of,
                                                   sizeof out_of));
    trusted_path_hint = hint;
    *why = text;
}

int open_trusted_path(const char *path, int want_dir, const char **why) {
    static const char *ignored;
    struct names todo = {0};
    struct fd_stack parents = {0}; /* the directories above `current`, for a link's ".." */
    struct stat st, link_st;
    int current = -1, fd = -1, trusted = 1, links = 0;
    /* the path as resolved so far ("" for "/"), for messages (kernel.py's `walked`) */
    char walked[PATH_MAX] = "";
    size_t walked_len = 0;
    if (!why)
        why = &ignored;
    *why = NULL;
    trusted_path_hint = NULL;
    if (!path || path[0] != '/') {
        refusal(path ? path : "", REFUSED_WHAT, "is not an absolute path",
                "sandrun resolves only absolute paths (a sandrun bug)", why);
        errno = EINVAL;
        return -1;
    }
    if (has_dotdot(path)) {
        refusal(path, REFUSED_WHAT, "contains '..'", "write the path without '..'", why);
        errno = EPERM;
        return -1;
    }
    if (names_push_path(&todo, path))
        goto fail;
    current = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (current < 0 || fstat(current, &st))
        goto fail;
    while (todo.n) {
        char *name = names_pop(&todo);
        if (st.st_uid != 0 || (st.st_mode & 022))
            trusted = 0; /* and stays so: what follows is another user's choice */
        if (strcmp(name, "..") == 0) { /* only from a trusted link's target */
            free(name);
            if (!trusted) {
                refusal(path, REFUSED_OUT_OF, walked, "point the link straight at its target", why);
                errno = EPERM;
                goto fail;
            }
            if (parents.n) {
                close(current);
                current = parents.items[--parents.n];
                char *slash = strrchr(walked, '/');
                walked_len = slash ? (size_t)(slash - walked) : 0;
                walked[walked_len] = 0;
                if (fstat(current, &st))
                    goto fail;
            }
            continue;
        }
        fd = openat(current, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        size_t name_len = strlen(name);
        char where[PATH_MAX];
        int fits = walked_len + 1 + name_len < sizeof walked;
        if (fits)
            snprintf(where, sizeof where, "%s/%s", walked, name);
        free(name);
        if (fd < 0 || fstat(fd, &link_st))
            goto fail;
        if (!fits) {
            errno = ENAMETOOLONG;
            goto fail;
        }
        if (S_ISLNK(link_st.st_mode)) {
            if (!trusted) {
                char message[PATH_MAX + 200], hint[PATH_MAX + 200];
                snprintf(message, sizeof message, "%s is a symbolic link inside a directory "
                         "the app or another user can write: sandrun does not follow it; "
                         "remove it", where);
                snprintf(hint, sizeof hint, "replace %s by the real directory or file (sandrun "
                         "follows links only in root-owned directories nobody else can write)",
                         where);
                refusal(path, REFUSED_MESSAGE, message, hint, why);
                errno = EPERM;
                goto fail;
            }
            if (link_st.st_uid != 0) {
                char message[PATH_MAX + 200];
                snprintf(message, sizeof message, "%s is a symbolic link owned by uid %u: "
                         "sandrun does not follow it; remove it", where,
                         (unsigned)link_st.st_uid);
                refusal(path, REFUSED_MESSAGE, message, "sandrun follows only root's links in root's "
                        "directories", why);
                errno = EPERM;
                goto fail;
            }
            if (++links > MAX_SYMLINKS) {
                errno = ELOOP;
                goto fail;
            }
            char *target = read_link(fd);
            close(fd);
            fd = -1;
            if (!target)
                goto fail;
            int failed = names_push_path(&todo, target);
            int absolute = target[0] == '/';
            free(target);
            if (failed)
                goto fail;
            if (absolute) {
                walked_len = 0;
                walked[0] = 0;
                fds_close(&parents);
                close(current);
                current = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
                if (current < 0 || fstat(current, &st))
                    goto fail;
            }
            continue;
        }
        if (fds_push(&parents, current))
            goto fail;
        current = fd;
        fd = -1;
        st = link_st;
        memcpy(walked, where, strlen(where) + 1);
        walked_len = strlen(walked);
    }
    if (want_dir == 1 && !S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        goto fail;
    }
    if (want_dir == 0 && S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        goto fail;
    }
    fds_close(&parents);
    free(parents.items);
    names_free(&todo);
    return current;
fail:
    close_keep_errno(fd);
    close_keep_errno(current);
    fds_close(&parents);
    free(parents.items);
    {
        int saved = errno;
        names_free(&todo);
        errno = saved;
    }
    return -1;
}

/* ------------------------------------------------------------------ the fallback */

/* Exec the Python entry script next to this program with our argv and environment
 * (as root: only from a directory and file only root can change, else refuse). */
static _Noreturn void fall_back(int argc, char **argv) {
    static char *no_argv[] = {"sandrun", NULL};
    if (argc < 1)
        argv = no_argv;
    char *self = realpath("/proc/self/exe", NULL);
    if (!self)
        die(EXIT_CANNOT_EXECUTE, "reinstall sandrun",
            "cannot find where the sandrun program is (/proc/self/exe): %s", strerror(errno));
    char *slash = strrchr(self, '/');
    if (!slash)
        die(EXIT_CANNOT_EXECUTE, "reinstall sandrun", "the sandrun program's path %s is "
            "not absolute", self);
    *slash = 0;
    const char *dir = *self ? self : "/";
    char *program = concat(*self ? self : "", "/" PYTHON_FRONT, NULL);
    if (!program)
        die(EXIT_CANNOT_EXECUTE, NULL, "out of memory");
    uid_t euid = geteuid();
    if (euid == 0) { /* as selfcheck.check_install: a user can only hurt itself */
        char *problem = NULL;
        int dir_fd = open_trusted_dir(dir, 0, &problem);
        if (dir_fd < 0) {
            if (errno == EPERM)
                die(EXIT_REFUSED, INSTALL_HINT, "sandrun runs as root but would run %s, and "
                    "%s: whoever can change it would run code as root", program,
                    problem ? problem : dir);
            die(errno == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_EXECUTE, INSTALL_HINT,
                "cannot run %s: %s: %s", program, dir, strerror(errno));
        }
        int fd = openat(dir_fd, PYTHON_FRONT, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st))
            die(errno == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_EXECUTE, INSTALL_HINT,
                "cannot run %s: %s", program, strerror(errno));
        if (!S_ISREG(st.st_mode) || st.st_uid != 0 || (st.st_mode & 022))
            die(EXIT_REFUSED, INSTALL_HINT, "sandrun runs as root but would run %s, which is "
                "%s of uid %u, mode %04o: only a regular file of root's that nobody else may "
                "write is run as root", program, file_kind(st.st_mode), (unsigned)st.st_uid,
                (unsigned)(st.st_mode & 07777));
        close(fd);
        close(dir_fd);
    }
    execve(program, argv, environ);
    die(errno == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_EXECUTE,
        "reinstall sandrun (setup.py writes sandrun-py next to sandrun)",
        "cannot run %s: %s", program, strerror(errno));
}

/* ------------------------------------------------------------------ the exec words */

struct exec_words {
    int bundle;        /* argv index of the bundle word */
    const char *store; /* the last --store value, or NULL */
    int verbose;
    int args, n_args; /* the app's arguments: argv[args .. args + n_args) */
};

static const struct exec_option *find_option(const char *name, size_t len) {
    for (size_t i = 0; i < EXEC_OPTIONS_COUNT; i++)
        if (strlen(exec_options[i].name) == len && memcmp(exec_options[i].name, name, len) == 0)
            return &exec_options[i];
    return NULL;
}

static int serves_warm(const struct exec_option *option, const char *value) {
    if (option->warm == EXEC_WARM_ALWAYS)
        return 1;
    if (option->warm == EXEC_WARM_VALUES && value)
        for (const char *const *v = option->values; *v; v++)
            if (strcmp(*v, value) == 0)
                return 1;
    return 0;
}

/* warm_exec.parse_exec_args on argv[2..]: 0 for anything the warm path leaves to the
 * click command. */
static int parse_exec_words(int argc, char **argv, struct exec_words *words) {
    int i = 2;
    memset(words, 0, sizeof *words);
    while (i < argc) {
        const char *arg = argv[i];
        if (strcmp(arg, "--") == 0) { /* click: the next word is the bundle */
            i++;
            break;
        }
        if (arg[0] != '-' || strcmp(arg, "-") == 0)
            break;
        size_t name_len = strlen(arg);
        const char *value = NULL;
        if (arg[1] == '-') { /* --name=value; never -n=value, -nVALUE */
            const char *eq = strchr(arg, '=');
            if (eq) {
                name_len = (size_t)(eq - arg);
                value = eq + 1;
            }
        }
        const struct exec_option *option = find_option(arg, name_len);
        if (!option || option->warm == EXEC_WARM_NEVER)
            return 0;
        if (!option->takes_value) {
            if (value)
                return 0; /* click: "option does not take a value" */
        } else if (!value) {
            if (++i >= argc)
                return 0;
            value = argv[i];
        }
        if (!serves_warm(option, value))
            return 0;
        if (strcmp(option->dest, "store") == 0)
            words->store = value;
        else if (strcmp(option->dest, "verbose") == 0)
            words->verbose = 1;
        i++;
    }
    if (i >= argc)
        return 0;
    words->bundle = i;
    words->args = i + 1;
    if (words->args < argc && strcmp(argv[words->args], "--") == 0)
        words->args++; /* `sandrun exec BUNDLE -- ARGS`: as the cold path */
    words->n_args = argc - words->args;
    return 1;
}

/* ------------------------------------------------------------------ the key */

struct key {
    char *bytes;
    size_t len;
    char name[17]; /* 16 hex digits of FNV-1a 64 */
};

static int make_key(char **argv, const struct exec_words *words, const char *cwd,
                    const char *store, struct key *key) {
    char euid[24];
    snprintf(euid, sizeof euid, "%u", (unsigned)geteuid());
    const char *head[] = {KEY_MAGIC, NATIVE_RECORD_FORMAT, SANDRUN_VERSION, euid, cwd, store};
    size_t n_head = sizeof head / sizeof *head, len = 0;
    for (size_t i = 0; i < n_head; i++)
        len += strlen(head[i]) + 1;
    for (int i = 2; i <= words->bundle; i++)
        len += strlen(argv[i]) + 1;
    char *at = key->bytes = malloc(len);
    if (!at)
        return -1;
    for (size_t i = 0; i < n_head; i++) {
        size_t n = strlen(head[i]) + 1;
        memcpy(at, head[i], n);
        at += n;
    }
    for (int i = 2; i <= words->bundle; i++) {
        size_t n = strlen(argv[i]) + 1;
        memcpy(at, argv[i], n);
        at += n;
    }
    key->len = len;
    uint64_t hash = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        hash ^= (unsigned char)key->bytes[i];
        hash *= 0x100000001b3ULL;
    }
    snprintf(key->name, sizeof key->name, "%016llx", (unsigned long long)hash);
    return 0;
}

/* os.path.join(dir, name) */
static char *store_join(const char *dir, const char *name) {
    size_t len = strlen(dir);
    return concat(dir, len && dir[len - 1] == '/' ? "" : "/", name, NULL);
}

/* os.path.abspath(store) for a path without "..": `cwd`/store if relative, then
 * posixpath.normpath (no "." or empty components, no trailing "/"; a leading "//"
 * stays, three or more slashes become one). Malloc'd. */
static char *absolute_store(const char *store, const char *cwd) {
    char *joined = store[0] == '/' ? strdup(store) : store_join(cwd, store);
    if (!joined)
        return NULL;
    int slashes = joined[0] == '/' ? (joined[1] == '/' && joined[2] != '/' ? 2 : 1) : 0;
    char *out = malloc(strlen(joined) + 3), *at = out;
    if (!out) {
        free(joined);
        return NULL;
    }
    for (int i = 0; i < slashes; i++)
        *at++ = '/';
    for (char *p = joined; *p;) {
        while (*p == '/')
            p++;
        char *end = strchrnul(p, '/');
        size_t len = (size_t)(end - p);
        if (len && !(len == 1 && *p == '.')) {
            if (at > out + slashes)
                *at++ = '/';
            memcpy(at, p, len);
            at += len;
        }
        p = end;
    }
    if (at == out)
        *at++ = '.';
    *at = 0;
    free(joined);
    return out;
}

/* ------------------------------------------------------------------ the record */

/* An INT of the record: decimal, maybe negative, at most 64 bits of magnitude. */
struct num {
    int neg;
    uint64_t mag;
};

struct input {
    const char *path;
    int follow, present;
    struct num id[8]; /* dev ino mode uid gid size mtime_ns ctime_ns */
};

struct entry {
    const char *name;
    size_t len;
    struct num mode, uid, size, ino, ctime_ns;
};

struct record {
    const char *key, *boot_id, *tree_sha, *own_cgroup;
    size_t key_len, own_cgroup_len, n_inputs, n_entries;
    int has_not_after;
    long long not_after;
    unsigned tree_top_mode;
    struct input *inputs;
    struct entry *entries;
    struct spec *spec;
};

/* Netstrings one after the other; any error makes `ok` 0 for good, and every later read
 * returns an empty value (so the parse reads on and is refused once, at the end). */
struct reader {
    char *pos, *end;
    int ok;
};

static int fail_read(struct reader *r) {
    r->ok = 0;
    return 0;
}

/* The next netstring's bytes (NUL-terminated in place, over its ','). */
static int next_field(struct reader *r, char **data, size_t *len) {
    static char empty[1];
    *data = empty;
    *len = 0;
    if (!r->ok)
        return 0;
    char *p = r->pos;
    size_t n = 0, digits = 0;
    while (p < r->end && *p >= '0' && *p <= '9') {
        if (digits && n == 0)
            return fail_read(r); /* a leading zero */
        n = n * 10 + (size_t)(*p - '0');
        if (n > NATIVE_RECORD_MAX)
            return fail_read(r);
        digits++;
        p++;
    }
    if (!digits || p >= r->end || *p != ':')
        return fail_read(r);
    p++;
    if ((size_t)(r->end - p) < n + 1 || p[n] != ',')
        return fail_read(r);
    p[n] = 0;
    *data = p;
    *len = n;
    r->pos = p + n + 1;
    return 1;
}

static const char *get_bytes(struct reader *r, size_t *len) {
    char *data;
    next_field(r, &data, len);
    return data;
}

/* A netstring used as a C string: no NUL in it. */
static const char *get_str(struct reader *r) {
    size_t len;
    const char *data = get_bytes(r, &len);
    if (memchr(data, 0, len)) {
        fail_read(r);
        return "";
    }
    return data;
}

static void expect(struct reader *r, const char *literal) {
    size_t len;
    const char *data = get_bytes(r, &len);
    if (len != strlen(literal) || memcmp(data, literal, len) != 0)
        fail_read(r);
}

static int parse_num(const char *s, size_t len, struct num *out) {
    size_t i = 0;
    out->neg = 0;
    out->mag = 0;
    if (len && s[0] == '-') {
        out->neg = 1;
        i = 1;
    }
    if (i == len || (s[i] == '0' && (len - i > 1 || out->neg)))
        return -1; /* empty, a leading zero, "-0" */
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        if (__builtin_mul_overflow(out->mag, 10, &out->mag) ||
            __builtin_add_overflow(out->mag, (uint64_t)(s[i] - '0'), &out->mag))
            return -1;
    }
    return 0;
}

static struct num get_num(struct reader *r) {
    struct num out = {0, 0};
    size_t len;
    const char *data = get_bytes(r, &len);
    if (r->ok && parse_num(data, len, &out))
        fail_read(r);
    return out;
}

/* An INT in [min, max] (both within long long). */
static long long get_int(struct reader *r, long long min, long long max) {
    struct num n = get_num(r);
    long long value;
    if (!r->ok)
        return 0;
    if (n.neg) {
        if (n.mag > (uint64_t)LLONG_MAX + 1)
            return fail_read(r);
        value = n.mag == (uint64_t)LLONG_MAX + 1 ? LLONG_MIN : -(long long)n.mag;
    } else {
        if (n.mag > (uint64_t)LLONG_MAX)
            return fail_read(r);
        value = (long long)n.mag;
    }
    if (value < min || value > max)
        return fail_read(r);
    return value;
}

static uint64_t get_u64(struct reader *r) {
    struct num n = get_num(r);
    if (n.neg)
        return fail_read(r);
    return n.mag;
}

static int get_bool(struct reader *r) {
    size_t len;
    const char *data = get_bytes(r, &len);
    if (len != 1 || (data[0] != '0' && data[0] != '1'))
        return fail_read(r);
    return data[0] == '1';
}

/* A count N, then room for N items of at least `fields` netstrings ("0:," each) must
 * be left; an array of N zeroed items of `size` bytes (NULL and *n = 0 on failure). */
static void *get_array(struct reader *r, size_t *n, size_t fields, size_t size) {
    *n = (size_t)get_int(r, 0, NATIVE_MAX_ITEMS);
    if (r->ok && *n * fields * 3 > (size_t)(r->end - r->pos))
        fail_read(r);
    void *items = r->ok ? calloc(*n ? *n : 1, size) : NULL;
    if (!items) {
        fail_read(r);
        *n = 0;
    }
    return items;
}

static int is_component(const char *name) {
    return *name && !strchr(name, '/') && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

static void parse_landlock(struct reader *r, struct landlock_spec *ll) {
    ll->present = get_bool(r);
    if (!ll->present)
        return;
    ll->abi = (int)get_int(r, 1, INT_MAX);
    ll->handled_fs = get_u64(r);
    ll->handled_net = get_u64(r);
    ll->scoped = get_u64(r);
    ll->restrict_flags = (uint32_t)get_int(r, 0, UINT32_MAX);
    ll->paths = get_array(r, &ll->n_paths, 4, sizeof *ll->paths);
    for (size_t i = 0; i < ll->n_paths; i++) {
        ll->paths[i].path = get_str(r);
        ll->paths[i].rights = get_u64(r);
        ll->paths[i].required = get_bool(r);
        ll->paths[i].label = get_str(r);
    }
    ll->bind_tcp = get_array(r, &ll->n_bind, 1, sizeof *ll->bind_tcp);
    for (size_t i = 0; i < ll->n_bind; i++)
        ll->bind_tcp[i] = (uint64_t)get_int(r, 0, 65535);
    ll->connect_tcp = get_array(r, &ll->n_connect, 1, sizeof *ll->connect_tcp);
    for (size_t i = 0; i < ll->n_connect; i++)
        ll->connect_tcp[i] = (uint64_t)get_int(r, 0, 65535);
}

static void parse_cgroup(struct reader *r, struct record *rec, struct spec *spec) {
    rec->own_cgroup = get_bytes(r, &rec->own_cgroup_len);
    spec->nodes = get_array(r, &spec->n_nodes, 7, sizeof *spec->nodes);
    for (size_t i = 0; i < spec->n_nodes; i++) {
        struct cgroup_node *node = &spec->nodes[i];
        node->base_fd = node->parent_fd = node->fd = -1;
        node->path[0] = 0;
        node->version = (int)get_int(r, 1, 2);
        node->dir = get_str(r);
        if (node->dir[0] != '/')
            fail_read(r);
        node->dev_major = (unsigned)get_int(r, 0, UINT_MAX);
        node->dev_minor = (unsigned)get_int(r, 0, UINT_MAX);
        node->delegate = get_str(r);
        node->required = get_bool(r);
        node->settings = get_array(r, &node->n_settings, 4, sizeof *node->settings);
        for (size_t j = 0; j < node->n_settings; j++) {
            struct cgroup_setting *setting = &node->settings[j];
            setting->file = get_str(r);
            setting->value = get_str(r);
            setting->required = get_bool(r);
            setting->when = get_str(r);
            if (setting->when[0] && ((setting->when[0] != '+' && setting->when[0] != '-') ||
                                     !setting->when[1]))
                fail_read(r);
        }
    }
}

/* The record's fields (front.h: the native record), or NULL when `data` is not one. */
static struct record *parse_record(char *data, size_t len) {
    struct reader r = {data, data + len, 1};
    struct record *rec = calloc(1, sizeof *rec);
    struct spec *spec = calloc(1, sizeof *spec);
    if (!rec || !spec)
        return NULL;
    rec->spec = spec;
    spec->supervisor_fd = -1;
    expect(&r, RECORD_MAGIC);
    expect(&r, NATIVE_RECORD_FORMAT);
    rec->key = get_bytes(&r, &rec->key_len);
    rec->boot_id = get_str(&r);
    size_t not_after_len;
    const char *not_after = get_bytes(&r, &not_after_len);
    if (not_after_len) {
        struct num n;
        if (parse_num(not_after, not_after_len, &n) || n.mag > (uint64_t)LLONG_MAX)
            fail_read(&r);
        rec->has_not_after = 1;
        rec->not_after = n.neg ? -(long long)n.mag : (long long)n.mag;
    }
    spec->supervisor = get_str(&r);
    if (spec->supervisor[0] != '/')
        fail_read(&r);
    rec->inputs = get_array(&r, &rec->n_inputs, 11, sizeof *rec->inputs);
    for (size_t i = 0; i < rec->n_inputs; i++) {
        struct input *in = &rec->inputs[i];
        in->path = get_str(&r);
        in->follow = get_bool(&r);
        in->present = get_bool(&r);
        for (int j = 0; j < 8; j++) {
            in->id[j] = get_num(&r);
            if (!in->present && in->id[j].mag != 0)
                fail_read(&r);
        }
    }
    rec->tree_sha = get_str(&r);
    if (!is_component(rec->tree_sha))
        fail_read(&r);
    rec->tree_top_mode = (unsigned)get_int(&r, 0, 07777);
    rec->entries = get_array(&r, &rec->n_entries, 6, sizeof *rec->entries);
    for (size_t i = 0; i < rec->n_entries; i++) {
        struct entry *e = &rec->entries[i];
        e->name = get_str(&r);
        e->len = strlen(e->name);
        e->mode = get_num(&r);
        e->uid = get_num(&r);
        e->size = get_num(&r);
        e->ino = get_num(&r);
        e->ctime_ns = get_num(&r);
    }
    /* the spec */
    spec->uid = (uid_t)get_int(&r, 0, (long long)UINT32_MAX - 1);
    spec->gid = (gid_t)get_int(&r, 0, (long long)UINT32_MAX - 1);
    spec->user_name = get_str(&r);
    spec->app_name = get_str(&r);
    spec->interpreter = get_str(&r);
    spec->argv = get_array(&r, &spec->n_argv, 1, sizeof *spec->argv);
    for (size_t i = 0; i < spec->n_argv; i++)
        spec->argv[i] = get_str(&r);
    spec->env = get_array(&r, &spec->n_env, 2, sizeof *spec->env);
    for (size_t i = 0; i < spec->n_env; i++) {
        spec->env[i].name = get_str(&r);
        spec->env[i].value = get_str(&r);
    }
    spec->env_pass = get_array(&r, &spec->n_env_pass, 1, sizeof *spec->env_pass);
    for (size_t i = 0; i < spec->n_env_pass; i++)
        spec->env_pass[i] = get_str(&r);
    spec->env_set = get_array(&r, &spec->n_env_set, 2, sizeof *spec->env_set);
    for (size_t i = 0; i < spec->n_env_set; i++) {
        spec->env_set[i].name = get_str(&r);
        spec->env_set[i].value = get_str(&r);
    }
    spec->cwd = get_str(&r);
    spec->state_dir = get_str(&r);
    spec->rlimits = get_array(&r, &spec->n_rlimits, 2, sizeof *spec->rlimits);
    for (size_t i = 0; i < spec->n_rlimits; i++) {
        spec->rlimits[i].resource = (int)get_int(&r, 0, INT_MAX);
        spec->rlimits[i].value = get_int(&r, -1, LLONG_MAX);
    }
    spec->mdwe = get_bool(&r);
    spec->hostname = get_str(&r);
    spec->tmp_size = get_int(&r, 0, LLONG_MAX);
    spec->writable = get_array(&r, &spec->n_writable, 1, sizeof *spec->writable);
    for (size_t i = 0; i < spec->n_writable; i++)
        spec->writable[i] = get_str(&r);
    parse_landlock(&r, &spec->landlock);
    size_t bpf_len;
    const char *bpf = get_bytes(&r, &bpf_len);
    if (bpf_len % 8 || bpf_len / 8 > 65535) /* struct sock_filter[]; sock_fprog.len */
        fail_read(&r);
    unsigned char *bpf_copy = malloc(bpf_len ? bpf_len : 1); /* aligned for sock_filter */
    if (!bpf_copy)
        fail_read(&r);
    else
        memcpy(bpf_copy, bpf, bpf_len);
    spec->seccomp_bpf = bpf_copy;
    spec->seccomp_len = bpf_len;
    spec->failure_notes = get_array(&r, &spec->n_failure_notes, 1,
                                    sizeof *spec->failure_notes);
    for (size_t i = 0; i < spec->n_failure_notes; i++)
        spec->failure_notes[i] = get_str(&r);
    parse_cgroup(&r, rec, spec);
    expect(&r, "end");
    if (!r.ok || r.pos != r.end)
        return NULL;
    return rec;
}

/* read_private(name, dir_fd): a regular file of ours, no group or other bits, at most
 * NATIVE_RECORD_MAX bytes, read exactly; NULL (fall back) for anything else. */
static char *read_private(int dir_fd, const char *name, size_t *len) {
    int fd = openat(dir_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    char *data = NULL, extra;
    size_t size, got = 0;
    ssize_t n;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
        (st.st_mode & 077) || st.st_size < 0 || (uint64_t)st.st_size > NATIVE_RECORD_MAX)
        goto fail;
    size = (size_t)st.st_size;
    data = malloc(size + 1);
    if (!data)
        goto fail;
    while (got < size) {
        n = read(fd, data + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto fail; /* an error, or shorter than fstat said */
        got += (size_t)n;
    }
    while ((n = read(fd, &extra, 1)) < 0 && errno == EINTR) {
    }
    if (n != 0)
        goto fail; /* longer than fstat said, or an error */
    close(fd);
    data[size] = 0;
    *len = size;
    return data;
fail:
    close(fd);
    free(data);
    return NULL;
}

/* ------------------------------------------------------------------ the checks */

static int num_is_u64(const struct num *n, uint64_t value) {
    return !n->neg && n->mag == value;
}

static int num_is_i64(const struct num *n, long long value) {
    if (value < 0)
        return n->neg && n->mag == (uint64_t)(-(value + 1)) + 1;
    return !n->neg && n->mag == (uint64_t)value;
}

/* Python's st_*time_ns: sec * 10**9 + nsec. */
static int num_is_ns(const struct num *n, const struct timespec *ts) {
    uint64_t mag;
    if (ts->tv_sec >= 0) {
        if (__builtin_mul_overflow((uint64_t)ts->tv_sec, 1000000000u, &mag) ||
            __builtin_add_overflow(mag, (uint64_t)ts->tv_nsec, &mag))
            return 0;
        return num_is_u64(n, mag);
    }
    uint64_t sec = (uint64_t)(-(ts->tv_sec + 1)) + 1;
    if (__builtin_mul_overflow(sec, 1000000000u, &mag))
        return 0;
    mag -= (uint64_t)ts->tv_nsec; /* nsec < 10**9 <= mag */
    return n->neg && n->mag == mag;
}

/* warm_exec.identity(path, follow) == the recorded one (PRESENT 0: the path is absent). */
static int input_matches(const struct input *in) {
    struct stat st;
    int rc = in->follow ? stat(in->path, &st) : lstat(in->path, &st);
    if (rc) /* warm_exec.identity: any error is "absent", as the record was written */
        return !in->present;
    return in->present && num_is_u64(&in->id[0], st.st_dev) &&
           num_is_u64(&in->id[1], st.st_ino) && num_is_u64(&in->id[2], st.st_mode) &&
           num_is_u64(&in->id[3], st.st_uid) && num_is_u64(&in->id[4], st.st_gid) &&
           num_is_i64(&in->id[5], st.st_size) && num_is_ns(&in->id[6], &st.st_mtim) &&
           num_is_ns(&in->id[7], &st.st_ctim);
}

static int is_space(char c) {
    return c == ' ' || (c >= '\t' && c <= '\r'); /* str.strip()'s ASCII whitespace */
}

static int boot_id_matches(const char *recorded) {
    size_t len;
    char *now = read_small(BOOT_ID, SMALL_FILE_MAX, &len);
    if (!now)
        return 0;
    const char *start = now;
    while (is_space(*start))
        start++;
    while (len > (size_t)(start - now) && is_space(now[len - 1]))
        now[--len] = 0;
    int same = *start && strcmp(start, recorded) == 0;
    free(now);
    return same;
}

struct walked {
    char *name;
    size_t len;
    mode_t mode;
    uid_t uid;
    off_t size;
    ino_t ino;
    struct timespec ctime;
};

struct walk {
    struct walked *items;
    size_t n, cap, limit;
};

static int walk_add(struct walk *w, char *name, const struct stat *st, int top) {
    if (w->n >= w->limit)
        return -1; /* more entries than the record has: no match */
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 256;
        if (cap > w->limit)
            cap = w->limit;
        struct walked *items = realloc(w->items, cap * sizeof *items);
        if (!items)
            return -1;
        w->items = items;
        w->cap = cap;
    }
    struct walked *e = &w->items[w->n++];
    e->name = name;
    e->len = strlen(name);
    e->mode = st->st_mode;
    e->uid = st->st_uid;
    e->size = top ? 0 : st->st_size;
    e->ino = st->st_ino;
    e->ctime = top ? (struct timespec){0, 0} : st->st_ctim;
    return 0;
}

/* warm_exec.tree_snapshot(top_fd) (safefile.walk_dir), at most `limit` entries. */
static int walk_tree(int top_fd, struct walk *w) {
    struct names dirs = {0};
    int result = -1;
    if (names_push(&dirs, "", 0))
        return -1;
    while (dirs.n) {
        char *rel = names_pop(&dirs);
        int fd = rel[0] ? openat(top_fd, rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                        : openat(top_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
        if (!dir) {
            close_keep_errno(fd);
            free(rel);
            goto out;
        }
        for (;;) {
            errno = 0;
            struct dirent *d = readdir(dir);
            if (!d) {
                if (errno)
                    goto out_dir;
                break;
            }
            if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
                continue;
            struct stat st;
            if (fstatat(dirfd(dir), d->d_name, &st, AT_SYMLINK_NOFOLLOW))
                goto out_dir;
            char *name = rel[0] ? concat(rel, "/", d->d_name, NULL) : strdup(d->d_name);
            if (!name)
                goto out_dir;
            if (walk_add(w, name, &st, 0)) {
                free(name);
                goto out_dir;
            }
            if (S_ISDIR(st.st_mode) && names_push(&dirs, name, w->items[w->n - 1].len))
                goto out_dir;
        }
        closedir(dir);
        free(rel);
        continue;
    out_dir:
        closedir(dir);
        free(rel);
        goto out;
    }
    result = 0;
out:
    names_free(&dirs);
    return result;
}

static int compare_walked(const void *a, const void *b) {
    const struct walked *x = a, *y = b;
    int c = memcmp(x->name, y->name, x->len < y->len ? x->len : y->len);
    if (c)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

/* warm_exec.snapshot_matches, against the record's entries; also the tree top's mode,
 * owner and group (_load_record's check after it). */
static int tree_matches(int apps_fd, const struct record *rec) {
    if (rec->n_entries == 0)
        return 0; /* the top "" entry is always there */
    int top_fd = openat(apps_fd, rec->tree_sha, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (top_fd < 0)
        return 0;
    struct walk w = {NULL, 0, 0, rec->n_entries};
    struct stat top;
    char *top_name = NULL;
    int match = 0;
    if (fstat(top_fd, &top) || walk_tree(top_fd, &w) || w.n != rec->n_entries - 1)
        goto out;
    top_name = strdup("");
    if (!top_name || walk_add(&w, top_name, &top, 1)) {
        free(top_name);
        goto out;
    }
    qsort(w.items, w.n, sizeof *w.items, compare_walked);
    for (size_t i = 0; i < w.n; i++) {
        const struct walked *got = &w.items[i];
        const struct entry *want = &rec->entries[i];
        if (got->len != want->len || (got->len && memcmp(got->name, want->name, got->len)) ||
            !num_is_u64(&want->mode, got->mode) || !num_is_u64(&want->uid, got->uid) ||
            !num_is_i64(&want->size, got->size) || !num_is_u64(&want->ino, got->ino) ||
            !num_is_ns(&want->ctime_ns, &got->ctime))
            goto out;
    }
    /* the top: exactly TREE_TOP_MODE, root's, the app's group (another app group
     * granted the tree since: the cold path) */
    match = S_ISDIR(top.st_mode) && (top.st_mode & 07777) == rec->tree_top_mode &&
            top.st_uid == geteuid() && top.st_gid == rec->spec->gid;
out:
    for (size_t i = 0; i < w.n; i++)
        free(w.items[i].name);
    free(w.items);
    close(top_fd);
    return match;
}

#define NOT_PENDING (-2) /* pending_lock: the tree's bytecode is not pending */

/* When the tree's bytecode is pending (apps/.<sha>.bytecode), an fd of its lock
 * (apps/.<sha>.lock), or -1 when that cannot be opened; NOT_PENDING otherwise. */
static int pending_lock(int apps_fd, const char *tree_sha) {
    char *mark = concat(".", tree_sha, BYTECODE_PENDING_SUFFIX, NULL);
    char *lock = concat(".", tree_sha, ".lock", NULL);
    struct stat st;
    int fd = -1;
    if (mark && lock) {
        if (fstatat(apps_fd, mark, &st, AT_SYMLINK_NOFOLLOW) != 0)
            fd = errno == ENOENT ? NOT_PENDING : -1;
        else
            fd = openat(apps_fd, lock, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    }
    free(mark);
    free(lock);
    return fd;
}

/* warm_exec._waited_for_bytecode: when the tree's bytecode is pending, wait for the lock
 * its compile holds (it then has snapshot the tree and rewritten the records); 1 if so,
 * and the caller reads the record again, once. */
static int waited_for_bytecode(int apps_fd, const char *tree_sha) {
    int fd = pending_lock(apps_fd, tree_sha);
    if (fd < 0)
        return 0;
    int waited = flock(fd, LOCK_SH) == 0;
    close(fd);
    return waited;
}

/* warm_exec._bytecode_abandoned: the tree's bytecode is pending but no compile holds its
 * lock (one was killed): the cold path, which starts another, must serve this launch. */
static int bytecode_abandoned(int apps_fd, const char *tree_sha) {
    int fd = pending_lock(apps_fd, tree_sha);
    if (fd == NOT_PENDING)
        return 0;
    if (fd < 0)
        return 1;
    int abandoned = flock(fd, LOCK_SH | LOCK_NB) == 0 || errno != EWOULDBLOCK;
    close(fd);
    return abandoned;
}

/* The spec's state dir is <store>/state/<one component>, a 0700 dir of the app user. */
static int state_matches(int state_fd, const char *abs_store, const struct spec *spec) {
    char *states = store_join(abs_store, "state");
    if (!states)
        return 0;
    size_t len = strlen(states);
    int match = 0;
    if (strncmp(spec->state_dir, states, len) == 0 && spec->state_dir[len] == '/' &&
        is_component(spec->state_dir + len + 1)) {
        struct stat st;
        match = fstatat(state_fd, spec->state_dir + len + 1, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                S_ISDIR(st.st_mode) && st.st_uid == spec->uid && (st.st_mode & 07777) == 0700;
    }
    free(states);
    return match;
}

/* runner.open_supervisor: an O_RDONLY fd of SUPERVISOR reached through trusted dirs,
 * a regular file of root's nobody else may write, executable by its owner; or -1. */
static int open_supervisor(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash || !slash[1])
        return -1;
    char *dir = slash == path ? strdup("/") : strndup(path, (size_t)(slash - path));
    if (!dir)
        return -1;
    char *problem;
    uid_t owner = geteuid();
    int dir_fd = open_trusted_dir(dir, owner, &problem);
    free(dir);
    free(problem);
    if (dir_fd < 0)
        return -1;
    int fd = openat(dir_fd, slash + 1, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    close(dir_fd);
    struct stat st;
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || (st.st_uid != 0 && st.st_uid != owner) ||
        (st.st_mode & 022) || !(st.st_mode & 0100)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The launch cgroup plan holds only while we are in the cgroup it was made in. */
/* Whether our v2 cgroup (node->dir) already hands every controller the node delegates
 * to its children (cgroup.subtree_control). The front never delegates there itself:
 * that may need moving sandrun into a leaf, and depends on which other processes share
 * the cgroup, which only the Python path decides (cgroup._Survey) and words. */
static int delegated(const struct cgroup_node *node) {
    const char *want = node->delegate ? node->delegate : "";
    if (node->version != 2 || !want[strspn(want, " ")])
        return 1;
    int dir = cgroup_open_dir(node->dir);
    if (dir < 0)
        return 0;
    char have[1024];
    int fd = openat(dir, "cgroup.subtree_control", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    close(dir);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, have, sizeof have - 1);
    close(fd);
    if (n < 0 || n == (ssize_t)sizeof have - 1)
        return 0;
    have[n] = 0;
    for (const char *w = want + strspn(want, " "); *w; w += strspn(w, " ")) {
        size_t len = strcspn(w, " ");
        int found = 0;
        for (const char *h = have + strspn(have, " \n"); *h && !found;
             h += strspn(h, " \n")) {
            size_t hlen = strcspn(h, " \n");
            found = hlen == len && memcmp(h, w, len) == 0;
            h += hlen;
        }
        if (!found)
            return 0;
        w += len;
    }
    return 1;
}

static int own_cgroup_matches(const struct record *rec) {
    if (rec->own_cgroup_len == 0 && rec->spec->n_nodes == 0)
        return 1; /* no plan (no limits): nothing depends on it */
    size_t len;
    char *now = read_small(OWN_CGROUP, SMALL_FILE_MAX, &len);
    if (!now)
        return 0;
    int same = len == rec->own_cgroup_len && memcmp(now, rec->own_cgroup, len) == 0;
    free(now);
    for (size_t i = 0; same && i < rec->spec->n_nodes; i++)
        same = delegated(&rec->spec->nodes[i]);
    return same;
}

/* warm_exec.load_record for the exec words: the spec to launch, or NULL (fall back).
 * *record_path: where the record is, for -v. */
static struct spec *load_record(char **argv, const struct exec_words *words,
                                char **record_path) {
    const char *env = getenv("SANDRUN_STORE");
    const char *store = words->store && *words->store ? words->store
                        : env && *env                 ? env
                                                      : DEFAULT_STORE;
    if (has_dotdot(store))
        return NULL;
    char *cwd = getcwd(NULL, 0);
    if (!cwd)
        return NULL;
    struct key key;
    char *abs_store = absolute_store(store, cwd);
    if (!abs_store || make_key(argv, words, cwd, store, &key))
        return NULL;
    /* open_store: trusted all the way, then the root, apps/ and state/ ours alone */
    char *problem;
    int store_fd = open_trusted_dir(store, geteuid(), &problem);
    if (store_fd < 0)
        return NULL;
    int apps_fd = openat(store_fd, "apps", O_PATH | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC);
    int state_fd = openat(store_fd, "state", O_PATH | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC);
    int launch_fd = openat(store_fd, RECORD_DIR, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (apps_fd < 0 || state_fd < 0 || launch_fd < 0)
        return NULL;
    const int dirs[] = {store_fd, apps_fd, state_fd};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        struct stat st;
        if (fstat(dirs[i], &st) || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() ||
            (st.st_mode & 022))
            return NULL;
    }
    /* open_private_dir(launch) */
    struct stat st;
    if (fstat(launch_fd, &st) || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() ||
        (st.st_mode & 077))
        return NULL;
    char *name = concat(key.name, RECORD_SUFFIX, NULL);
    if (!name)
        return NULL;
    struct record *rec;
    for (int attempt = 0;; attempt++) {
        size_t len;
        char *data = read_private(launch_fd, name, &len);
        if (!data)
            return NULL;
        rec = parse_record(data, len);
        if (!rec || rec->key_len != key.len || memcmp(rec->key, key.bytes, key.len) != 0)
            return NULL;
        /* _load_record's checks, in its order */
        if (!boot_id_matches(rec->boot_id))
            return NULL;
        if (rec->has_not_after && time(NULL) >= rec->not_after)
            return NULL; /* the signer's validity window ended: the cold path decides again */
        for (size_t i = 0; i < rec->n_inputs; i++)
            if (!input_matches(&rec->inputs[i]))
                return NULL;
        if (tree_matches(apps_fd, rec)) {
            if (bytecode_abandoned(apps_fd, rec->tree_sha))
                return NULL;
            break;
        }
        if (attempt > 0 || !waited_for_bytecode(apps_fd, rec->tree_sha))
            return NULL;
    }
    if (!state_matches(state_fd, abs_store, rec->spec))
        return NULL;
    if (!own_cgroup_matches(rec))
        return NULL;
    rec->spec->supervisor_fd = open_supervisor(rec->spec->supervisor);
    if (rec->spec->supervisor_fd < 0)
        return NULL;
    close(apps_fd);
    close(state_fd);
    close(launch_fd);
    close(store_fd);
    char *launch_dir = store_join(abs_store, RECORD_DIR);
    *record_path = launch_dir ? concat(launch_dir, "/", name, NULL) : NULL;
    if (!*record_path)
        return NULL;
    return rec->spec;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv) {
    /* Set by the cold path that exec'd us on the record it just wrote (cli_exec): the -v
     * line says so, and if we fall back it stays set, so that Python launches itself
     * instead of handing the launch to us again. */
    const char *cold = getenv(COLD_ENV);
    if (argc < 2 || strcmp(argv[1], "exec") != 0 || geteuid() != 0)
        fall_back(argc, argv);
    struct exec_words words;
    if (!parse_exec_words(argc, argv, &words))
        fall_back(argc, argv);
    char *record_path = NULL;
    struct spec *spec = load_record(argv, &words, &record_path);
    if (!spec)
        fall_back(argc, argv);
    if (cold) {
        /* Only the record the cold path named: any other (a key computed otherwise, a
         * record replaced since) is a doubt, and Python launches itself. */
        const char *slash = strrchr(record_path, '/');
        if (strcmp(cold, slash ? slash + 1 : record_path) != 0)
            fall_back(argc, argv);
    }
    unsetenv(COLD_ENV);
    if (words.verbose)
        fprintf(stderr, cold ? "sandrun: cold start, launched by the native front (record "
                               "%s)\n"
                             : "sandrun: warm start (native front, record %s)\n",
                record_path);
    launch(spec, argv + words.args, words.n_args);
}
