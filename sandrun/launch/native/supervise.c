/* sandrun-supervise: what stays resident next to a running app, as small as a process
 * can be (~1 MB RSS instead of a root Python interpreter).
 *
 * The Python launcher decides and sets up everything (sandrun/launch/runner.py), then
 * execs this program in two places:
 *
 *   sandrun-supervise launcher TITLE CHILD ERR_FD GO_FD KILL_LEFTOVERS CGROUP [NODE...]
 *                     [-- UID [NOTE...]]
 *       in the launcher, once its child has the go: forward the signals an operator
 *       sends, wait for CHILD, report a failed setup (the child's report on ERR_FD),
 *       kill and remove the launch cgroup, exit with the app's code (128+N if killed
 *       by signal N). GO_FD is held open until the end: the child sees end of file
 *       there if the launcher is gone. KILL_LEFTOVERS (1: not root, no PID namespace)
 *       kills what got reparented to us. NODE = VERSION:BASE_FD:PARENT_FD:FD:PATH,
 *       one per cgroup hierarchy of the launch cgroup named CGROUP ("-": none).
 *       With "--": after a failed run (no setup report, a code other than 0, 130 and
 *       143), say how it ended as explain.explanation(plan, code, None, ...) does:
 *       the exit line (the OOM killer looked up for the app user UID), the advice to
 *       rerun with --explain, then each NOTE (RunSpec.failure_notes), each line
 *       prefixed by "sandrun: ".
 *   sandrun-supervise init TITLE APP
 *       PID 1 of the app's PID namespace, once it forked the app: reap, forward
 *       signals to APP, exit with its code. Its parent-death signal (SIGKILL, set
 *       before the exec and kept by it: same credentials) takes the namespace down
 *       with the launcher.
 *
 * Exactly what runner._supervise, runner._read_report and cgroup.Cgroup.remove do in
 * Python (the fallback when this binary is missing), and explain.exit_lines' texts;
 * keep them in step. The process title (argv and comm) becomes TITLE ("sandrun: <app>").
 */
#define _GNU_SOURCE
#include "cgroupfs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EXIT_REFUSED 125
#define MAX_NODES 16
#define REPORT_MAGIC "SANDRUN-REPORT"

static const int forwarded[] = {SIGTERM, SIGINT,  SIGHUP,  SIGQUIT, SIGUSR1, SIGUSR2,
                                SIGWINCH, SIGALRM, SIGCONT, SIGTSTP, SIGTTIN, SIGTTOU};

struct node {
    int version, base_fd, parent_fd, fd;
    const char *path;
};

static void set_title(int argc, char **argv, const char *title) {
    /* argv's strings are contiguous: overwrite them all (what /proc/PID/cmdline shows) */
    char *start = argv[0], *end = argv[argc - 1] + strlen(argv[argc - 1]);
    size_t room = (size_t)(end - start), len = strlen(title);
    char copy[256];
    snprintf(copy, sizeof copy, "%s", title); /* TITLE itself lies in that area */
    memset(start, 0, room + 1);
    len = len < room ? len : room;
    memcpy(start, copy, len);
    /* A last byte that is not NUL tells the kernel the title was rewritten: it shows
     * up to the first NUL, not the padding (which ps would show as blanks). */
    if (room > len)
        start[room] = ' ';
    prctl(PR_SET_NAME, (unsigned long)copy, 0, 0, 0); /* comm: first 15 bytes */
}

static void block_signals(sigset_t *set) {
    sigemptyset(set);
    for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
        sigaddset(set, forwarded[i]);
    sigaddset(set, SIGCHLD);
    sigprocmask(SIG_BLOCK, set, NULL);
}

