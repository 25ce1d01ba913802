"""The bundle's SBOM: CycloneDX 1.6 JSON at `.sandrun/sbom.cdx.json`.

It names the app (metadata.component), one component per bundled wheel (name,
version, purl, the wheel's sha256, its declared license) and the dependency graph
from Requires-Dist, restricted to what is bundled. Where the wheels came from is
recorded as in the manifest: metadata properties `sandrun:resolver`, `sandrun:index`,
`sandrun:find-links`, `sandrun:pip-config` (and `sandrun:lock-sha256`), and per
component `sandrun:origin` (plus a `distribution` external reference for an http(s)
origin). A wheel whose PEP 740 provenance was verified carries
`sandrun:provenance:publisher`, `sandrun:provenance:pinned` and
`sandrun:provenance:entry`, and an `attestation` external reference to the publisher's
workflow. SBOMs that wheels carry under
`.dist-info/sboms/` (PEP 770, e.g. auditwheel's list of grafted shared libraries)
are merged as components nested in the wheel that carries them.

The bytes are deterministic so that bundles stay byte-reproducible: every bom-ref
is derived from content (the library would otherwise invent random ones), the
timestamp is SOURCE_DATE_EPOCH, the serialNumber is a uuid5 of the rest, and the
JSON is re-serialised with sorted keys.

Built with cyclonedx-python-lib (build time only; `sandrun exec` never imports it).
"""

from __future__ import annotations

import datetime
import json
import uuid
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sandrun import __version__
from sandrun.bundle.manifest import SBOM_NAME, Dependency, Resolution, Target
from sandrun.errors import BundleError

if TYPE_CHECKING:
    from cyclonedx.model.component import Component
    from cyclonedx.model.license import License

    from sandrun.build.wheels import Wheel
    from sandrun.bundle.archive import StrictArchive

SPEC_VERSION = "1.6"
# Fixed namespace for the content-derived serialNumber (uuid5 of the canonical SBOM).
SERIAL_NAMESPACE = uuid.UUID("0f3c2a4e-6d1b-5e8a-9c7f-2b4d6e8a1c3f")
# A License field longer than this is a full license text, not a name or SPDX id.
MAX_LICENSE_FIELD = 100

# Trove classifiers that name exactly one SPDX license. Others ("BSD License",
# "Apache Software License") do not say which version, so they stay names.
CLASSIFIER_SPDX = {
    "MIT License": "MIT",
    "MIT No Attribution License (MIT-0)": "MIT-0",
    "ISC License (ISCL)": "ISC",
    "Python Software Foundation License": "PSF-2.0",
    "Mozilla Public License 1.1 (MPL 1.1)": "MPL-1.1",
    "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "GNU General Public License v2 (GPLv2)": "GPL-2.0-only",
    "GNU General Public License v2 or later (GPLv2+)": "GPL-2.0-or-later",
    "GNU General Public License v3 (GPLv3)": "GPL-3.0-only",
    "GNU General Public License v3 or later (GPLv3+)": "GPL-3.0-or-later",
    "GNU Lesser General Public License v2 (LGPLv2)": "LGPL-2.0-only",
    "GNU Lesser General Public License v2 or later (LGPLv2+)": "LGPL-2.0-or-later",
    "GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
    "GNU Lesser General Public License v3 or later (LGPLv3+)": "LGPL-3.0-or-later",
    "GNU Affero General Public License v3": "AGPL-3.0-only",
    "GNU Affero General Public License v3 or later (AGPLv3+)": "AGPL-3.0-or-later",
    "The Unlicense (Unlicense)": "Unlicense",
    "Boost Software License 1.0 (BSL-1.0)": "BSL-1.0",
    "Universal Permissive License (UPL)": "UPL-1.0",
    "Eclipse Public License 2.0 (EPL-2.0)": "EPL-2.0",
    "CC0 1.0 Universal (CC0 1.0) Public Domain Dedication": "CC0-1.0",
    "Zero-Clause BSD (0BSD)": "0BSD",
}

Warn = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def pypi_purl(name: str, version: str) -> str:
    """`pkg:pypi/<PEP 503 name>@<version>`, the purl of a wheel in the bundle."""
    from packageurl import PackageURL
    from packaging.utils import canonicalize_name

    return str(PackageURL(type="pypi", name=canonicalize_name(name), version=version))


