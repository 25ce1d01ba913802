"""`sandrun export k8s`: manifests that validate, a Pod spec under the "restricted" Pod
Security Standard, a seccomp profile that means what sandrun's filter means, and an image
whose entrypoint really applies the sandbox.

Offline: the manifests are validated with `kubernetes-validate` (its bundled schemas,
strict: an unknown field fails) and checked field by field; the seccomp JSON is compiled
with libseccomp the way runc does and compared with sandrun's own filter syscall by
syscall. The image is emulated for runc: the build context's files with the
Containerfile's RUN step applied, Debian's python3.11 mounted where python:3.11-slim has
its CPython (/usr/local), emptyDir volumes as tmpfs (not noexec, as emptyDir), and the
exported JSON as the outer filter; the probe inside reports what it could do.
"""

from __future__ import annotations

import errno
import json
import marshal
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import need, run_sandrun
from wheelcraft import make_wheel

from sandrun.bundle.manifest import Manifest
from sandrun.errors import EnforcementError
from sandrun.ops.export.k8s import (
    _landlock_for_abi,
    cpu_quantity,
    default_uid,
    k8s_name,
    memory_quantity,
    to_yaml,
)
from sandrun.ops.export.oci import APPLIER_SYSCALLS, check_outer
from sandrun.sandbox import landlock, seccomp
from sandrun.sandbox.syscall_table import X86_64_SYSCALLS

PROBE = Path(__file__).resolve().parent.parent / "probe" / "sandrun_probe.py"
APP = "k8s.probe"  # a `.`: not in a Kubernetes name
NAME = "sandrun-k8s-probe"
RUN_TIMEOUT = 60
TIOCSTI, TIOCLINUX, TCGETS = 0x5412, 0x541C, 0x5401
DEBIAN_PYTHON = "/usr/bin/python3.11"
NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # what the runtime gives the pod

# The app: `facts` reports what the sandbox gave it; anything else goes to the probe.
K8S_PROBE = '''\
import json, os, resource, sys

def main():
    if sys.argv[1:] == ["facts"]:
        names = ("core", "fsize", "nofile", "nproc")
        print(json.dumps({
            "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
            "cwd": os.getcwd(), "home": os.environ.get("HOME"),
            "tmpdir": os.environ.get("TMPDIR"), "executable": sys.executable,
            "limits": {n: list(resource.getrlimit(getattr(resource, "RLIMIT_" + n.upper())))
                       for n in names}}))
        return 0
    import sandrun_probe
    return sandrun_probe.main()
'''

GREEDY = '''\
extends = "default"
[network]
bind_tcp = [80, 8080]
connect_tcp = [443]
dns = true
[filesystem]
read = ["/etc/passwd"]
read_write = ["{{state}}", "{rwdir}"]
[limits]
cpu = "50%"
memory = "512M"
'''

pytestmark = pytest.mark.usefixtures("require_root", "require_landlock", "require_seccomp")


@dataclass
class Lab:
    root: Path
    store: Path
    plain: Path  # the default profile embedded
    greedy: Path  # embeds a profile beyond default
    greedy_toml: Path
    rwdir: Path