static int exit_code(int status) {
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

/* Reap every exited child; 1 and *code if `child` was among them. */
static int reap(pid_t child, int *code) {
    int found = 0, status;
    for (;;) {
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            return found;
        if (pid == child) {
            *code = exit_code(status);
            found = 1;
        }
    }
}

/* Wait for `child`, forwarding signals sent by processes (si_code <= 0: SI_USER,
 * SI_QUEUE, SI_TKILL); the kernel's (a tty's) already reached its process group. */
static int supervise(pid_t child, const sigset_t *set) {
    int code = 0;
    if (reap(child, &code)) /* exited before SIGCHLD was blocked (started by hand) */
        return code;
    for (;;) {
        siginfo_t info;
        if (sigwaitinfo(set, &info) < 0)
            continue; /* EINTR */
        if (info.si_signo == SIGCHLD) {
            if (reap(child, &code))
                return code;
        } else if (info.si_code <= 0) {
            kill(child, info.si_signo);
        }
    }
}

/* Non-root fallback for the PID namespace: kill what got reparented to us. */
static void kill_orphans(void) {
    char me[32];
    int dummy;
    snprintf(me, sizeof me, "%d", (int)getpid());
    for (int round = 0; round < 10; round++) {
        int found = 0;
        DIR *proc = opendir("/proc");
        if (!proc)
            return;
        struct dirent *entry;
        while ((entry = readdir(proc))) {
            if (entry->d_name[0] < '0' || entry->d_name[0] > '9')
                continue;
            char path[300], buf[1024];
            snprintf(path, sizeof path, "/proc/%s/stat", entry->d_name);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                continue;
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n <= 0)
                continue;
            buf[n] = 0;
            char *paren = strrchr(buf, ')'); /* comm may hold anything but not after ')' */
            char state, ppid[32];
            if (!paren || sscanf(paren + 1, " %c %31s", &state, ppid) != 2)
                continue;
            if (strcmp(ppid, me) == 0) {
                found = 1;
                kill(atoi(entry->d_name), SIGKILL);
            }
        }
        closedir(proc);
        reap(-1, &dummy);
        if (!found)
            return;
    }
}

/* ------------------------------------------------------------ the launch cgroup */

/* cgroup.Cgroup.remove: v2 first (cgroup.kill ends every process at once). Appends the
 * problems to `problems`; returns how many there were. */
static int remove_cgroup(struct node *nodes, int count, const char *name, char *problems,
                         size_t size) {
    int found = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < count; i++) {
            struct node *node = &nodes[i];
            if ((node->version == 2) != (pass == 0))
                continue;
            const char *what = NULL;
            int result = cgfs_empty(node->version, node->fd);
            if (result == 0)
                what = "processes survived SIGKILL";
            else if (result > 0 &&
                     (result = cgfs_remove_launch_dir(node->base_fd, node->parent_fd, name)) == 0)
                what = "still busy";
            if (result < 0)
                what = strerror(errno);
            if (what) {
                size_t used = strlen(problems);
                snprintf(problems + used, size - used, "%s%s: %s", found ? "; " : "",
                         node->path, what);
                found++;
            }
        }
    }
    return found;
}

/* ------------------------------------------------------------ the child's report */

/* runner._report: "SANDRUN-REPORT\0stage\0message\0hint\0exit code"; anything else is
 * printed as it is. Returns the exit code to use, or -1 when there was no report. */
static int print_report(int fd) {
    static char data[65536];
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, data + len, sizeof data - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || len + (size_t)n >= sizeof data - 1) {
            if (n > 0)
                len += (size_t)n;
            break;
        }
        len += (size_t)n;
    }
    close(fd);
    if (len == 0)
        return -1;
    data[len] = 0;
    const char *field[5];
    size_t at = 0;
    int fields = 0;
    while (fields < 5 && at <= len) {
        field[fields++] = data + at;
        at += strlen(data + at) + 1;
    }
    if (fields == 5 && strcmp(field[0], REPORT_MAGIC) == 0) {
        fprintf(stderr, "sandrun: error: the sandbox could not be set up (%s): %s\n", field[1],
                field[2]);
        if (field[3][0])
            fprintf(stderr, "  hint: %s\n", field[3]);
        int code = atoi(field[4]);
        return code > 0 && code < 256 ? code : EXIT_REFUSED;
    }
    fprintf(stderr, "sandrun: error: the sandbox could not be set up (launch): %.*s\n",
            (int)len, data);
    return EXIT_REFUSED;
}