def build_sbom(*, app_name: str, app_version: str, entry_point: str,
               console_script: str | None, provider: str | None, wheels: Sequence[Wheel],
               target: Target, source_date_epoch: int, warn: Warn = _quiet,
               resolution: Resolution | None = None,
               dependencies: Sequence[Dependency] = ()) -> bytes:
    """The SBOM of a bundle as deterministic CycloneDX 1.6 JSON bytes.

    `provider` is the canonical name of the wheel that provides the entry point (the
    app's own project), or None. `wheels` must already be checked against their RECORD
    (the builder installs them first). A wheel-carried SBOM that cannot be merged is
    reported through `warn` and left out: it is the wheel's own claim and it stays in
    the bundle under its .dist-info for anyone who wants to read it.
    """
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.tool import ToolRepository
    from packageurl import PackageURL

    from sandrun.build.lockfile import marker_environment

    environment = marker_environment(target)
    metas = [_read_wheel_meta(w) for w in wheels]
    recorded = {d.wheel: d for d in dependencies}
    used_refs: set[str] = set()
    components: dict[str, Component] = {}  # canonical name -> component
    for meta in metas:
        ref = pypi_purl(meta.wheel.name, meta.wheel.version)
        used_refs.add(ref)
        component = Component(
            type=ComponentType.LIBRARY, name=meta.display_name, version=meta.wheel.version,
            bom_ref=ref, purl=PackageURL.from_string(ref),
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=meta.wheel.sha256)],
            licenses=meta.licenses, description=meta.summary,
            properties=[Property(name="sandrun:wheel", value=meta.wheel.filename),
                        *_origin_properties(recorded.get(meta.wheel.filename))],
            external_references=_origin_references(recorded.get(meta.wheel.filename)))
        components[meta.wheel.name] = component

    app = Component(
        type=ComponentType.APPLICATION, name=app_name, version=app_version,
        bom_ref=f"sandrun-app:{app_name}@{app_version}",
        purl=PackageURL(type="generic", name=app_name, version=app_version),
        properties=[Property(name="sandrun:entry_point", value=entry_point),
                    Property(name="sandrun:target:python", value=target.python),
                    Property(name="sandrun:target:abi", value=target.abi),
                    Property(name="sandrun:target:platform", value=_main_platform(target))]
        + ([Property(name="sandrun:console_script", value=console_script)]
           if console_script else []))
    used_refs.add(str(app.bom_ref.value))
    sandrun_tool = Component(type=ComponentType.APPLICATION, name="sandrun",
                             version=__version__, bom_ref=f"sandrun-tool@{__version__}")
    timestamp = datetime.datetime.fromtimestamp(source_date_epoch, tz=datetime.UTC)
    bom = Bom(components=components.values(),
              metadata=BomMetaData(component=app, timestamp=timestamp,
                                   tools=ToolRepository(components=[sandrun_tool]),
                                   properties=_resolution_properties(resolution)),
              serial_number=uuid.UUID(int=0))  # replaced by a content hash below

    depended_on: set[str] = set()
    for meta in metas:
        targets = sorted(_required_names(meta, environment) & components.keys()
                         - {meta.wheel.name})
        depended_on.update(targets)
        bom.register_dependency(components[meta.wheel.name], [components[t] for t in targets])
    # The app depends on the project that provides it and on every wheel no other wheel
    # requires (the roots: what was asked for), so every component is reachable.
    roots = {n for n in components if n not in depended_on} or set(components)
    if provider in components:
        roots.add(provider)
    bom.register_dependency(app, [components[n] for n in sorted(roots)])

    top_level = {_purl_key(c.purl): c for c in components.values()}
    for meta in metas:
        for member, data in meta.sboms:
            _merge_wheel_sbom(bom, components[meta.wheel.name], member, data, meta.wheel,
                              top_level, used_refs, warn)
    return _serialise(bom)


def _resolution_properties(resolution: Resolution | None) -> list[Any]:
    from cyclonedx.model import Property

    if resolution is None:
        return []
    props = [Property(name="sandrun:resolver", value=resolution.resolver),
             Property(name="sandrun:pip-config", value=str(resolution.pip_config).lower())]
    props += [Property(name="sandrun:index", value=i) for i in resolution.indexes]
    props += [Property(name="sandrun:find-links", value=f) for f in resolution.find_links]
    if resolution.lock_sha256:
        props.append(Property(name="sandrun:lock-sha256", value=resolution.lock_sha256))
    return props


