"""Validate the iOS app's project without Xcode: the XcodeGen spec (project.yml), Info.plist and the entitlements.

    python check_project.py [IOS_APP_DIR]

Checks that the spec parses and names the app and device-test targets; every path it lists exists; every Swift file
under App/Views and DeviceTests belongs to a target; the Swift package products it links exist in Package.swift;
the deployment target matches Package.swift; the plists parse (plistlib) with the keys the app relies on (Files app
access, arm64, version strings) and only known entitlements. One line per problem, exit 1 if any.
"""

from __future__ import annotations

import plistlib
import re
import sys
from pathlib import Path

import yaml

REQUIRED_INFO = {
    "CFBundleIdentifier": "$(PRODUCT_BUNDLE_IDENTIFIER)",
    "CFBundleExecutable": "$(EXECUTABLE_NAME)",
    "CFBundlePackageType": "APPL",
    "UIFileSharingEnabled": True,  # Documents/ visible in the Files app and to devicectl: how bundles get in
    "LSSupportsOpeningDocumentsInPlace": True,
}
KNOWN_ENTITLEMENTS = {
    # Models of hundreds of MB to GB: the default jetsam limit is too low on most iPhones.
    "com.apple.developer.kernel.increased-memory-limit": True,
    "com.apple.developer.kernel.extended-virtual-addressing": True,
}


def check(root: Path) -> list[str]:
    errors: list[str] = []
    spec_path = root / "project.yml"
    try:
        spec = yaml.safe_load(spec_path.read_text())
    except (OSError, yaml.YAMLError) as err:
        return [f"{spec_path}: {err}"]
    targets = spec.get("targets") or {}
    for name, kind in (("QwenMobile", "application"), ("QwenMobileDeviceTests", "bundle.unit-test")):
        if name not in targets:
            errors.append(f"{spec_path}: field 'targets/{name}': missing")
        elif targets[name].get("type") != kind:
            errors.append(f"{spec_path}: field 'targets/{name}/type': {targets[name].get('type')!r}, expected {kind!r}")
    package_swift = (root / "Package.swift").read_text()
    products = set(re.findall(r'\.library\(name: "(\w+)"', package_swift))
    covered: set[Path] = set()
    for name, target in targets.items():
        for i, src in enumerate(target.get("sources") or []):
            path = root / (src["path"] if isinstance(src, dict) else src)
            if isinstance(src, dict) and src.get("optional") and not path.exists():
                continue
            if not path.exists():
                errors.append(f"{spec_path}: field 'targets/{name}/sources/{i}': {path.relative_to(root)} does not exist")
            covered |= {f.resolve() for f in path.rglob("*.swift")} if path.is_dir() else {path.resolve()}
        for key in ("INFOPLIST_FILE", "CODE_SIGN_ENTITLEMENTS"):
            value = ((target.get("settings") or {}).get("base") or {}).get(key)
            if value and not (root / value).is_file():
                errors.append(f"{spec_path}: field 'targets/{name}/settings/base/{key}': {value} does not exist")
        for i, dep in enumerate(target.get("dependencies") or []):
            if "package" in dep:
                if dep["package"] not in (spec.get("packages") or {}):
                    errors.append(f"{spec_path}: field 'targets/{name}/dependencies/{i}': unknown package {dep['package']}")
                if dep.get("product") not in products:
                    errors.append(f"{spec_path}: field 'targets/{name}/dependencies/{i}': product {dep.get('product')} "
                                  f"is not a library of Package.swift ({sorted(products)})")
            if "target" in dep and dep["target"] not in targets:
                errors.append(f"{spec_path}: field 'targets/{name}/dependencies/{i}': unknown target {dep['target']}")
    for folder in ("App/Views", "DeviceTests"):
        for f in sorted((root / folder).rglob("*.swift")):
            if f.resolve() not in covered:
                errors.append(f"{f.relative_to(root)}: not in any target's sources in project.yml")
    ios = str((spec.get("options") or {}).get("deploymentTarget", {}).get("iOS", ""))
    major = re.search(r"\.iOS\(\.v(\d+)\)", package_swift)
    if not major or ios.split(".")[0] != major.group(1):
        errors.append(f"{spec_path}: field 'options/deploymentTarget/iOS': {ios!r} differs from Package.swift's "
                      f"platforms ({major.group(0) if major else 'none'})")

    info_path = root / "App/Info.plist"
    try:
        info = plistlib.loads(info_path.read_bytes())
    except Exception as err:  # noqa: BLE001 - any parse failure is the finding
        errors.append(f"{info_path}: not a valid plist ({err})")
        info = {}
    for key, want in REQUIRED_INFO.items():
        if info.get(key) != want:
            errors.append(f"{info_path}: key '{key}': {info.get(key)!r}, expected {want!r}")
    if "arm64" not in (info.get("UIRequiredDeviceCapabilities") or []):
        errors.append(f"{info_path}: key 'UIRequiredDeviceCapabilities': must list arm64")
    if not re.fullmatch(r"\d+\.\d+\.\d+", str(info.get("CFBundleShortVersionString", ""))):
        errors.append(f"{info_path}: key 'CFBundleShortVersionString': not MAJOR.MINOR.PATCH")

    ent_path = root / "App/QwenMobile.entitlements"
    try:
        ent = plistlib.loads(ent_path.read_bytes())
    except Exception as err:  # noqa: BLE001
        errors.append(f"{ent_path}: not a valid plist ({err})")
        ent = {}
    for key, value in ent.items():
        if KNOWN_ENTITLEMENTS.get(key) != value:
            errors.append(f"{ent_path}: key '{key}': unexpected entitlement or value {value!r}")
    return errors


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    errors = check(root)
    for e in errors:
        print(e)
    n_targets = len((yaml.safe_load((root / "project.yml").read_text()) or {}).get("targets") or {})
    print(f"project: {n_targets} targets, Info.plist, entitlements: {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