/* ------------------------------------------------------------ the explanation */

/* explain.SIGNALS and explain._SENT, byte for byte (tests/launch/test_supervisor.py
 * compares the line of every exit code with explain.exit_lines). */
struct signal_text {
    int number;
    const char *name, *why; /* why NULL: a signal someone sent (_SENT) */
};

static const struct signal_text signal_texts[] = {
    {4, "SIGILL", "an illegal instruction (a native extension built for another CPU?)"},
    {6, "SIGABRT", "it aborted (a failed C assertion, a Python fatal error, or glibc "
                   "detected memory corruption)"},
    {7, "SIGBUS", "a bus error: a mapped file shrank, or a tmpfs (/tmp, /dev/shm) is full "
                  "([limits] memory sizes the private /tmp)"},
    {8, "SIGFPE", "an arithmetic fault in native code"},
    {9, "SIGKILL", "killed outright: by the OOM killer when the memory limit is reached "
                   "([limits] memory), by a hard RLIMIT_CPU ([process] rlimits cpu), or "
                   "by someone"},
    {11, "SIGSEGV", "a crash in native code; under [process] mdwe = true, code that needs "
                    "writable and executable memory (a JIT, ctypes callbacks) cannot get "
                    "it"},
    {24, "SIGXCPU", "the CPU time limit ([process] rlimits cpu)"},
    {25, "SIGXFSZ", "a file reached the size limit ([limits] fsize)"},
    {31, "SIGSYS", "seccomp kills a process making a syscall of another architecture "
                   "(IA-32 int 0x80, x32): not allowed"},
    {1, "SIGHUP", NULL},
    {2, "SIGINT", NULL},
    {3, "SIGQUIT", NULL},
    {13, "SIGPIPE", NULL},
    {14, "SIGALRM", NULL},
    {15, "SIGTERM", NULL},
};

#define EXPLAIN_ADVICE                                                                     \
    "; to list what the sandbox denied during the run, run it again with `sandrun exec "   \
    "--explain`"
#define KMSG_RECORDS 100000 /* explain.oom_kill's bound: the ring holds far fewer */

static int ends_with(const char *text, const char *suffix) {
    size_t len = strlen(text), n = strlen(suffix);
    return len >= n && memcmp(text + len - n, suffix, n) == 0;
}

static int all_digits(const char *text) {
    return *text && strspn(text, "0123456789") == strlen(text);
}

/* explain.oom_kill: the kernel log's last oom-kill line since `floor_us` (CLOCK_MONOTONIC
 * microseconds, the kernel log's clock) whose task_memcg is our launch cgroup (named
 * after our pid, the launcher's) or whose uid is `uid`, as "task T, pid P" in `out`;
 * 0 when there is none. */
static int oom_kill(const char *uid, long long floor_us, char *out, size_t size) {
    int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char own[32];
    snprintf(own, sizeof own, "-%d", (int)getpid());
    static char entry[8193];
    int found = 0;
    for (int round = 0; round < KMSG_RECORDS; round++) {
        ssize_t n = read(fd, entry, sizeof entry - 1);
        if (n < 0 && errno == EAGAIN)
            break;
        if (n < 0)
            continue; /* EPIPE: a record was overwritten while reading; go on */
        if (n == 0)
            break;
        entry[n] = 0;
        char *message = strchr(entry, ';');
        if (!message)
            continue;
        *message++ = 0;
        /* the head: PRIORITY,SEQUENCE,MICROSECONDS,FLAGS[,...] */
        char *stamp = entry;
        for (int i = 0; stamp && i < 2; i++) {
            stamp = strchr(stamp, ',');
            if (stamp)
                stamp++;
        }
        if (!stamp)
            continue;
        char *comma = strchr(stamp, ',');
        if (comma)
            *comma = 0;
        if (!all_digits(stamp) || (strlen(stamp) <= 18 && atoll(stamp) < floor_us))
            continue;
        if (strncmp(message, "oom-kill:", 9) != 0)
            continue;
        /* str.strip(), then key=value items separated by commas (the last one wins) */
        size_t len = strlen(message);
        while (len && strchr(" \t\n\r\v\f", message[len - 1]))
            message[--len] = 0;
        const char *memcg = NULL, *task = NULL, *pid = NULL, *who = NULL;
        for (char *item = message; item;) {
            char *next = strchr(item, ',');
            if (next)
                *next++ = 0;
            char *value = strchr(item, '=');
            if (value)
                *value++ = 0;
            else
                value = item + strlen(item); /* "" */
            if (strcmp(item, "task_memcg") == 0)
                memcg = value;
            else if (strcmp(item, "task") == 0)
                task = value;
            else if (strcmp(item, "pid") == 0)
                pid = value;
            else if (strcmp(item, "uid") == 0)
                who = value;
            item = next;
        }
        if ((memcg && ends_with(memcg, own)) || (who && strcmp(who, uid) == 0)) {
            snprintf(out, size, "task %s, pid %s", task ? task : "?", pid ? pid : "?");
            found = 1;
        }
    }
    close(fd);
    return found;
}