def _origin_properties(dep: Dependency | None) -> list[Any]:
    from cyclonedx.model import Property

    props = []
    if dep is not None and dep.origin is not None:
        props.append(Property(name="sandrun:origin", value=dep.origin))
    if dep is not None and dep.provenance is not None:
        props += [Property(name="sandrun:provenance:publisher",
                           value=dep.provenance.describe_publisher()),
                  Property(name="sandrun:provenance:pinned",
                           value=str(dep.provenance.pinned).lower()),
                  Property(name="sandrun:provenance:entry", value=dep.provenance.entry)]
    return props


def _origin_references(dep: Dependency | None) -> list[Any]:
    from cyclonedx.model import ExternalReference, ExternalReferenceType, XsUri

    refs = []
    if dep is not None and dep.origin is not None and dep.origin.startswith(
            ("https://", "http://")):
        refs.append(ExternalReference(type=ExternalReferenceType.DISTRIBUTION,
                                      url=XsUri(dep.origin), comment="where the wheel was "
                                      "taken from"))
    prov = dep.provenance if dep is not None else None
    if prov is not None and prov.publisher.get("repository"):
        host = {"GitHub": "https://github.com", "GitLab": "https://gitlab.com"}.get(
            prov.publisher.get("kind", ""))
        workflow = prov.publisher.get("workflow") or prov.publisher.get("workflow_filepath")
        if host and workflow:
            path = (f".github/workflows/{workflow}" if prov.publisher["kind"] == "GitHub"
                    else workflow)
            refs.append(ExternalReference(
                type=ExternalReferenceType.ATTESTATION,
                url=XsUri(f"{host}/{prov.publisher['repository']}/-/blob/HEAD/{path}"
                          if prov.publisher["kind"] == "GitLab" else
                          f"{host}/{prov.publisher['repository']}/blob/HEAD/{path}"),
                comment=f"PEP 740 provenance verified at build time against the "
                        f"{'pinned ' if prov.pinned else ''}publisher "
                        f"{prov.describe_publisher()}; embedded as {prov.entry}"))
    return refs


def _main_platform(target: Target) -> str:
    # The most specific tag a human would name (what `sandrun bundle` prints).
    return next((p for p in target.platforms if p.startswith("manylinux")), target.platforms[0])


def read_sbom(archive: StrictArchive) -> bytes | None:
    """The embedded SBOM's bytes exactly as signed, or None for bundles without one.

    The caller verifies the archive first (verify_bundle): this only reads the entry
    and checks that it is a CycloneDX JSON document.
    """
    entry = next((e for e in archive.entries if e.name == SBOM_NAME), None)
    if entry is None:
        return None
    data = archive.read(entry)
    parse_sbom(data)
    return data


def load_sbom(archive: StrictArchive) -> dict[str, Any] | None:
    """The embedded SBOM as a JSON object, or None for bundles without one."""
    data = read_sbom(archive)
    return None if data is None else parse_sbom(data)


def parse_sbom(data: bytes) -> dict[str, Any]:
    """Parse SBOM bytes; BundleError naming the entry when they are not CycloneDX JSON."""
    hint = "rebuild the bundle with `sandrun bundle`"
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{SBOM_NAME}: not valid JSON ({exc})", hint) from None
    if not isinstance(obj, dict) or obj.get("bomFormat") != "CycloneDX":
        raise BundleError(f"{SBOM_NAME}: not a CycloneDX document (no bomFormat "
                          "\"CycloneDX\")", hint)
    return obj


def sbom_summary(sbom: dict[str, Any]) -> dict[str, Any]:
    """A few counts for `sandrun inspect`: spec version, components, nested components."""
    def count(items: Iterable[Any]) -> int:
        return sum(1 + count(c.get("components", [])) for c in items if isinstance(c, dict))

    top = [c for c in sbom.get("components", []) if isinstance(c, dict)]
    nested = count(top) - len(top)
    return {"spec_version": sbom.get("specVersion"), "serial_number": sbom.get("serialNumber"),
            "components": len(top), "nested_components": nested,
            "dependencies": len(sbom.get("dependencies", []))}


# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _WheelMeta:
    wheel: Wheel
    display_name: str
    summary: str | None
    licenses: list[License]
    requires_dist: tuple[str, ...]
    extras: tuple[str, ...]
    sboms: tuple[tuple[str, bytes], ...]  # (member name, content), sorted by name


