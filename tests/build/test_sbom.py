"""The embedded CycloneDX SBOM: valid 1.6, complete, merged, deterministic."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from bundlecraft import make_bundle
from wheelcraft import make_wheel

from sandrun.build.builder import BundleRequest, BundleResult, build_bundle
from sandrun.build.sbom import load_sbom, parse_sbom, read_sbom, sbom_summary
from sandrun.bundle.archive import open_archive
from sandrun.bundle.manifest import SBOM_NAME
from sandrun.bundle.verify import verify_bundle
from sandrun.errors import BundleError

LONG_LICENSE = "Copyright (c) the authors.\n\nPermission is hereby granted, free of charge..."

CARRIED_SBOM = {  # in the style of auditwheel's grafted-library SBOM (spec 1.4)
    "bomFormat": "CycloneDX", "specVersion": "1.4", "version": 1,
    "metadata": {
        "component": {"type": "library", "bom-ref": "pkg:pypi/native@2.0?file_name=x.whl",
                      "name": "native", "version": "2.0",
                      "purl": "pkg:pypi/native@2.0?file_name=x.whl"},
        "tools": [{"name": "auditwheel", "version": "6.1.0"}]},
    "components": [
        {"type": "library", "bom-ref": "pkg:pypi/native@2.0?file_name=x.whl", "name": "native",
         "version": "2.0", "purl": "pkg:pypi/native@2.0?file_name=x.whl"},
        {"type": "library", "bom-ref": "pkg:deb/debian/libssl3@3.0.15?arch=amd64",
         "name": "libssl3", "version": "3.0.15",
         "purl": "pkg:deb/debian/libssl3@3.0.15?arch=amd64",
         "licenses": [{"license": {"id": "Apache-2.0"}}]},
        {"type": "library", "bom-ref": "zlib", "name": "zlib", "version": "1.3",
         "components": [{"type": "file", "name": "libz.so.1"}]},
        {"type": "library", "bom-ref": "pkg:deb/debian/libssl3@3.0.15?arch=amd64",
         "name": "libssl3", "version": "3.0.15",
         "purl": "pkg:deb/debian/libssl3@3.0.15?arch=amd64"},  # listed twice
    ],
    "dependencies": [
        {"ref": "pkg:pypi/native@2.0?file_name=x.whl",
         "dependsOn": ["pkg:deb/debian/libssl3@3.0.15?arch=amd64", "zlib"]},
        {"ref": "pkg:deb/debian/libssl3@3.0.15?arch=amd64", "dependsOn": ["zlib"]},
    ],
}


def _record_digest(data: bytes) -> str:
    raw = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def with_metadata(wheel: Path, lines: list[str]) -> Path:
    """Add METADATA header lines to a wheelcraft wheel, keeping its RECORD right."""
    with zipfile.ZipFile(wheel) as zf:
        content = {i.filename: zf.read(i) for i in zf.infolist()}
    meta_name = next(n for n in content if n.endswith(".dist-info/METADATA"))
    record_name = meta_name.replace("METADATA", "RECORD")
    head, _, body = content[meta_name].decode().partition("\n\n")
    content[meta_name] = (head.rstrip("\n") + "\n" + "".join(f"{ln}\n" for ln in lines)
                          + ("\n" + body if body else "")).encode()
    del content[record_name]
    record = "".join(f"{n},{_record_digest(d)},{len(d)}\n" for n, d in sorted(content.items()))
    content[record_name] = (record + f"{record_name},,\n").encode()
    wheel.unlink()
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in sorted(content.items()):
            zf.writestr(name, data)
    return wheel


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sbom-wheels")
    with_metadata(make_wheel(
        d, "myapp", "1.0", {"myapp.py": "def main():\n    return 0\n"},
        console_scripts={"myapp": "myapp:main"},
        requires=['lic-field; python_version >= "3"', "Lic_Expr[extra]",
                  'lic-long; extra == "full"', 'native; sys_platform == "win32"',
                  'not-bundled>=1; python_version < "3"']),
        ["Provides-Extra: full", "License-Expression: mit or apache-2.0",
         "Summary: the app"])
    with_metadata(make_wheel(d, "lic_expr", "0.1", {"lic_expr.py": ""}, requires=["native"]),
                  ["License-Expression: not a valid expression"])
    with_metadata(make_wheel(d, "Lic_Field", "2.0", {"lic_field.py": ""}),
                  ["License: BSD-3-Clause", "Classifier: License :: OSI Approved :: MIT License"])
    with_metadata(make_wheel(d, "lic_long", "3.0", {"lic_long.py": ""}),
                  [f"License: {LONG_LICENSE.replace(chr(10), chr(10) + '        ')}",
                   "Classifier: License :: OSI Approved :: MIT License",
                   "Classifier: License :: OSI Approved :: BSD License",
                   "Classifier: License :: OSI Approved",
                   "Classifier: Programming Language :: Python :: 3"])
    make_wheel(d, "native", "2.0", {
        "native/__init__.py": "",
        "native-2.0.dist-info/sboms/auditwheel.cdx.json": json.dumps(CARRIED_SBOM),
        "native-2.0.dist-info/sboms/other.spdx.json": json.dumps({"spdxVersion": "SPDX-2.3"}),
    })
    return d


def build(wheelhouse: Path, out: Path, warnings: list[str] | None = None,
          epoch: int | None = None) -> BundleResult:
    return build_bundle(
        BundleRequest(output=out, requirements=("myapp", "lic-long", "native"),
                      console_script="myapp", find_links=(str(wheelhouse),), no_index=True,
                      source_date_epoch=epoch),
        warn=(warnings.append if warnings is not None else lambda _: None))


@pytest.fixture(scope="module")
def built(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[Path, dict[str, Any], list[str]]:
    warnings: list[str] = []
    out = tmp_path_factory.mktemp("sbom") / "app.pyz"
    build(wheelhouse, out, warnings)
    result = verify_bundle(out)
    assert result.ok, result.problems
    sbom = load_sbom(result.archive)
    assert sbom is not None
    return out, sbom, warnings


def by_name(sbom: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from packaging.utils import canonicalize_name

    return {canonicalize_name(c["name"]): c for c in sbom["components"]}


def test_sbom_validates_against_the_cyclonedx_1_6_schema(built: tuple) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    out, sbom, _ = built
    with zipfile.ZipFile(out) as zf:
        raw = zf.read(SBOM_NAME).decode()
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(raw)
    assert error is None, error
    assert sbom["specVersion"] == "1.6" and sbom["bomFormat"] == "CycloneDX"


def test_sbom_is_a_manifest_entry(built: tuple) -> None:
    out, _, _ = built
    result = verify_bundle(out)
    with zipfile.ZipFile(out) as zf:
        data = zf.read(SBOM_NAME)
    record = result.manifest.entries[SBOM_NAME]
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert record.mode == 0o644
    assert read_sbom(result.archive) == data


def test_app_and_every_wheel_with_purl_hash_and_license(built: tuple) -> None:
    out, sbom, _ = built
    manifest = verify_bundle(out).manifest
    app = sbom["metadata"]["component"]
    assert (app["type"], app["name"], app["version"]) == ("application", "myapp", "1.0")
    assert app["purl"] == "pkg:generic/myapp@1.0"
    assert sbom["metadata"]["tools"]["components"][0]["name"] == "sandrun"
    comps = by_name(sbom)
    assert set(comps) == {d.name for d in manifest.dependencies}
    for dep in manifest.dependencies:
        comp = comps[dep.name]
        assert comp["version"] == dep.version
        assert comp["purl"] == comp["bom-ref"] == f"pkg:pypi/{dep.name}@{dep.version}"
        assert comp["hashes"] == [{"alg": "SHA-256", "content": dep.sha256}]
        assert {"name": "sandrun:wheel", "value": dep.wheel} in comp["properties"]
    declared = "declared"
    assert comps["myapp"]["licenses"] == [{"expression": "MIT OR Apache-2.0",
                                           "acknowledgement": declared}]
    assert comps["myapp"]["description"] == "the app"
    # Not a valid SPDX expression: kept as the project wrote it, as a name.
    assert comps["lic-expr"]["licenses"] == [
        {"license": {"name": "not a valid expression", "acknowledgement": declared}}]
    # A short License field wins over classifiers.
    assert comps["lic-field"]["licenses"] == [
        {"license": {"id": "BSD-3-Clause", "acknowledgement": declared}}]
    # A full license text is not a license name: the classifiers are used.
    assert sorted(comps["lic-long"]["licenses"], key=json.dumps) == [
        {"license": {"acknowledgement": declared, "id": "MIT"}},
        {"license": {"acknowledgement": declared, "name": "BSD License"}}]
    assert "licenses" not in comps["native"]


def test_dependency_graph_only_to_bundled_components(built: tuple) -> None:
    _, sbom, _ = built
    graph = {d["ref"]: set(d.get("dependsOn", [])) for d in sbom["dependencies"]}
    assert graph["pkg:pypi/myapp@1.0"] == {
        "pkg:pypi/lic-field@2.0",  # marker true on the target
        "pkg:pypi/lic-expr@0.1",  # requested with an extra the target bundles
        "pkg:pypi/lic-long@3.0",  # behind the wheel's own extra "full"
    }  # not native (win32 only), not not-bundled (absent)
    assert graph["pkg:pypi/lic-expr@0.1"] == {"pkg:pypi/native@2.0"}
    assert graph[sbom["metadata"]["component"]["bom-ref"]] == {"pkg:pypi/myapp@1.0"}


def test_wheel_carried_sbom_is_merged_without_duplicates(built: tuple) -> None:
    _, sbom, warnings = built
    native = by_name(sbom)["native"]
    nested = {c["name"]: c for c in native["components"]}
    # The wheel describing itself is not repeated; libssl3 listed twice appears once.
    assert sorted(nested) == ["libssl3", "zlib"]
    assert len(native["components"]) == 2
    ssl_ref = "pkg:pypi/native@2.0#pkg:deb/debian/libssl3@3.0.15?arch=amd64"
    assert nested["libssl3"]["bom-ref"] == ssl_ref
    assert nested["libssl3"]["purl"] == "pkg:deb/debian/libssl3@3.0.15?arch=amd64"
    assert nested["libssl3"]["licenses"] == [{"license": {"id": "Apache-2.0"}}]
    assert nested["zlib"]["bom-ref"] == "pkg:pypi/native@2.0#zlib"
    # A nested component without a bom-ref gets a content-derived one, never a random one.
    assert nested["zlib"]["components"][0]["bom-ref"] == "pkg:pypi/native@2.0#libz.so.1"
    graph = {d["ref"]: set(d.get("dependsOn", [])) for d in sbom["dependencies"]}
    assert graph["pkg:pypi/native@2.0"] == {ssl_ref, "pkg:pypi/native@2.0#zlib"}
    assert graph[ssl_ref] == {"pkg:pypi/native@2.0#zlib"}
    assert "BomRef." not in json.dumps(sbom)
    # The SPDX file is not merged, and the builder says so.
    assert any("other.spdx.json is not a CycloneDX SBOM" in w for w in warnings)
    assert sbom_summary(sbom) == {
        "spec_version": "1.6", "serial_number": sbom["serialNumber"], "components": 5,
        "nested_components": 3, "dependencies": len(sbom["dependencies"])}


BUILD_SCRIPT = """
import sys
from pathlib import Path
from sandrun.build.builder import BundleRequest, build_bundle
build_bundle(BundleRequest(output=Path(sys.argv[2]), requirements=("myapp", "lic-long", "native"),
                           console_script="myapp", find_links=(sys.argv[1],), no_index=True))