/* explain.explanation(plan, code, None, started) for a failed run: the exit line with
 * the advice to rerun with --explain, then the notes; each line after "sandrun: ". */
static void explain_failure(int code, const char *uid, long long started_ns, char **notes,
                            int n_notes) {
    const struct signal_text *text = NULL;
    for (size_t i = 0; code > 128 && i < sizeof signal_texts / sizeof *signal_texts; i++)
        if (signal_texts[i].number == code - 128)
            text = &signal_texts[i];
    static char oom[8300];
    if (!text)
        fprintf(stderr, "sandrun: the app exited with status %d" EXPLAIN_ADVICE "\n", code);
    else if (!text->why)
        fprintf(stderr, "sandrun: exit status %d: the app was killed by %s (sent to it, or "
                "forwarded by sandrun)" EXPLAIN_ADVICE "\n", code, text->name);
    else if (text->number == SIGKILL &&
             oom_kill(uid, started_ns / 1000 - 1000000, oom, sizeof oom))
        fprintf(stderr, "sandrun: exit status %d: the app was killed by SIGKILL: the OOM "
                "killer (%s); raise [limits] memory" EXPLAIN_ADVICE "\n", code, oom);
    else
        fprintf(stderr, "sandrun: exit status %d: the app was killed by %s: %s"
                EXPLAIN_ADVICE "\n", code, text->name, text->why);
    for (int i = 0; i < n_notes; i++)
        fprintf(stderr, "sandrun: %s\n", notes[i]);
}

/* ------------------------------------------------------------ main */

static int parse_int(const char *text, int *value) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < -1 || v > 0x7fffffff)
        return -1;
    *value = (int)v;
    return 0;
}

static int parse_node(char *text, struct node *node) {
    char *parts[5];
    for (int i = 0; i < 4; i++) {
        parts[i] = text;
        text = strchr(text, ':');
        if (!text)
            return -1;
        *text++ = 0;
    }
    parts[4] = text;
    node->path = parts[4];
    return parse_int(parts[0], &node->version) || parse_int(parts[1], &node->base_fd) ||
                   parse_int(parts[2], &node->parent_fd) || parse_int(parts[3], &node->fd)
               ? -1
               : 0;
}

static int compare_int(const void *a, const void *b) {
    return *(const int *)a - *(const int *)b;
}

/* Close every fd from 3 on but `keep` (sorted here): nothing the launcher or a
 * socket-activating systemd passed stays open in the resident process. */
static void close_others(int *keep, int count) {
    if (count)
        qsort(keep, (size_t)count, sizeof *keep, compare_int);
    unsigned int low = 3;
    for (int i = 0; i < count; i++) {
        if (keep[i] < (int)low)
            continue;
        if ((unsigned int)keep[i] > low)
            syscall(SYS_close_range, low, (unsigned int)keep[i] - 1, 0);
        low = (unsigned int)keep[i] + 1;
    }
    syscall(SYS_close_range, low, ~0U, 0);
}