@pytest.fixture(scope="module")
def lab(require_root: None, require_landlock: int, require_seccomp: None) -> Iterator[Lab]:
    # Not under /tmp: a read_write grant there would share the pod's /tmp volume.
    root = Path(tempfile.mkdtemp(prefix="sandrun-k8s-", dir="/var/lib"))
    try:
        make_wheel(root / "wheels", "k8s_probe", "1.0",
                   {"k8s_probe.py": K8S_PROBE, "sandrun_probe.py": PROBE.read_text()})
        rwdir = root / "rwdir"
        rwdir.mkdir()
        profiles = {"plain": 'extends = "default"\n',
                    "greedy": GREEDY.format(rwdir=rwdir)}
        bundles = {}
        for name, text in profiles.items():
            (root / f"{name}.toml").write_text(text)
            out = root / f"{name}.pyz"
            proc = run_sandrun("bundle", "k8s_probe", "--no-index", "--find-links",
                               str(root / "wheels"), "-e", "k8s_probe:main", "--name", APP,
                               "-p", str(root / f"{name}.toml"), "-o", str(out),
                               timeout=RUN_TIMEOUT)
            assert proc.returncode == 0, proc.stderr
            bundles[name] = out
        yield Lab(root, root / "store", bundles["plain"], bundles["greedy"],
                  root / "greedy.toml", rwdir)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def export(lab: Lab, out: str, *extra: str, bundle: Path | None = None,
           args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return run_sandrun("export", "k8s", "--store", str(lab.store), *extra,
                       str(bundle or lab.plain), "-o", str(lab.root / out),
                       *(["--", *args] if args else []), timeout=RUN_TIMEOUT)


@pytest.fixture(scope="module")
def plain(lab: Lab) -> Path:
    proc = export(lab, "k8s-plain", args=("--flag", "x y"))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {lab.root / 'k8s-plain'}" in proc.stdout
    return lab.root / "k8s-plain"


@pytest.fixture(scope="module")
def greedy(lab: Lab) -> Path:
    proc = export(lab, "k8s-greedy", "-p", str(lab.greedy_toml), bundle=lab.greedy)
    assert proc.returncode == 0, proc.stderr
    return lab.root / "k8s-greedy"


def documents(out: Path) -> dict[str, dict[str, Any]]:
    """kind -> the document, read by a real YAML parser."""
    found = {}
    for path in sorted(out.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        found[doc["kind"]] = doc
    return found


def pod_of(out: Path) -> dict[str, Any]:
    return documents(out)["Deployment"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def spec_of(out: Path, image_path: str = "sandrun/spec.marshal") -> dict[str, Any]:
    return marshal.loads((out / "image" / image_path).read_bytes())  # type: ignore[no-any-return]


# ------------------------------------------------------------------ pure logic


@pytest.mark.parametrize("value", [
    "true", "False", "yes", "no", "on", "off", "null", "~", "", " lead", "trail ", "1",
    "1.0", "0x1F", "1e3", ".inf", "-I", "--", "a: b", "a #b", "#c", "*ref", "&anchor",
    "!tag", "@x", "`x", "[x]", "{x}", "x,y", "'q'", '"dq"', "line\nbreak", "tab\there",
    "é ünïcode", "\x00nul", "512Mi", "/usr/local/bin/python3.11", "profiles/a.json", "%x",
    "a\\b", "?", "-", "|", ">"])
def test_yaml_emitter_round_trips(value: str) -> None:
    document = {"key": value, value or "k": [value, {"in": value, "n": 1, "b": False}],
                "empty": [], "none": {}, "nested": {"list": [{"a": value}, 3]}}
    assert yaml.safe_load(to_yaml(document, ["a comment"])) == document


def test_names_and_quantities() -> None:
    assert k8s_name("web_app.v2") == "sandrun-web-app-v2"
    assert k8s_name("x.") == "sandrun-x"
    assert k8s_name("a" * 24) == "sandrun-" + "a" * 24
    assert memory_quantity(512 << 20) == "512Mi"
    assert memory_quantity(1 << 30) == "1Gi"
    assert memory_quantity(3 << 40) == "3Ti"
    assert memory_quantity(1536 << 10) == "1536Ki"
    assert memory_quantity(1000) == "1000"
    assert cpu_quantity(50) == "500m"
    assert cpu_quantity(100) == "1"
    assert cpu_quantity(250) == "2500m"
    assert cpu_quantity(1) == "10m"
    uid = default_uid(APP)
    assert 10_000 <= uid < 60_000 and uid == default_uid(APP) != default_uid("other")


# ------------------------------------------------------------------ the manifests


def test_manifests_validate_strictly(plain: Path, greedy: Path) -> None:
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    assert tuple(int(p) for p in version.split(".")[:2]) >= (1, 33), version
    for out in (plain, greedy):
        docs = documents(out)
        assert set(docs) == {"Deployment", "NetworkPolicy"}
        for doc in docs.values():
            kubernetes_validate.validate(doc, version, strict=True)
    # Strict really is strict: an unknown field fails.
    bogus = documents(plain)["Deployment"]
    bogus["spec"]["template"]["spec"]["containers"][0]["securityContext"]["bogus"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bogus, version, strict=True)
    # And the command line, as the README shows it.
    tool = Path(sys.executable).with_name("kubernetes-validate")
    proc = subprocess.run([str(tool), "--strict", *map(str, sorted(plain.glob("*.yaml")))],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("passed") == 2, proc.stdout


def test_pod_security_standard_restricted(plain: Path, greedy: Path) -> None:
    for out in (plain, greedy):
        pod = pod_of(out)
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert pod.get(host, False) is False
        uid = default_uid(APP)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) \
            == (uid, uid)
        assert pod["securityContext"]["fsGroup"] == uid
        (container,) = pod["containers"]
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert isinstance(context["runAsUser"], int) and context["runAsUser"] == uid
        assert isinstance(context["runAsGroup"], int) and context["runAsGroup"] == uid
        assert context["allowPrivilegeEscalation"] is False
        assert context["privileged"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        for where in (pod["securityContext"], context):
            assert where["seccompProfile"] == {
                "type": "Localhost", "localhostProfile": f"profiles/sandrun-{APP}.json"}
        # Only emptyDir volumes (no hostPath), each with a size limit.
        assert all(set(v) == {"name", "emptyDir"} and v["emptyDir"]["sizeLimit"]
                   for v in pod["volumes"])
        assert "hostPort" not in json.dumps(container)
        for sysctl in pod["securityContext"].get("sysctls", []):
            assert sysctl["name"] == "net.ipv4.ip_unprivileged_port_start"  # a safe sysctl


def test_localhost_profile_path_and_file(plain: Path) -> None:
    path = pod_of(plain)["securityContext"]["seccompProfile"]["localhostProfile"]
    # Relative to the kubelet's seccomp root, no way out of it, and the file is beside
    # the YAML under the same name.
    assert not path.startswith("/") and ".." not in path.split("/")
    assert path == f"profiles/{Path(path).name}"
    assert (plain / Path(path).name).is_file()
    text = (plain / f"{NAME}.deployment.yaml").read_text()
    assert f"/var/lib/kubelet/seccomp/{path}" in text  # where the header says to put it


def test_container_runs_the_applier_then_the_app(lab: Lab, plain: Path) -> None:
    pod = pod_of(plain)
    (container,) = pod["containers"]
    assert container["command"] == ["/usr/local/bin/python3.11", "-I", "-B", "-S",
                                    "/sandrun/start.py"]
    assert container["args"] == ["--flag", "x y"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    sha = documents(plain)["Deployment"]["metadata"]["annotations"]["sandrun/bundle-sha256"]
    assert container["image"] == f"{NAME}:{sha[:12]}"
    spec = spec_of(plain)
    assert (spec["uid"], spec["gid"]) == (default_uid(APP), default_uid(APP))
    tree = f"/var/lib/sandrun/apps/{sha}"
    assert spec["argv"] == ["/usr/local/bin/python3.11", "-I", "-B", "-S",
                            f"{tree}/.sandrun/bootstrap.py"]
    state = f"/var/lib/sandrun/state/{APP}"
    assert spec["env"]["HOME"] == state and spec["cwd"] == state
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {state: "state", "/tmp": "tmp", "/var/tmp": "var-tmp"}
    # Landlock names the image's paths, not this host's interpreter or store.
    rules = {path: (rights, required) for path, rights, required, _ in
             spec["landlock"]["paths"]}
    assert rules["/usr/local/bin/python3.11"][1] and rules["/usr/local/lib/python3.11"][1]
    assert rules["/lib64/ld-linux-x86-64.so.2"][0] & landlock.ACCESS_FS_EXECUTE
    assert rules[tree] == (landlock.ACCESS_FS_READ_FILE | landlock.ACCESS_FS_READ_DIR, True)
    assert rules[state][0] & landlock.ACCESS_FS_WRITE_FILE
    assert not rules[state][0] & landlock.ACCESS_FS_EXECUTE
    assert not any(str(lab.store) in path or path.startswith("/usr/bin/") for path in rules)
    # The tree in the build context is the bundle's, byte for byte.
    manifest = Manifest.from_bytes((plain / "image" / tree.lstrip("/") / ".sandrun" /
                                    "manifest.json").read_bytes())
    import hashlib

    for name, record in manifest.entries.items():
        data = (plain / "image" / tree.lstrip("/") / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record.sha256, name


def test_containerfile(plain: Path) -> None:
    text = (plain / "Containerfile").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "FROM --platform=linux/amd64 docker.io/library/python:3.11-slim"
    assert lines[1] == "COPY --chown=0:0 image/ /"
    uid = default_uid(APP)
    sha = documents(plain)["Deployment"]["metadata"]["annotations"]["sandrun/bundle-sha256"]
    assert "chmod -R a-w /sandrun /var/lib/sandrun/apps;" in text
    assert f"chown 0:{uid} /var/lib/sandrun/apps/{sha}; chmod 0750" in text
    assert f"USER {uid}:{uid}" in lines
    entrypoint = json.loads(next(x for x in lines if x.startswith("ENTRYPOINT "))[11:])
    assert entrypoint == pod_of(plain)["containers"][0]["command"]
    assert json.loads(next(x for x in lines if x.startswith("CMD "))[4:]) == ["--flag", "x y"]


def test_limits_ports_and_network_policy(lab: Lab, plain: Path, greedy: Path) -> None:
    (container,) = pod_of(plain)["containers"]
    # default: memory 1G, tasks 512, nofile 1024, fsize 4G; no cpu.
    assert container["resources"] == {"limits": {"memory": "1Gi"},
                                      "requests": {"memory": "1Gi"}}
    assert "ports" not in container
    start = (plain / "image" / "sandrun" / "start.py").read_text()
    assert ("RLIMITS = [('core', 0), ('fsize', 4294967296), ('nofile', 1024), "
            "('nproc', 512)]") in start
    policy = documents(plain)["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy and "egress" not in policy  # deny all
    assert policy["podSelector"]["matchLabels"] == \
        documents(plain)["Deployment"]["spec"]["selector"]["matchLabels"]

    pod = pod_of(greedy)
    (container,) = pod["containers"]
    assert container["resources"] == {"limits": {"cpu": "500m", "memory": "512Mi"},
                                      "requests": {"cpu": "500m", "memory": "512Mi"}}
    assert container["ports"] == [
        {"name": "tcp-80", "containerPort": 80, "protocol": "TCP"},
        {"name": "tcp-8080", "containerPort": 8080, "protocol": "TCP"}]
    assert pod["securityContext"]["sysctls"] == [
        {"name": "net.ipv4.ip_unprivileged_port_start", "value": "80"}]
    rw = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert rw[str(lab.rwdir)] == "rw-1"
    policy = documents(greedy)["NetworkPolicy"]["spec"]
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": 80},
                                            {"protocol": "TCP", "port": 8080}]}]
    assert policy["egress"] == [{"ports": [{"protocol": "TCP", "port": 443},
                                           {"protocol": "UDP", "port": 53},
                                           {"protocol": "TCP", "port": 53}]}]
    spec = spec_of(greedy)
    assert spec["landlock"]["bind_tcp"] == [80, 8080]
    assert spec["landlock"]["connect_tcp"] == [443]


def test_what_kubernetes_cannot_enforce_is_said(lab: Lab) -> None:
    proc = export(lab, "k8s-said")
    assert proc.returncode == 0, proc.stderr
    assert "not enforced by Kubernetes: [limits] tasks" in proc.stderr
    assert "not noexec" in proc.stderr
    assert f"/var/lib/kubelet/seccomp/profiles/sandrun-{APP}.json" in proc.stdout
    assert "the profile requires" not in proc.stderr
    proc = export(lab, "k8s-said-greedy", "-p", str(lab.greedy_toml), bundle=lab.greedy)
    assert proc.returncode == 0, proc.stderr
    assert "the profile requires /etc/passwd: the image must have them" in proc.stderr
    assert f"read_write grants get an emptyDir each (lost with the pod; use a persistent " \
        f"volume for data): {lab.rwdir}" in proc.stderr


def test_output_is_deterministic(lab: Lab, plain: Path) -> None:
    proc = export(lab, "k8s-again", args=("--flag", "x y"))
    assert proc.returncode == 0, proc.stderr
    again = lab.root / "k8s-again"

    def tree(root: Path) -> dict[str, tuple[bytes, int]]:
        return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode)
                for p in sorted(root.rglob("*")) if p.is_file()}

    assert tree(plain) == tree(again)


def test_unapproved_embedded_profile_refuses_and_writes_nothing(lab: Lab) -> None:
    before = sorted(lab.root.rglob("*"))
    proc = export(lab, "k8s-refused", bundle=lab.greedy)
    assert proc.returncode == 125, proc.stdout + proc.stderr
    assert "network.bind_tcp" in proc.stderr and "sandrun approve" in proc.stderr
    assert not (lab.root / "k8s-refused").exists()
    assert sorted(lab.root.rglob("*")) == before  # no temp dir, no store
    # An empty directory given as -o stays empty.
    (lab.root / "k8s-empty").mkdir()
    proc = export(lab, "k8s-empty", bundle=lab.greedy)
    assert proc.returncode == 125
    assert not any((lab.root / "k8s-empty").iterdir())


def test_usage_errors(lab: Lab, plain: Path) -> None:
    proc = export(lab, "k8s-plain")  # not empty
    assert proc.returncode == 2 and "not empty" in proc.stderr
    for option in (("--state-size", "lots"), ("--tmp-size", "0"), ("--uid", "0"),
                   ("--image", "Bad Ref")):
        proc = export(lab, "k8s-usage", *option)
        assert proc.returncode == 2, (option, proc.stderr)
        assert not (lab.root / "k8s-usage").exists()


def test_landlock_abi_of_the_nodes(lab: Lab, plain: Path, require_landlock: int) -> None:
    # For this host's ABI, the export's ruleset is exactly the one exec would build.
    policy = landlock.LandlockPolicy(
        paths=(landlock.PathRule("/usr", landlock.Access.READ_EXEC),
               landlock.PathRule("/var/tmp", landlock.Access.READ_WRITE, required=False)),
        bind_tcp=(8080, 80), connect_tcp=(443,), min_abi=4)
    assert _landlock_for_abi(policy, require_landlock) == landlock.ruleset_spec(policy)
    assert spec_of(plain)["landlock"]["abi"] == require_landlock
    proc = export(lab, "k8s-abi6", "--landlock-abi", "6")
    assert proc.returncode == 0, proc.stderr
    ruleset = spec_of(lab.root / "k8s-abi6")["landlock"]
    assert ruleset["abi"] == 6
    assert ruleset["handled_fs"] == landlock.fs_rights_for_abi(6)
    assert ruleset["restrict_flags"] == 0  # logging flags need ABI 7
    assert ruleset["scoped"] == landlock.scopes_for_abi(6)
    assert all(rights & ~landlock.fs_rights_for_abi(6) == 0
               for _, rights, _, _ in ruleset["paths"])
    assert "Landlock ABI 6 or newer" in \
        (lab.root / "k8s-abi6" / f"{NAME}.deployment.yaml").read_text()
    # Below the profile's landlock_min_abi (6 in default): refused, nothing written.
    proc = export(lab, "k8s-abi5", "--landlock-abi", "5")
    assert proc.returncode == 125, proc.stderr
    assert "landlock_min_abi 6" in proc.stderr
    assert not (lab.root / "k8s-abi5").exists()


# ------------------------------------------------------------------ the seccomp profile


def compile_like_runc(profile: dict[str, Any]) -> bytes:
    """The BPF libseccomp builds from an OCI/docker seccomp profile, rule by rule as runc
    adds them (one rule per name, its conditions ANDed)."""
    import pyseccomp as sc

    def action(name: str, errno_ret: int | None) -> Any:
        return {"SCMP_ACT_ALLOW": sc.ALLOW, "SCMP_ACT_KILL_PROCESS": sc.KILL_PROCESS,
                "SCMP_ACT_ERRNO": sc.ERRNO(errno.EPERM if errno_ret is None else errno_ret)
                }[name]

    flt = sc.SyscallFilter(action(profile["defaultAction"], profile.get("defaultErrnoRet")))
    for entry in profile["syscalls"]:
        conditions = [sc.Arg(a["index"], getattr(sc, a["op"].removeprefix("SCMP_CMP_")),
                             a["value"], a["valueTwo"]) for a in entry.get("args", [])]
        for name in entry["names"]:
            flt.add_rule(action(entry["action"], entry.get("errnoRet")), name, *conditions)
    with tempfile.TemporaryFile() as out:
        flt.export_bpf(out)
        out.seek(0)
        return out.read()


def numbers() -> dict[str, int]:
    import pyseccomp as sc

    return {name: sc.resolve_syscall(sc.Arch.X86_64, name) for name in X86_64_SYSCALLS}


ARG_VALUES = (0, 1, 2, 8, 10, 16, 17, TCGETS, TIOCSTI, TIOCLINUX, TIOCSTI | 1 << 32,
              TIOCLINUX | 0xFFFF_FFFF_0000_0000, 0x10000000, 0x7E020000, 0x20000000,
              0xFFFFFFFF, 1 << 32)


def test_seccomp_profile_means_what_sandruns_filter_means(plain: Path) -> None:
    profile = json.loads((plain / f"sandrun-{APP}.json").read_text())
    assert profile["defaultAction"] in ("SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS")
    assert profile["defaultErrnoRet"] == errno.ENOSYS
    assert profile["architectures"] == ["SCMP_ARCH_X86_64"]
    check_outer(profile)  # the traps: NE pairs, 64-bit compares, mixed rules, names
    unconditional = {n: e["action"] for e in profile["syscalls"] if not e.get("args")
                     for n in e["names"]}
    conditional = {n for e in profile["syscalls"] if e.get("args") for n in e["names"]}
    for name in ("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
                 "seccomp", "prctl", "execve", "prlimit64"):
        assert unconditional.get(name) == "SCMP_ACT_ALLOW", name
    assert not conditional & set(unconditional)
    ioctl = [e for e in profile["syscalls"] if e["names"] == ["ioctl"]]
    assert ioctl and all(
        [a["op"] for a in e["args"]] == ["SCMP_CMP_MASKED_EQ"] and e["args"][0]["index"] == 1
        and e["args"][0]["value"] <= 0xFFFFFFFF for e in ioctl)
    assert {"names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
            "args": [{"index": 1, "value": 0xFFFFFFFF, "valueTwo": TIOCSTI,
                      "op": "SCMP_CMP_MASKED_EQ"}]} in profile["syscalls"]

    # What runc would load, against sandrun's own filter (the applier loads it after).
    outer = compile_like_runc(profile)
    inner = spec_of(plain)["seccomp_bpf"]
    nr = numbers()
    for name in sorted(X86_64_SYSCALLS):
        vectors = [[0] * 6]
        if name in conditional:
            vectors += [[v if i == index else 0 for i in range(6)]
                        for index in range(4) for v in ARG_VALUES]
        for args in vectors:
            got = seccomp.evaluate(outer, nr[name], args)
            if name in APPLIER_SYSCALLS:
                assert got == seccomp.RET_ALLOW, name
            else:
                assert got == seccomp.evaluate(inner, nr[name], args), (name, args)
    eperm = seccomp.RET_ERRNO | errno.EPERM
    assert seccomp.evaluate(outer, nr["ioctl"], [0, TIOCSTI | 1 << 32]) == eperm
    assert seccomp.evaluate(outer, nr["ioctl"], [0, TCGETS]) == seccomp.RET_ALLOW

    # Control: the same denial as a 64-bit EQ (what a naive translation writes) is
    # bypassed with a high bit; the export's own check refuses such a profile.
    def deny_tiocsti(op: str, value: int, value_two: int) -> dict[str, Any]:
        return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
             "args": [{"index": 1, "value": value, "valueTwo": value_two, "op": op}]}]}

    naive = deny_tiocsti("SCMP_CMP_EQ", TIOCSTI, 0)
    masked = deny_tiocsti("SCMP_CMP_MASKED_EQ", 0xFFFFFFFF, TIOCSTI)
    for args, naive_result in (([0, TIOCSTI], eperm),
                               ([0, TIOCSTI | 1 << 32], seccomp.RET_ALLOW)):
        assert seccomp.evaluate(compile_like_runc(naive), nr["ioctl"], args) == naive_result
        assert seccomp.evaluate(compile_like_runc(masked), nr["ioctl"], args) == eperm
    with pytest.raises(EnforcementError, match="not a MASKED_EQ on the low 32 bits"):
        check_outer(naive)


