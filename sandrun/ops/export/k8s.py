"""`sandrun export k8s`: the sandbox of `sandrun exec` as Kubernetes manifests and an image.

`sandrun export k8s [-p PROFILE] [--store DIR] BUNDLE -o DIR [-- ARGS]` decides the launch
as `exec` does (same consent rule, same refusals: nothing is written when it refuses) and
writes DIR, which does not exist yet or is empty:

  sandrun-<app>.deployment.yaml     the Deployment
  sandrun-<app>.networkpolicy.yaml  ingress and egress as the profile's [network] says
  sandrun-<app>.json                the outer seccomp filter, for the nodes
  Containerfile                     builds the image (DIR is its build context)
  image/                            what the image adds to python:3.X-slim

Who enforces what, as in the OCI export:

- Kubernetes and the runtime, from the Pod spec: a numeric non-root uid/gid, no
  capability, allowPrivilegeEscalation false (no_new_privs), a read-only root, no
  service account token, no service links, the Localhost seccomp profile (the outer
  filter: the profile's own rules as runtime JSON, `oci.outer_seccomp`), emptyDir
  volumes with a size limit for the state dir, /tmp and /var/tmp, the [limits] memory
  and cpu as container limits (and requests: the Guaranteed QoS class when both are
  set), and the TCP ports as container ports;
- sandrun's applier (sandrun/ops/apply.py, in the image at /sandrun with the plan as
  spec.marshal), started by /sandrun/start.py once that has set the profile's rlimits
  (a Pod spec has no field for them): it refuses if the runtime's half is missing, then
  MDWE, Landlock (the plan's ruleset, on the image's paths), the plan's own compiled
  seccomp filter and execve of `python -I -B -S <tree>/.sandrun/bootstrap.py`.

The image is python:3.X-slim (X from the bundle's target.python) plus the bundle's tree,
extracted here by sandrun's own strict parser from the verified bytes (a build step
running another zip reader could see other files), at the store's place:
/var/lib/sandrun/apps/<sha256>, root-owned and read-only, compiled to bytecode by the
image's own interpreter. The Landlock rules name the image's paths (/usr/local/bin/
python3.X, its stdlib in /usr/local/lib), not this host's.

What Kubernetes cannot express is said, never silently dropped: the [limits] tasks
(the pod pids limit is the kubelet's, per node) and cpu_weight, and noexec on the
writable volumes (emptyDir has no mount options: Landlock still denies execve there,
but not mmap(PROT_EXEC) of a written file).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click

from sandrun import __version__
from sandrun.bundle.manifest import BOOTSTRAP_NAME
from sandrun.config.profile import Profile
from sandrun.errors import EnforcementError, UsageError, VerificationError
from sandrun.launch.interpreter import Interpreter
from sandrun.launch.launcher import (
    PRIVATE_TMP_DIRS,
    ExecOptions,
    LaunchPlan,
    decide,
    landlock_policy,
    run_spec,
)
from sandrun.launch.safefile import UnsafePath, dir_problem, open_trusted_dir
from sandrun.launch.users import AppUser, default_user_name
from sandrun.ops.export import refuse_caller_placeholders
from sandrun.ops.export.oci import APPLIER_DIR, SPEC, applier_files, outer_seccomp
from sandrun.sandbox import landlock

# The image's layout: the official python:3.X-slim images install CPython in /usr/local.
IMAGE_STORE = "/var/lib/sandrun"
BASE_IMAGE = "docker.io/library/python:{version}-slim"
ELF_LOADER = "/lib64/ld-linux-x86-64.so.2"  # PT_INTERP of every x86-64 glibc program
START = f"{APPLIER_DIR}/start.py"
IMAGE_DIR = "image"  # the part of the build context that the image gets at /
# Where the kubelet looks for Localhost seccomp profiles; localhostProfile is relative to it.
KUBELET_SECCOMP_ROOT = "/var/lib/kubelet/seccomp"
LOCALHOST_DIR = "profiles"
DEFAULT_STATE_SIZE = "1Gi"
DEFAULT_TMP_SIZE = "256Mi"
# The uid an app gets unless --uid: one per app name, so that two apps on one node do
# not share RLIMIT_NPROC (counted per uid, node-wide) or anything else keyed by uid.
UID_BASE, UID_SPAN = 10_000, 50_000
MAX_UID = (1 << 31) - 1
QUANTITY = re.compile(r"^[1-9][0-9]{0,15}(Ki|Mi|Gi|Ti)?\Z")
IMAGE_REF = re.compile(r"^[a-z0-9][A-Za-z0-9._:/@+-]{0,254}\Z")
# What this export puts in the image or mounts: grants elsewhere must be in the image.
EXPORT_PROVIDED = ("/dev", "/proc", "/sys", IMAGE_STORE, *PRIVATE_TMP_DIRS)
# Only these sizes print in binary units; anything else is bytes.
_BINARY_UNITS = (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10))
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"

START_TEMPLATE = '''\
"""The entrypoint `sandrun export k8s` wrote for {app}: a Pod spec has no field for
rlimits, so they are set here (soft = hard), then sandrun's applier (apply.py, beside
this file) applies the sandbox and execs the app. Any failure exits 125."""

import os
import sys

RLIMITS = {rlimits!r}  # name -> value (None: as high as the hard limit allows)
SPEC = {spec!r}


def main():
    import resource

    for name, value in RLIMITS:
        which = getattr(resource, "RLIMIT_" + name.upper())
        if value is None:
            value = resource.getrlimit(which)[1]
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError) as exc:
            print("sandrun: error: cannot set RLIMIT_%s to %d: %s\\n  hint: the node's "
                  "hard limit is lower; raise it in the container runtime, or lower the "
                  "profile's limit" % (name.upper(), value, exc), file=sys.stderr)
            return 125
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import apply

    return apply.main([apply.__file__, SPEC, "--", *sys.argv[1:]])


sys.exit(main())
'''


@dataclass(frozen=True)
class K8sExport:
    """The command line of `sandrun export k8s`."""

    bundle: str
    output: str
    args: tuple[str, ...] = ()
    profile: str | None = None
    store: str | None = None
    image: str | None = None  # the image reference the Deployment runs
    base_image: str | None = None  # FROM (default python:3.X-slim)
    uid: int | None = None
    landlock_abi: int | None = None  # the nodes' Landlock ABI (default: this host's)
    state_size: str = DEFAULT_STATE_SIZE
    tmp_size: str = DEFAULT_TMP_SIZE


@dataclass
class K8sFiles:
    """What the export writes (path relative to DIR -> content, mode) and tells."""

    app: str
    name: str  # sandrun-<app> as a Kubernetes name
    image: str
    files: dict[str, tuple[bytes, int]]
    summary: list[tuple[str, str]]
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- YAML


_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*\Z")
_YAML_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"})


def yaml_scalar(value: object) -> str:
    """One scalar: bools and ints as such, a string plain when YAML cannot read it as
    anything else, otherwise double-quoted (JSON's escapes are YAML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if _PLAIN.match(value) and value.lower() not in _YAML_WORDS:
            return value
        return json.dumps(value, ensure_ascii=True)
    raise TypeError(f"no YAML scalar for {type(value).__name__}")


def _yaml_lines(node: object, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            head = f"{pad}{yaml_scalar(str(key))}:"
            if isinstance(value, Mapping) and value:
                lines += [head, *_yaml_lines(value, indent + 2)]
            elif isinstance(value, list) and value:
                lines += [head, *_yaml_lines(value, indent)]
            else:
                lines.append(f"{head} {_yaml_inline(value)}")
        return lines
    if isinstance(node, list):
        for item in node:
            if isinstance(item, Mapping) and item:
                inner = _yaml_lines(item, indent + 2)
                lines += [f"{pad}- {inner[0][indent + 2:]}", *inner[1:]]
            elif isinstance(item, list) and item:
                raise TypeError("no YAML for a list directly in a list")
            else:
                lines.append(f"{pad}- {_yaml_inline(item)}")
        return lines
    raise TypeError(f"no YAML block for {type(node).__name__}")


def _yaml_inline(value: object) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return yaml_scalar(value)


def to_yaml(document: Mapping[str, Any], comments: Sequence[str] = ()) -> str:
    """A YAML document in block style, keys in the order given: deterministic, and read
    back by any YAML 1.1 or 1.2 parser as `document`."""
    lines = [f"# {line}".rstrip() for line in comments]
    return "\n".join([*lines, *_yaml_lines(document, 0)]) + "\n"


# ---------------------------------------------------------------- Kubernetes values


def k8s_name(app: str) -> str:
    """`sandrun-<app>` as a DNS label (metadata.name, container name, label value): app
    names may hold `_` and `.` and end with either, Kubernetes names may not."""
    return re.sub(r"[^a-z0-9-]", "-", f"sandrun-{app}").rstrip("-")


def memory_quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity: the largest binary unit that divides it exactly."""
    for unit, factor in _BINARY_UNITS:
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def cpu_quantity(percent: int) -> str:
    """The profile's cpu (percent of one CPU) as millicores: 50% -> 500m, 200% -> 2."""
    millis = percent * 10
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def default_uid(app: str) -> int:
    digest = hashlib.sha256(app.encode()).digest()
    return UID_BASE + int.from_bytes(digest[:4], "big") % UID_SPAN


def _check_quantity(option: str, value: str) -> str:
    if not QUANTITY.match(value):
        raise UsageError(f"{option} {value!r}: not a size", f"e.g. {option} 512Mi (bytes, "
                         "or a number with Ki, Mi, Gi or Ti)")
    return value


# ---------------------------------------------------------------- deciding


def _unexpanded_profile(plan: LaunchPlan) -> Profile:
    """The profile decide() accepted, before its placeholders were expanded for this
    host's store (the export expands them for its own paths)."""
    assert plan.requested_profile is not None  # decide() sets it
    return plan.requested_profile


def _image_interpreter(version: str) -> Interpreter:
    """CPython X.Y as python:X.Y-slim installs it (/usr/local/bin/pythonX.Y is the file,
    python3 a link to it); Landlock resolves the loader's root-owned links itself."""
    path = f"/usr/local/bin/python{version}"
    return Interpreter(path, path, version, f"/usr/local/lib/python{version}", ELF_LOADER)


def _beneath(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _landlock_for_abi(policy: landlock.LandlockPolicy, abi: int) -> dict[str, Any] | None:
    """The ruleset spec (as `landlock.ruleset_spec` makes it for this host's kernel) for
    nodes whose kernel offers Landlock ABI `abi`: it handles every right they know, so
    that what is not granted is denied, and nothing they do not know (their kernel would
    refuse the ruleset with EINVAL and the app would not start). Never below the
    profile's floor."""
    if abi < policy.min_abi:
        raise EnforcementError(f"--landlock-abi {abi} is below the profile's [kernel] "
                               f"landlock_min_abi {policy.min_abi}",
                               "target nodes with a newer kernel, or lower landlock_min_abi "
                               "in an operator profile (-p) if you accept weaker isolation")
    if abi <= 0:
        return None  # only with landlock_min_abi 0: the applier then skips Landlock
    level = min(abi, landlock.KNOWN_ABI)
    handled_fs = landlock.fs_rights_for_abi(level)
    handled_net = landlock.net_rights_for_abi(level)
    scopes = ((landlock.SCOPE_ABSTRACT_UNIX_SOCKET if policy.scope_abstract_unix else 0)
              | (landlock.SCOPE_SIGNAL if policy.scope_signal else 0))
    return {
        "abi": abi,
        "handled_fs": handled_fs,
        "handled_net": handled_net,
        "scoped": landlock.scopes_for_abi(level) & scopes,
        "restrict_flags": (landlock.RESTRICT_SELF_LOG_NEW_EXEC_ON
                           if level >= 7 and policy.log_denials else 0),
        "paths": [(rule.path, rule.access.rights & handled_fs, rule.required,
                   rule.access.value) for rule in policy.paths],
        "bind_tcp": sorted(set(policy.bind_tcp)) if handled_net else [],
        "connect_tcp": sorted(set(policy.connect_tcp)) if handled_net else [],
    }


def _rw_volumes(profile: Profile, state: str) -> list[str]:
    """read_write grants that need a volume of their own: not the state dir, /tmp or
    /var/tmp (volumes already) and not a device."""
    return [p for p in profile.read_write
            if not any(_beneath(p, top) for top in (state, *PRIVATE_TMP_DIRS, "/dev"))]


def _needs_from_image(profile: Profile) -> list[str]:
    """Required grants the image must have (the base image's own, or the operator's)."""
    return [p for p in (*profile.read, *profile.execute)
            if not any(_beneath(p, top) for top in EXPORT_PROVIDED)]


def _tree_files(plan: LaunchPlan, tree: str) -> dict[str, tuple[bytes, int]]:
    """The bundle's entries as the store would extract them, at the tree's place in the
    image. Modes are the owner-writable ones (so the exporting user can remove DIR);
    the Containerfile makes them read-only. The bytes are those verify_archive passed."""
    from sandrun.bundle.verify import verify_archive

    archive = plan.archive
    assert archive is not None
    if plan.installed:  # decide() checked the installed tree, not these bytes
        result = verify_archive(archive)
        if not result.ok:
            raise VerificationError(f"bundle {plan.bundle} failed verification",
                                    result.problems, "rebuild it with `sandrun bundle`")
    files = {}
    for entry in archive.entries:
        record = plan.manifest.entries.get(entry.name)
        mode = 0o755 if record is not None and record.mode & 0o111 else 0o644
        files[f"{tree.lstrip('/')}/{entry.name}"] = (archive.read(entry), mode)
    return files


def plan_export(request: K8sExport) -> K8sFiles:
    """Decide everything and render the files; nothing is written. Raises SandrunError
    (exec's refusals, 125, among them)."""
    state_size = _check_quantity("--state-size", request.state_size)
    tmp_size = _check_quantity("--tmp-size", request.tmp_size)
    if request.image is not None and not IMAGE_REF.match(request.image):
        raise UsageError(f"--image {request.image!r}: not an image reference",
                         "e.g. --image registry.example.com/team/app:1.0")
    if request.base_image is not None and not IMAGE_REF.match(request.base_image):
        raise UsageError(f"--base-image {request.base_image!r}: not an image reference",
                         "e.g. --base-image docker.io/library/python:3.11-slim@sha256:...")
    if request.uid is not None and not 1 <= request.uid <= MAX_UID:
        raise UsageError(f"--uid {request.uid}: not a non-root uid",
                         f"give a uid from 1 to {MAX_UID}")
    plan = decide(ExecOptions(bundle=os.path.abspath(request.bundle), profile=request.profile,
                              store=request.store, dry_run=True))
    plan.raise_for_refusals()

    manifest = plan.manifest
    app = manifest.app_name
    name = k8s_name(app)
    version = manifest.target.python
    sha = plan.bundle_sha256
    uid = request.uid if request.uid is not None else default_uid(app)
    gid = uid
    user = AppUser(default_user_name(app), uid, gid, True)
    tree = f"{IMAGE_STORE}/apps/{sha}"
    state = f"{IMAGE_STORE}/state/{app}"
    tmp = PRIVATE_TMP_DIRS[0]

    unexpanded = _unexpanded_profile(plan)
    refuse_caller_placeholders(unexpanded, "a container")
    profile = unexpanded.expand({"app": app, "state": state, "tmp": tmp, "store": tree,
                                 "home": state})
    interp = _image_interpreter(version)
    base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": state, "TMPDIR": tmp,
                "LANG": "C.UTF-8"}
    image_plan = replace(
        plan, tree=Path(tree), profile=profile, user=user, privileged=True,
        interpreter=interp, state_dir=Path(state),
        # the host plan's interpreter flags (-S for a bootstrap that sets up its own site)
        argv=[interp.path, *plan.argv[1:-1], f"{tree}/{BOOTSTRAP_NAME}"], args=request.args,
        base_env=base_env, env={**base_env, **profile.env_set}, cwd=state,
        landlock_policy=landlock_policy(profile, interp, Path(tree), Path(state)))
    spec = run_spec(image_plan)  # its Landlock ruleset is for this host's kernel:
    abi = request.landlock_abi if request.landlock_abi is not None else \
        landlock.abi_version()
    if spec.landlock is None or abi != spec.landlock["abi"]:
        spec.landlock = _landlock_for_abi(image_plan.landlock_policy, abi)
    seccomp_json = outer_seccomp(plan.seccomp_policy)

    image = request.image or f"{name}:{sha[:12]}"
    base = request.base_image or BASE_IMAGE.format(version=version)
    seccomp_file = f"sandrun-{app}.json"
    rw_volumes = _rw_volumes(profile, state)
    rlimits = sorted(image_plan.rlimits.items())

    files: dict[str, tuple[bytes, int]] = {}
    for path, content in applier_files(spec, app).items():
        files[f"{IMAGE_DIR}{path}"] = (content, 0o644)
    files[f"{IMAGE_DIR}{START}"] = (START_TEMPLATE.format(
        app=app, rlimits=rlimits, spec=SPEC).encode(), 0o644)
    for path, (content, mode) in _tree_files(plan, tree).items():
        files[f"{IMAGE_DIR}/{path}"] = (content, mode)

    header = [f"Generated by `sandrun export k8s` (sandrun {__version__}): re-export rather "
              "than edit.",
              f"Bundle {os.path.basename(plan.bundle)}: app {app} {manifest.app_version}, "
              f"sha256 {sha},",
              f"  {plan.signature.describe()}.",
              f"Profile: {plan.consent}."]
    command = [interp.path, "-I", "-B", "-S", START]
    deployment = _deployment(plan, profile, name=name, image=image, uid=uid, gid=gid,
                             command=command, args=list(request.args),
                             seccomp_file=seccomp_file, state=state, tmp_size=tmp_size,
                             state_size=state_size, rw_volumes=rw_volumes)
    files[f"{name}.deployment.yaml"] = (to_yaml(deployment, [
        *header, f"The nodes need {KUBELET_SECCOMP_ROOT}/{LOCALHOST_DIR}/{seccomp_file} "
        "(beside this file),", f"Landlock ABI {abi} or newer"
        + (" and Linux 6.3 or newer (PR_SET_MDWE)." if spec.mdwe else "."),
    ]).encode(), 0o644)
    files[f"{name}.networkpolicy.yaml"] = (to_yaml(_network_policy(profile, name), [
        *header, "Needs a network plugin that enforces NetworkPolicy; Landlock and seccomp "
        "restrict the ports in any case."]).encode(), 0o644)
    files[seccomp_file] = (json.dumps(seccomp_json, indent=2).encode() + b"\n", 0o644)
    files["Containerfile"] = (_containerfile(
        header, base=base, image=image, app=app, tree=tree, state=state, uid=uid, gid=gid,
        user=user.name, version=version, command=command,
        args=list(request.args)).encode(), 0o644)

    summary = [
        ("app", f"{app} {manifest.app_version} ({plan.signature.describe()})"),
        ("image", f"{image}, FROM {base}"),
        ("runs as", f"uid {uid} gid {gid} ({user.name} in the image), no capabilities, "
                    "read-only root"),
        ("profile", plan.consent),
        ("seccomp", f"{seccomp_file} -> {KUBELET_SECCOMP_ROOT}/{LOCALHOST_DIR}/"
                    f"{seccomp_file} on every node"),
        ("nodes", f"Landlock ABI >= {abi}" + (", Linux >= 6.3 (MDWE)" if spec.mdwe else "")
                  + ", x86_64"),
    ]
    limits = plan.profile.limits
    not_expressible = [n for n in ("tasks", "cpu_weight") if limits.get(n) is not None]
    warnings = []
    if not_expressible:
        warnings.append(
            "not enforced by Kubernetes: [limits] " + ", ".join(not_expressible)
            + " (a pod's pids limit is the kubelet's podPidsLimit, per node; there is no "
            "CPU weight field). tasks is still the app user's RLIMIT_NPROC.")
    warnings.append("the writable volumes are not noexec (emptyDir has no mount options): "
                    "Landlock still denies execve of files written there")
    needed = _needs_from_image(profile)
    if needed:
        warnings.append(f"the profile requires {', '.join(needed)}: the image must have "
                        f"them ({base} or an image derived from it, or a volume), or the "
                        "app stops with exit 125")
    if rw_volumes:
        warnings.append("read_write grants get an emptyDir each (lost with the pod; use a "
                        "persistent volume for data): " + ", ".join(rw_volumes))
    return K8sFiles(app=app, name=name, image=image, files=files, summary=summary,
                    warnings=warnings)


def _deployment(plan: LaunchPlan, profile: Profile, *, name: str, image: str, uid: int,
                gid: int, command: list[str], args: list[str], seccomp_file: str,
                state: str, state_size: str, tmp_size: str, rw_volumes: list[str]
                ) -> dict[str, Any]:
    """The Deployment: a Pod spec that meets the "restricted" Pod Security Standard."""
    app = plan.manifest.app_name
    labels = {LABEL_NAME: name, LABEL_INSTANCE: name,
              "app.kubernetes.io/managed-by": "sandrun"}
    selector = {LABEL_NAME: name, LABEL_INSTANCE: name}
    seccomp_profile = {"type": "Localhost",
                       "localhostProfile": f"{LOCALHOST_DIR}/{seccomp_file}"}
    volumes: list[dict[str, Any]] = [
        {"name": "state", "emptyDir": {"sizeLimit": state_size}},
        {"name": "tmp", "emptyDir": {"sizeLimit": tmp_size}},
        {"name": "var-tmp", "emptyDir": {"sizeLimit": tmp_size}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "state", "mountPath": state},
        {"name": "tmp", "mountPath": PRIVATE_TMP_DIRS[0]},
        {"name": "var-tmp", "mountPath": PRIVATE_TMP_DIRS[1]},
    ]
    for i, path in enumerate(rw_volumes, 1):
        volumes.append({"name": f"rw-{i}", "emptyDir": {"sizeLimit": state_size}})
        mounts.append({"name": f"rw-{i}", "mountPath": path})
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "args": args,
    }
    if profile.bind_tcp:
        container["ports"] = [{"name": f"tcp-{port}", "containerPort": port,
                               "protocol": "TCP"} for port in sorted(set(profile.bind_tcp))]
    resources = _resources(profile.limits)
    if resources:
        container["resources"] = resources
    container |= {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": gid,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": seccomp_profile,
        },
        "volumeMounts": mounts,
        # A refusal (exit 125) explains itself on stderr: show it in `kubectl describe`.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "fsGroup": gid,  # the emptyDir volumes are the app group's
        "seccompProfile": seccomp_profile,
    }
    low_ports = [p for p in profile.bind_tcp if p < 1024]
    if low_ports:  # no NET_BIND_SERVICE: open the ports below 1024 in the pod's netns only
        pod_security["sysctls"] = [{"name": "net.ipv4.ip_unprivileged_port_start",
                                    "value": str(min(low_ports))}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"sandrun/app": app, "sandrun/bundle-sha256": plan.bundle_sha256,
                            "sandrun/consent": plan.consent},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "hostNetwork": False,
                    "hostPID": False,
                    "hostIPC": False,
                    "securityContext": pod_security,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def _resources(limits: Mapping[str, int | None]) -> dict[str, Any]:
    """[limits] memory and cpu as container limits, requested as much (Guaranteed QoS
    when both are set); the other keys have no container field."""
    found: dict[str, str] = {}
    if limits.get("cpu") is not None:
        found["cpu"] = cpu_quantity(int(limits["cpu"] or 0))
    if limits.get("memory") is not None:
        found["memory"] = memory_quantity(int(limits["memory"] or 0))
    return {"limits": found, "requests": dict(found)} if found else {}