static int usage(void) {
    fprintf(stderr, "sandrun-supervise: started wrongly (it is run by sandrun exec only)\n");
    return EXIT_REFUSED;
}

int main(int argc, char **argv) {
    sigset_t set;
    block_signals(&set); /* already blocked by the launcher: nothing sent is lost */
    if (argc == 4 && strcmp(argv[1], "init") == 0) {
        int app;
        if (parse_int(argv[3], &app) || app <= 0)
            return usage();
        set_title(argc, argv, argv[2]);
        close_others(NULL, 0);
        return supervise(app, &set);
    }
    if (argc < 8 || strcmp(argv[1], "launcher") != 0)
        return usage();
    long long started_ns = cgfs_now_ns(); /* explain.oom_kill's `since` */
    int end = 8;                     /* the NODEs end at "--" */
    while (end < argc && strcmp(argv[end], "--") != 0)
        end++;
    int child, err_fd, go_fd, kill_leftovers, count = end - 8;
    struct node nodes[MAX_NODES];
    if (parse_int(argv[3], &child) || child <= 0 || parse_int(argv[4], &err_fd) ||
        parse_int(argv[5], &go_fd) || parse_int(argv[6], &kill_leftovers) ||
        count > MAX_NODES)
        return usage();
    /* "-- UID [NOTE...]": explain a failed run (copied: set_title overwrites argv) */
    int explain = end < argc, n_notes = 0;
    static char uid[16];
    char **notes = NULL;
    if (explain) {
        char *stop;
        errno = 0;
        unsigned long value = end + 1 < argc ? strtoul(argv[end + 1], &stop, 10) : 0;
        if (end + 1 >= argc || errno || stop == argv[end + 1] || *stop ||
            !all_digits(argv[end + 1]) || value > 0xfffffffeUL)
            return usage();
        snprintf(uid, sizeof uid, "%lu", value); /* str(uid): what explain compares */
        n_notes = argc - end - 2;
        notes = calloc((size_t)n_notes + 1, sizeof *notes);
        for (int i = 0; notes && i < n_notes; i++)
            if (!(notes[i] = strdup(argv[end + 2 + i])))
                notes = NULL; /* no memory: no notes, the rest still works */
        if (!notes)
            n_notes = 0;
    }
    static char name[256], title[256];
    snprintf(name, sizeof name, "%s", argv[7]);
    snprintf(title, sizeof title, "%s", argv[2]);
    static char node_text[MAX_NODES][4096];
    for (int i = 0; i < count; i++) {
        snprintf(node_text[i], sizeof node_text[i], "%s", argv[8 + i]);
        if (parse_node(node_text[i], &nodes[i]))
            return usage();
    }
    set_title(argc, argv, title);
    int keep[2 + 3 * MAX_NODES], kept = 0;
    keep[kept++] = err_fd;
    keep[kept++] = go_fd;
    for (int i = 0; i < count; i++) {
        keep[kept++] = nodes[i].base_fd;
        keep[kept++] = nodes[i].parent_fd;
        keep[kept++] = nodes[i].fd;
    }
    close_others(keep, kept);
    int code = supervise(child, &set);
    if (kill_leftovers)
        kill_orphans();
    int reported = print_report(err_fd);
    close(go_fd);
    static char problems[8192];
    if (count && remove_cgroup(nodes, count, name, problems, sizeof problems) && reported < 0) {
        fprintf(stderr,
                "sandrun: error: cannot remove the launch cgroup: %s\n"
                "  hint: processes stuck in the kernel (D state) cannot be killed; look at "
                "/proc/<pid>/stack, then remove the cgroup\n",
                problems);
        return EXIT_REFUSED;
    }
    if (reported >= 0)
        return reported;
    /* 130/143: ended by the SIGINT/SIGTERM we forwarded (a service being stopped), not
     * by a failure worth explaining (cli.exec_) */
    if (explain && code != 0 && code != 130 && code != 143)
        explain_failure(code, uid, started_ns, notes, n_notes);
    return code;
}