# ------------------------------------------------------------------ the image, under runc


@pytest.fixture(scope="module")
def require_runc() -> None:
    need(shutil.which("runc") is not None, "runc is not installed (apt-get install runc)")
    need(os.access(DEBIAN_PYTHON, os.X_OK), f"{DEBIAN_PYTHON} (Debian's python3.11) is "
         "missing: it stands in for python:3.11-slim's CPython")


def emulate_image(out: Path, rootfs: Path) -> None:
    """The image the Containerfile builds, as a runc rootfs: the build context's image/
    with the RUN step applied, and the mount points of python:3.11-slim's CPython and
    libraries (bind-mounted from Debian's by runc_config)."""
    pod = pod_of(out)
    uid = pod["securityContext"]["runAsUser"]
    sha = documents(out)["Deployment"]["metadata"]["annotations"]["sandrun/bundle-sha256"]
    shutil.copytree(out / "image", rootfs, symlinks=True)
    os.chmod(rootfs, 0o755)
    for top in (rootfs / "sandrun", rootfs / "var/lib/sandrun/apps"):
        for path in [top, *top.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
    tree = rootfs / f"var/lib/sandrun/apps/{sha}"
    os.chown(tree, 0, uid)
    tree.chmod(0o750)
    state = rootfs / f"var/lib/sandrun/state/{APP}"
    state.mkdir(parents=True, mode=0o700)
    os.chown(state, uid, uid)
    for directory in ("proc", "dev", "tmp", "var/tmp", "usr/lib", "usr/lib64",
                      "usr/local/bin", "usr/local/lib/python3.11", "etc"):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    (rootfs / "usr/local/bin/python3.11").touch()
    os.symlink("usr/lib", rootfs / "lib")
    os.symlink("usr/lib64", rootfs / "lib64")
    (rootfs / "etc/passwd").write_text(f"root:x:0:0::/root:/bin/sh\nsandrun-{APP}:x:{uid}:"
                                       f"{uid}::/var/lib/sandrun/state/{APP}:/bin/false\n")
    (rootfs / "etc/group").write_text(f"root:x:0:\nsandrun-{APP}:x:{uid}:\n")
    # World-readable, so that only Landlock can keep the app from it.
    (rootfs / "etc/shadow").write_text("root:not-a-real-hash:19000::::::\n")
    (rootfs / "etc/shadow").chmod(0o644)


def runc_config(out: Path, rootfs: Path, volumes: Path, args: list[str]) -> dict[str, Any]:
    """config.json as a CRI runtime builds it from the Pod spec (runAsUser/Group, fsGroup
    as a supplementary group, no capability, no_new_privs, read-only root, the Localhost
    seccomp profile, emptyDir volumes: writable, not noexec)."""
    pod = pod_of(out)
    (container,) = pod["containers"]
    context = container["securityContext"]
    uid, gid = context["runAsUser"], context["runAsGroup"]
    assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {
        "drop": ["ALL"]} and context["readOnlyRootFilesystem"] is True
    profile_file = Path(pod["securityContext"]["seccompProfile"]["localhostProfile"]).name
    ro = ["rbind", "ro", "nosuid", "nodev"]
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": []},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/usr/lib", "type": "bind", "source": "/usr/lib", "options": ro},
        {"destination": "/usr/lib64", "type": "bind", "source": "/usr/lib64", "options": ro},
        {"destination": "/usr/local/bin/python3.11", "type": "bind", "source": DEBIAN_PYTHON,
         "options": ro},
        {"destination": "/usr/local/lib/python3.11", "type": "bind",
         "source": "/usr/lib/python3.11", "options": ro},
    ]
    for mount in container["volumeMounts"]:
        # emptyDir: a fresh directory of the node, 2777 and the fsGroup's, bind-mounted.
        volume = volumes / mount["name"]
        volume.mkdir(parents=True)
        os.chown(volume, 0, pod["securityContext"]["fsGroup"])
        volume.chmod(0o2777)
        mounts.append({"destination": mount["mountPath"], "type": "bind",
                       "source": str(volume), "options": ["rbind", "rw", "nosuid", "nodev"]})
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid, "additionalGids": [pod["securityContext"]
                                                                ["fsGroup"]]},
            "args": [*container["command"], *args],
            "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "HOSTNAME=pod", "LANG=C.UTF-8",
                    "KUBERNETES_SERVICE_HOST=10.0.0.1"],
            "cwd": "/",
            "capabilities": {k: [] for k in ("bounding", "effective", "inheritable",
                                              "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": NOFILE, "soft": NOFILE}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "pod",
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network",
                                                 "cgroup")],
            "seccomp": json.loads((out / profile_file).read_text()),
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    }