def _read_wheel_meta(wheel: Wheel) -> _WheelMeta:
    from packaging.metadata import parse_email

    with zipfile.ZipFile(wheel.path) as zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
        metadata_names = [n for n in names if n.count("/") == 1
                          and n.endswith(".dist-info/METADATA")]
        if len(metadata_names) != 1:
            raise BundleError(f"{wheel.filename}: expected one .dist-info/METADATA, found "
                              f"{len(metadata_names)}", "this wheel is malformed; do not use it")
        dist_info = metadata_names[0].split("/", 1)[0]
        raw, _unparsed = parse_email(zf.read(metadata_names[0]))
        sbom_prefix = f"{dist_info}/sboms/"
        sboms = tuple((n, zf.read(n)) for n in sorted(names) if n.startswith(sbom_prefix))
    return _WheelMeta(
        wheel=wheel, display_name=raw.get("name") or wheel.name, summary=raw.get("summary"),
        licenses=_licenses(raw.get("license_expression"), raw.get("license"),
                           raw.get("classifiers", [])),
        requires_dist=tuple(raw.get("requires_dist", [])),
        extras=tuple(raw.get("provides_extra", [])), sboms=sboms)


def _licenses(expression: str | None, license_field: str | None,
              classifiers: Sequence[str]) -> list[License]:
    """PEP 639 License-Expression, else a short License field, else license classifiers."""
    from cyclonedx.contrib.license.exceptions import InvalidSpdxLicenseException
    from cyclonedx.contrib.license.factories import LicenseFactory
    from cyclonedx.model.license import (
        DisjunctiveLicense,
        LicenseAcknowledgement,
        LicenseExpression,
    )
    from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression

    declared = LicenseAcknowledgement.DECLARED
    if expression and expression.strip():
        try:
            canonical = canonicalize_license_expression(expression)
        except InvalidLicenseExpression:
            # Not valid SPDX: keep what the project wrote, as a name.
            return [DisjunctiveLicense(name=expression.strip(), acknowledgement=declared)]
        return [LicenseExpression(canonical, acknowledgement=declared)]
    text = (license_field or "").strip()
    if text and "\n" not in text and len(text) <= MAX_LICENSE_FIELD and text != "UNKNOWN":
        if text in CLASSIFIER_SPDX:  # "MIT License" and friends name one SPDX license
            return [DisjunctiveLicense(id=CLASSIFIER_SPDX[text], acknowledgement=declared)]
        factory = LicenseFactory()
        try:
            canonical = canonicalize_license_expression(text)  # "mit or isc" -> "MIT OR ISC"
        except InvalidLicenseExpression:
            # Not SPDX ("Apache 2.0", "BSD"): kept as a license name.
            return [factory.make_from_string(text, license_acknowledgement=declared)]
        try:
            return [factory.make_with_id(canonical, acknowledgement=declared)]
        except InvalidSpdxLicenseException:
            return [LicenseExpression(canonical, acknowledgement=declared)]
    found: list[License] = []
    seen: set[str] = set()
    for classifier in classifiers:
        parts = [p.strip() for p in classifier.split("::")]
        if parts[0] != "License" or len(parts) < 2 or parts[-1] == "OSI Approved":
            continue
        name = parts[-1]
        spdx = CLASSIFIER_SPDX.get(name)
        key = spdx or name
        if key in seen:
            continue
        seen.add(key)
        found.append(DisjunctiveLicense(id=spdx, acknowledgement=declared) if spdx
                     else DisjunctiveLicense(name=name, acknowledgement=declared))
    return found


def _required_names(meta: _WheelMeta, environment: dict[str, str]) -> set[str]:
    """Canonical names this wheel requires on the target.

    A requirement behind an extra counts when the marker holds for any extra the wheel
    declares: which extras were asked for is not recorded, and the edge is only drawn
    when the required project is bundled at all.
    """
    from packaging.markers import UndefinedEnvironmentName
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    names: set[str] = set()
    for text in meta.requires_dist:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue  # an unparsable Requires-Dist draws no edge; the wheel still installs
        if req.marker is not None:
            extras = ["", *meta.extras]
            try:
                if not any(req.marker.evaluate({**environment, "extra": e}) for e in extras):
                    continue
            except UndefinedEnvironmentName:
                continue
        names.add(canonicalize_name(req.name))
    return names


def _purl_key(purl: Any) -> str | None:
    """A purl without qualifiers and subpath, pypi names normalised, for de-duplication."""
    from packageurl import PackageURL
    from packaging.utils import canonicalize_name

    if purl is None:
        return None
    try:
        p = purl if isinstance(purl, PackageURL) else PackageURL.from_string(str(purl))
    except ValueError:
        return str(purl)
    name = canonicalize_name(p.name) if p.type == "pypi" else p.name
    return str(PackageURL(type=p.type, namespace=p.namespace, name=name, version=p.version))