def _network_policy(profile: Profile, name: str) -> dict[str, Any]:
    """Ingress to the bind_tcp ports, egress to the connect_tcp ports and DNS; nothing
    else (no rule of a policy type denies all of it)."""
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": {LABEL_NAME: name, LABEL_INSTANCE: name}},
        "policyTypes": ["Ingress", "Egress"],
    }
    if profile.bind_tcp:
        spec["ingress"] = [{"ports": [{"protocol": "TCP", "port": p}
                                      for p in sorted(set(profile.bind_tcp))]}]
    egress = [{"protocol": "TCP", "port": p} for p in sorted(set(profile.connect_tcp))]
    if profile.dns:
        egress += [{"protocol": "UDP", "port": 53}]
        if 53 not in profile.connect_tcp:
            egress += [{"protocol": "TCP", "port": 53}]
    if egress:
        spec["egress"] = [{"ports": egress}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "labels": {LABEL_NAME: name, LABEL_INSTANCE: name,
                                                  "app.kubernetes.io/managed-by": "sandrun"}},
            "spec": spec}


def _containerfile(header: list[str], *, base: str, image: str, app: str, tree: str,
                   state: str, uid: int, gid: int, user: str, version: str,
                   command: list[str], args: list[str]) -> str:
    python = f"/usr/local/bin/python{version}"
    compile_code = ("import compileall, py_compile, sys; compileall.compile_dir(sys.argv[1], "
                    "quiet=2, workers=0, "
                    "invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)")
    lines = [f"# {line}" for line in header] + [
        "#",
        "# The image: the bundle's tree (extracted and verified by sandrun, not by this",
        f"# build) at {tree}, sandrun's applier at {APPLIER_DIR}.",
        "# Build it here, for x86_64 nodes (the seccomp filter is x86_64's):",
        f"#   podman build --platform linux/amd64 -t {image} .",
        f"FROM --platform=linux/amd64 {base}",
        f"COPY --chown=0:0 {IMAGE_DIR}/ /",
        "# Bytecode by the image's own interpreter (hash-checked, so build dates do not",
        "# matter); then everything read-only, the tree's top dir the app group's, as in",
        "# sandrun's store; the app user for tools that look it up.",
        "RUN set -eu; \\",
        f"    {python} -I -c '{compile_code}' \\",
        f"        {tree}/site-packages; \\",
        f"    chmod -R a-w {APPLIER_DIR} {IMAGE_STORE}/apps; \\",
        f"    chown 0:{gid} {tree}; chmod 0750 {tree}; \\",
        f"    mkdir -p {state}; chown {uid}:{gid} {state}; chmod 0700 {state}; \\",
        f"    echo '{user}:x:{uid}:{gid}:sandrun app {app}:{state}:/usr/sbin/nologin' "
        ">> /etc/passwd; \\",
        f"    echo '{user}:x:{gid}:' >> /etc/group",
        f"USER {uid}:{gid}",
        "# Run it as the Deployment does: no capability, read-only, the seccomp profile.",
        f"ENTRYPOINT {json.dumps(command)}",
        f"CMD {json.dumps(args)}",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- acting


def _check_output(output: str) -> Path:
    """DIR: absent, or an empty directory; every directory above it one that only root or
    the exporting user can change (the build and kubectl read what is written there)."""
    target = Path(os.path.abspath(output))
    parent = target.parent
    try:
        os.close(open_trusted_dir(str(parent), os.geteuid()))
    except UnsafePath as exc:
        raise EnforcementError(f"-o {output}: {exc.path} {exc.why}",
                               "export into a directory only you (or root) can change"
                               ) from None
    except FileNotFoundError:
        raise UsageError(f"-o {output}: {parent} does not exist",
                         f"create it: mkdir -p {parent}") from None
    if os.path.lexists(target):
        st = os.lstat(target)
        problem = dir_problem(st, os.geteuid())
        if problem:
            raise EnforcementError(f"-o {output}: {target} {problem}",
                                   "remove it, or choose another path")
        if any(os.scandir(target)):
            raise UsageError(f"-o {output}: the directory is not empty",
                             "remove it, or choose another path")
    return target


def write_export(files: K8sFiles, output: str) -> Path:
    """Write the files into a fresh private directory beside DIR, then rename it into
    place: a failure leaves nothing behind, and nobody sees half an export."""
    target = _check_output(output)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for rel, (content, mode) in sorted(files.files.items()):
            path = work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(content)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
        for dirpath, _, _ in os.walk(work):
            os.chmod(dirpath, 0o755)
        os.rename(work, target)  # replaces an empty directory given as -o
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


def export_k8s(request: K8sExport) -> tuple[K8sFiles, Path]:
    """Decide, then write: a refusal writes nothing."""
    files = plan_export(request)
    return files, write_export(files, request.output)


@click.command(name="k8s", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle_path", metavar="BUNDLE")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[-- ARGS]...")
@click.option("-o", "--output", required=True, metavar="DIR",
              help="Directory to write (absent or empty): the manifests, the seccomp "
              "profile and the image's build context.")
@click.option("-p", "--profile", metavar="NAME|FILE",
              help="Operator profile (replaces the embedded one, needs no approval).")
@click.option("--store", metavar="DIR", envvar="SANDRUN_STORE",
              help="Store whose approvals the embedded profile needs (default "
              "/var/lib/sandrun).")
@click.option("--image", metavar="REF",
              help="Image the Deployment runs (default sandrun-<app>:<sha256 prefix>); "
              "build and push it under this name.")
@click.option("--base-image", metavar="REF",
              help="FROM of the Containerfile (default docker.io/library/python:3.X-slim; "
              "pin a digest). It must have CPython X.Y in /usr/local.")
@click.option("--uid", type=int, metavar="UID",
              help="uid and gid of the app (default: one derived from the app name, "
              f"{UID_BASE}-{UID_BASE + UID_SPAN - 1}).")
@click.option("--landlock-abi", type=click.IntRange(min=1), metavar="N",
              help="Landlock ABI of the nodes' kernels (default: this host's; not below "
              "the profile's landlock_min_abi).")
@click.option("--state-size", default=DEFAULT_STATE_SIZE, show_default=True, metavar="SIZE",
              help="sizeLimit of the state dir's volume (and of each read_write volume).")
@click.option("--tmp-size", default=DEFAULT_TMP_SIZE, show_default=True, metavar="SIZE",
              help="sizeLimit of /tmp and /var/tmp.")
def command(bundle_path: str, args: tuple[str, ...], output: str, profile: str | None,
            store: str | None, image: str | None, base_image: str | None, uid: int | None,
            landlock_abi: int | None, state_size: str, tmp_size: str) -> None:
    """Write BUNDLE's sandbox as Kubernetes manifests in DIR: a Deployment under the
    "restricted" Pod Security Standard, its NetworkPolicy, the seccomp profile for the
    nodes and a Containerfile for the image. ARGS after `--` go to the app."""
    files, target = export_k8s(K8sExport(
        bundle=bundle_path, output=output, args=tuple(args), profile=profile, store=store,
        image=image, base_image=base_image, uid=uid, landlock_abi=landlock_abi,
        state_size=state_size, tmp_size=tmp_size))
    for warning in files.warnings:
        click.echo(f"sandrun: warning: {warning}", err=True)
    click.echo(f"wrote {target}")
    width = max(len(k) for k, _ in files.summary)
    for key, value in files.summary:
        click.echo(f"  {key:<{width}}  {value}")
    seccomp_file = f"sandrun-{files.app}.json"
    for step in (f"podman build --platform linux/amd64 -t {files.image} {target} "
                 "(and push it)",
                 f"install -D -m 0644 {target / seccomp_file} "
                 f"{KUBELET_SECCOMP_ROOT}/{LOCALHOST_DIR}/{seccomp_file} (every node)",
                 f"kubectl apply -f {target / (files.name + '.deployment.yaml')} -f "
                 f"{target / (files.name + '.networkpolicy.yaml')}"):
        click.echo(f"  {'next':<{width}}  {step}")


__all__ = ["K8sExport", "K8sFiles", "command", "export_k8s", "plan_export", "to_yaml",
           "write_export"]