"""


def test_two_builds_are_byte_identical(wheelhouse: Path, built: tuple, tmp_path: Path) -> None:
    # Separate processes with different hash seeds: no set or dict order may leak.
    outs = []
    for seed in ("1", "2"):
        (tmp_path / seed).mkdir()
        out = tmp_path / seed / "x.pyz"
        proc = subprocess.run([sys.executable, "-c", BUILD_SCRIPT, str(wheelhouse), str(out)],
                              env={**os.environ, "PYTHONHASHSEED": seed}, cwd=tmp_path / seed,
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == built[0].read_bytes()
    sbom = load_sbom(verify_bundle(tmp_path / "1" / "x.pyz").archive)
    assert sbom is not None
    assert sbom["serialNumber"].startswith("urn:uuid:")
    assert sbom["metadata"]["timestamp"] == "1980-01-01T00:00:00+00:00"
    assert str(tmp_path).encode() not in outs[0]


def test_source_date_epoch_sets_the_timestamp_and_serial(wheelhouse: Path, built: tuple,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "e.pyz"
    build(wheelhouse, out, epoch=1700000000)
    sbom = load_sbom(verify_bundle(out).archive)
    assert sbom is not None
    assert sbom["metadata"]["timestamp"] == "2023-11-14T22:13:20+00:00"
    # The serial number is derived from the content, so it changes with it.
    assert sbom["serialNumber"] != built[1]["serialNumber"]


def test_classifier_table_names_real_spdx_ids() -> None:
    from cyclonedx.spdx import is_supported_id

    from sandrun.build.sbom import CLASSIFIER_SPDX

    assert all(is_supported_id(i) for i in CLASSIFIER_SPDX.values())


@pytest.mark.parametrize(("field", "expected"), [
    ("MIT", {"license": {"id": "MIT"}}),
    ("mit or isc", {"expression": "MIT OR ISC"}),
    ("MIT License", {"license": {"id": "MIT"}}),
    ("LicenseRef-Proprietary", {"expression": "LicenseRef-Proprietary"}),
    ("Apache 2.0", {"license": {"name": "Apache 2.0"}}),
])
def test_license_field(field: str, expected: dict[str, Any]) -> None:
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component
    from cyclonedx.output.json import JsonV1Dot6

    from sandrun.build.sbom import _licenses

    component = Component(name="x", version="1", bom_ref="x",
                          licenses=_licenses(None, field, []))
    data = json.loads(JsonV1Dot6(Bom(components=[component])).output_as_string())
    (got,) = data["components"][0]["licenses"]
    got.pop("acknowledgement", None)
    got.get("license", {}).pop("acknowledgement", None)
    assert got == expected


def test_bundle_without_sbom_and_broken_sbom(tmp_path: Path) -> None:
    assert read_sbom(open_archive(make_bundle(tmp_path))) is None
    with pytest.raises(BundleError, match=r"\.sandrun/sbom\.cdx\.json: not valid JSON"):
        parse_sbom(b"{not json")
    with pytest.raises(BundleError, match="not a CycloneDX document"):
        parse_sbom(b'{"spdxVersion": "SPDX-2.3"}')