@pytest.fixture(scope="module")
def pod_runner(lab: Lab, plain: Path, require_runc: None) -> Iterator[Any]:
    base = lab.root / "runc"
    base.mkdir()
    rootfs = base / "rootfs"
    emulate_image(plain, rootfs)
    counter = iter(range(1000))

    class Runner:
        def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
            """The container as the Deployment starts it, with these app args."""
            return self.raw([*pod_of(plain)["containers"][0]["command"], *args])

        def raw(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
            """The container with its command line replaced."""
            bundle = base / f"run-{next(counter)}"
            bundle.mkdir()
            config = runc_config(plain, rootfs, bundle / "volumes", [])
            config["process"]["args"] = argv
            (bundle / "config.json").write_text(json.dumps(config))
            cid = f"sandrun-k8s-test-{os.getpid()}-{bundle.name}"
            try:
                return subprocess.run(["runc", "run", "--bundle", str(bundle), cid],
                                      capture_output=True, text=True, timeout=RUN_TIMEOUT,
                                      stdin=subprocess.DEVNULL, check=False)
            finally:
                subprocess.run(["runc", "delete", "-f", cid], capture_output=True,
                               check=False)

    yield Runner()


def one_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    assert proc.returncode == 0 and len(lines) == 1, (proc.returncode, proc.stdout,
                                                      proc.stderr)
    return json.loads(lines[0])  # type: ignore[no-any-return]


def test_the_image_runs_the_app_in_the_sandbox(pod_runner: Any) -> None:
    facts = one_json(pod_runner("facts"))
    uid = default_uid(APP)
    assert (facts["uid"], facts["gid"], facts["groups"]) == (uid, uid, [uid])
    state = f"/var/lib/sandrun/state/{APP}"
    assert (facts["cwd"], facts["home"], facts["tmpdir"]) == (state, state, "/tmp")
    assert facts["executable"] == "/usr/local/bin/python3.11"
    # start.py set the profile's rlimits (the runtime gave nofile NOFILE).
    assert NOFILE > 1024
    assert facts["limits"] == {"core": [0, 0], "fsize": [4 << 30, 4 << 30],
                               "nofile": [1024, 1024], "nproc": [512, 512]}


def test_the_image_blocks_what_exec_blocks(pod_runner: Any) -> None:
    results = one_json(pod_runner(
        "read_code", "write_state", "write_code", "create_in_code", "write_stdlib",
        "read_shadow", "list_store", "exec_written", "memfd_create", "rwx_anon",
        "setuid0", "capabilities", "unshare_user", "mount", "keyctl", "bpf",
        "io_uring_setup", "socket_netlink", "mmap_exec_written"))

    def blocked(name: str, *errnos: str) -> None:
        result = results[name]
        assert result["blocked"] and result["errno"] in errnos, (name, result)

    assert not results["read_code"]["blocked"], results["read_code"]
    assert not results["write_state"]["blocked"], results["write_state"]
    # The tree: Landlock read-only and DAC (root-owned 0444) refuse a write; creating a
    # file meets the read-only root first.
    blocked("write_code", "EACCES")
    blocked("create_in_code", "EROFS")
    blocked("write_stdlib", "EACCES")
    # Landlock on the image's paths: a world-readable file outside every grant, the
    # store's listing, execve of a file the app wrote.
    blocked("read_shadow", "EACCES")
    blocked("list_store", "EACCES")
    blocked("exec_written", "EACCES")
    # MDWE, then seccomp (sandrun's EPERM, from the inner and the outer filter).
    blocked("rwx_anon", "EACCES")
    for name in ("memfd_create", "unshare_user", "mount", "keyctl", "bpf",
                 "io_uring_setup", "socket_netlink", "setuid0"):
        blocked(name, "EPERM")
    capabilities = json.loads(results["capabilities"]["detail"])
    assert set(capabilities.values()) == {"0x0"}, capabilities
    # The gap the export reports: emptyDir has no noexec, so a written file can be
    # mapped executable (Landlock still stops execve of it, above).
    assert not results["mmap_exec_written"]["blocked"], results["mmap_exec_written"]


def test_the_outer_filter_alone(lab: Lab, plain: Path, pod_runner: Any) -> None:
    """The app started without the applier (the command replaced): the node's seccomp
    profile still denies what sandrun's filter denies; Landlock is the applier's."""
    argv = spec_of(plain)["argv"]
    results = one_json(pod_runner.raw([*argv, "memfd_create", "keyctl", "bpf",
                                       "read_shadow"]))
    for name in ("memfd_create", "keyctl", "bpf"):
        assert results[name]["blocked"] and results[name]["errno"] == "EPERM", results[name]
    assert not results["read_shadow"]["blocked"], results["read_shadow"]


def test_the_applier_refuses_a_pod_without_its_security_context(
        lab: Lab, plain: Path, pod_runner: Any) -> None:
    """Run as root (runAsUser dropped): the applier refuses, the app never starts."""
    rootfs = lab.root / "runc" / "rootfs"
    bundle = lab.root / "runc" / "as-root"
    config = runc_config(plain, rootfs, bundle / "volumes", ["facts"])
    config["process"]["user"] = {"uid": 0, "gid": 0}
    bundle.mkdir(exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(config))
    cid = f"sandrun-k8s-test-{os.getpid()}-root"
    try:
        proc = subprocess.run(["runc", "run", "--bundle", str(bundle), cid],
                              capture_output=True, text=True, timeout=RUN_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
    finally:
        subprocess.run(["runc", "delete", "-f", cid], capture_output=True, check=False)
    assert proc.returncode == 125, proc.stdout + proc.stderr
    assert "did not drop privileges" in proc.stderr
    assert '"uid"' not in proc.stdout