def _merge_wheel_sbom(bom: Any, owner: Component, member: str, data: bytes, wheel: Wheel,
                      top_level: dict[str | None, Component], used_refs: set[str],
                      warn: Warn) -> None:
    """Nest the components of one wheel-carried SBOM under the wheel's component.

    Left out, without duplicates: the wheel describing itself (its own purl or the
    SBOM's metadata.component) and components that are bundled wheels already. Every
    merged bom-ref is prefixed with the owner's, so two wheels that vendor the same
    library keep two distinct (and truthful) copies.
    """
    from cyclonedx.model.component import Component

    where = f"{wheel.filename}: {member}"
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        warn(f"{where} is not JSON; only CycloneDX JSON SBOMs are merged into the bundle's "
             "SBOM (the file itself stays in the bundle)")
        return
    if not isinstance(doc, dict) or doc.get("bomFormat") != "CycloneDX":
        warn(f"{where} is not a CycloneDX SBOM (e.g. SPDX); it is not merged into the "
             "bundle's SBOM (the file itself stays in the bundle)")
        return
    raw_components = doc.get("components", [])
    metadata: dict[str, Any] = doc["metadata"] if isinstance(doc.get("metadata"), dict) else {}
    self_refs: set[str] = set()
    if isinstance(metadata.get("component"), dict) and metadata["component"].get("bom-ref"):
        self_refs.add(str(metadata["component"]["bom-ref"]))
    try:
        if not isinstance(raw_components, list):
            raise TypeError("'components' is not a list")
        parsed = [Component.from_json(c) for c in raw_components]  # type: ignore[attr-defined]
    except Exception as exc:
        warn(f"{where}: cannot read its components ({type(exc).__name__}: {exc}); it is not "
             "merged into the bundle's SBOM")
        return

    owner_key = _purl_key(owner.purl)
    owner_ref = str(owner.bom_ref.value)
    ref_map: dict[str, Component] = {}
    seen = {_identity(c) for c in owner.components}
    queue = list(parsed)
    while queue:
        component = queue.pop(0)
        original = component.bom_ref.value
        key = _purl_key(component.purl)
        if (key is not None and key == owner_key) or original in self_refs:
            if original:
                self_refs.add(original)
            queue[0:0] = list(component.components)  # its parts are the wheel's parts
            continue
        if key is not None and key in top_level:
            if original:
                ref_map.setdefault(original, top_level[key])  # keep edges to bundled wheels
            continue
        identity = _identity(component)
        if identity in seen:
            continue
        seen.add(identity)
        _assign_refs(component, owner_ref, used_refs, ref_map)
        owner.components.add(component)

    for dep in doc.get("dependencies", []) if isinstance(doc.get("dependencies"), list) else []:
        if not isinstance(dep, dict):
            continue
        ref = str(dep.get("ref"))
        source = owner if ref in self_refs else ref_map.get(ref)
        targets = [ref_map[str(t)] for t in dep.get("dependsOn", []) or []
                   if str(t) in ref_map]
        if source is not None and targets:
            bom.register_dependency(source, targets)


def _identity(component: Component) -> tuple[str, ...]:
    key = _purl_key(component.purl)
    if key is not None:
        return ("purl", key)
    return ("nv", str(component.type), component.group or "", component.name,
            component.version or "")


def _assign_refs(component: Component, owner_ref: str, used: set[str],
                 ref_map: dict[str, Component]) -> None:
    """Give `component` and its nested components unique, content-derived bom-refs."""
    original = component.bom_ref.value
    base = original or (str(component.purl) if component.purl else component.name
                        + (f"@{component.version}" if component.version else ""))
    ref = f"{owner_ref}#{base}"
    n = 2
    while ref in used:
        ref = f"{owner_ref}#{base}-{n}"
        n += 1
    used.add(ref)
    if original:
        ref_map.setdefault(original, component)
    component.bom_ref.value = ref
    for child in component.components:
        _assign_refs(child, owner_ref, used, ref_map)


def _serialise(bom: Any) -> bytes:
    from cyclonedx.output.json import JsonV1Dot6

    obj = json.loads(JsonV1Dot6(bom).output_as_string(indent=None))
    obj.pop("serialNumber", None)
    body = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    obj["serialNumber"] = f"urn:uuid:{uuid.uuid5(SERIAL_NAMESPACE, body)}"
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")
