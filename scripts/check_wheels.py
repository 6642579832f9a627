#!/usr/bin/env python3
"""Prove that installing autocore never compiles a dependency on the platforms it targets.

For each target (a Raspberry Pi or server flavour) and each Python version, every
runtime dependency in pyproject.toml must resolve to a wheel pip can install
there, binary or pure Python, or be skipped by its environment marker. Markers
are evaluated for the target, not for this machine, and so are those of the
dependencies' own dependencies, which are followed too (a wheel's METADATA). The
``accel`` extra is checked too, except where the README says to leave it out.

Each lookup is ``pip download --only-binary=:all: --no-deps --platform ...
--python-version ... --implementation cp``, so the answer is what pip would
pick. Prints one table per Python version (dependency x target: wheel, pure,
skipped, MISSING, or "-" where not installed) and exits 1 on any MISSING.

    python scripts/check_wheels.py [--python 3.11 ...] [--verbose]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ModuleNotFoundError:  # pip vendors the same library
    from pip._vendor.packaging.requirements import Requirement  # type: ignore
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore

ROOT = Path(__file__).resolve().parent.parent
PYTHONS = ("3.10", "3.11", "3.13")


@dataclass(frozen=True)
class Target:
    """One kind of machine: the wheel tags pip accepts there and what markers see."""

    label: str
    platforms: tuple[str, ...]
    machine: str  # platform_machine as the markers see it (uname -m)
    extras: tuple[str, ...] = ()  # extras checked there (their markers may skip them)
    pythons: tuple[str, ...] = ()  # the only Python versions found there (empty: any)


def manylinux(arch: str, glibc_minor: int) -> tuple[str, ...]:
    """Every tag a glibc 2.<glibc_minor> system accepts for ``arch``, newest first.

    ``pip download --platform manylinux_2_28_x86_64`` matches that tag only, not the
    older ones an installing pip accepts too, so the whole list is passed.
    """
    legacy = {"x86_64": ("manylinux2014", "manylinux2010", "manylinux1")}.get(arch, ("manylinux2014",))
    return (*(f"manylinux_2_{m}_{arch}" for m in range(glibc_minor, 4, -1)),
            *(f"{tag}_{arch}" for tag in legacy), f"linux_{arch}")


# manylinux levels follow autocore's own wheels (manylinux_2_28; armv7l manylinux_2_31):
# a system that takes those wheels takes its dependencies' wheels of these levels.
TARGETS = (
    Target("x86_64", manylinux("x86_64", 28), "x86_64", ("accel",)),
    Target("aarch64", manylinux("aarch64", 28), "aarch64", ("accel",)),
    Target("musl aarch64", ("musllinux_1_2_aarch64", "musllinux_1_1_aarch64", "linux_aarch64"),
           "aarch64", ("accel",)),
    # 32-bit Raspberry Pi OS on a Pi 2/3: 32-bit kernel.
    Target("armv7l", manylinux("armv7l", 31), "armv7l", ("accel",)),
    # 32-bit Raspberry Pi OS on a Pi 4/5 boots a 64-bit kernel: markers see 'aarch64',
    # pip still needs armv7l wheels. No marker can tell these apart from 64-bit systems.
    # Only Raspberry Pi OS makes this mix, with its own Python: 3.11 (12) or 3.13 (13).
    # [accel] is not checked here: its marker cannot skip uvloop, so the README says
    # to install without it on 32-bit Raspberry Pi OS.
    Target("armv7l, 64-bit kernel", manylinux("armv7l", 31), "aarch64",
           pythons=("3.11", "3.13")),
    # Pi 1 and Pi Zero (ARMv6): no manylinux tag exists, only pure wheels install.
    Target("armv6l", ("linux_armv6l",), "armv6l", ("accel",)),
)


def marker_environment(target: Target, python: str, extra: str = "") -> dict[str, str]:
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{python}.0",
        "os_name": "posix",
        "platform_machine": target.machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": f"{python}.0",
        "python_version": python,
        "sys_platform": "linux",
        "extra": extra,
    }


def applies(req: Requirement, target: Target, python: str, extras: tuple[str, ...] = ("",)) -> bool:
    """Tell whether ``req``'s marker selects it on ``target`` for any of ``extras``."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate(marker_environment(target, python, e)) for e in extras)


@dataclass
class Lookup:
    """What pip downloaded for one requirement on one target: a wheel file, or nothing."""

    wheel: str | None
    requires: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def status(self) -> str:
        if self.wheel is None:
            return "MISSING"
        return "pure" if self.wheel.endswith("-none-any.whl") else "wheel"


def _pip_download(spec: str, platforms: tuple[str, ...], python: str) -> Lookup:
    nodot = python.replace(".", "")
    with tempfile.TemporaryDirectory(prefix="check-wheels-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                   "--only-binary=:all:", "--no-deps", "--dest", tmp,
                   "--python-version", python, "--implementation", "cp",
                   "--abi", f"cp{nodot}", "--abi", "abi3", "--abi", "none"]
        for platform in platforms:
            command += ["--platform", platform]
        done = subprocess.run([*command, spec], capture_output=True, text=True, timeout=300)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            lines = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")]
            return Lookup(None, error=lines[-1] if lines else done.stderr.strip()[-200:])
        wheel = wheels[0]
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            metadata = HeaderParser().parsestr(archive.read(name).decode("utf-8"))
        return Lookup(wheel.name, metadata.get_all("Requires-Dist") or [])


class Checker:
    """Resolve requirements target by target, caching pip's answers."""

    def __init__(self, workers: int = 4) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.cache: dict[tuple[str, tuple[str, ...], str], Future[Lookup]] = {}

    def prefetch(self, spec: str, platforms: tuple[str, ...], python: str) -> Future[Lookup]:
        key = (spec, platforms, python)
        if key not in self.cache:
            self.cache[key] = self.pool.submit(_pip_download, spec, platforms, python)
        return self.cache[key]

    def lookup(self, spec: str, platforms: tuple[str, ...], python: str) -> Lookup:
        return self.prefetch(spec, platforms, python).result()

    def resolve(self, target: Target, python: str, roots: list[tuple[str, Requirement]]
                ) -> dict[str, tuple[str, str]]:
        """Map row name -> (status, detail) for ``roots`` and what they pull in on ``target``."""
        results: dict[str, tuple[str, str]] = {}
        seen: set[str] = set()
        queue: list[tuple[str, Requirement, str]] = [(row, req, "") for row, req in roots]
        while queue:
            row, req, parent = queue.pop(0)
            name = canonicalize_name(req.name)
            if not parent and not applies(req, target, python):
                results[row] = ("skipped", "marker")
                continue
            if name in seen:
                continue
            seen.add(name)
            spec = f"{req.name}{req.specifier}"
            found = self.lookup(spec, target.platforms, python)
            results[row] = (found.status, found.wheel or found.error)
            for line in found.requires:
                child = Requirement(line)
                if applies(child, target, python, ("", *sorted(req.extras))):
                    queue.append((f"  {child.name} (via {req.name})", child, req.name))
        return results


def load_requirements() -> tuple[list[Requirement], dict[str, list[Requirement]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [Requirement(r) for r in project.get("dependencies", [])]
    extras = {k: [Requirement(r) for r in v]
              for k, v in project.get("optional-dependencies", {}).items()}
    return deps, extras


def _label(req: Requirement) -> str:
    return f"{req.name}{req.specifier}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", help="Python version (default: 3.10 3.11 3.13)")
    parser.add_argument("--verbose", action="store_true", help="list the wheel picked for each cell")
    args = parser.parse_args(argv)
    pythons = args.python or list(PYTHONS)

    deps, extras = load_requirements()
    checker = Checker()

    def roots_for(target: Target) -> list[tuple[str, Requirement]]:
        roots = [(_label(r), r) for r in deps]
        for extra in target.extras:
            roots += [(f"[{extra}] {_label(r)}", r) for r in extras.get(extra, [])]
        return roots

    for python in pythons:  # start every direct lookup at once; resolve() waits on them
        for target in TARGETS:
            for _, req in roots_for(target):
                checker.prefetch(f"{req.name}{req.specifier}", target.platforms, python)

    missing = 0
    details: list[str] = []
    for python in pythons:
        columns: list[dict[str, tuple[str, str]]] = []
        rows: list[str] = []
        for target in TARGETS:
            if target.pythons and python not in target.pythons:
                columns.append({})
                continue
            result = checker.resolve(target, python, roots_for(target))
            columns.append(result)
            for row in result:
                if row not in rows:
                    rows.append(row)
        # extras' rows also on targets that do not install them, shown as "-"
        for extra in sorted({e for t in TARGETS for e in t.extras}):
            for r in extras.get(extra, []):
                if f"[{extra}] {_label(r)}" not in rows:
                    rows.append(f"[{extra}] {_label(r)}")
        width = max(len(r) for r in rows)
        widths = [max(len(t.label), len("MISSING")) for t in TARGETS]
        print(f"\nPython {python} (CPython)\n")
        print(f"| {'dependency':<{width}} | "
              + " | ".join(f"{t.label:<{w}}" for t, w in zip(TARGETS, widths)) + " |")
        print(f"|{'-' * (width + 2)}|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in rows:
            cells = []
            for target, column, w in zip(TARGETS, columns, widths):
                not_there = bool(target.pythons) and python not in target.pythons
                status, detail = column.get(row, ("n/a" if not_there else "-", ""))
                missing += status == "MISSING"
                cells.append(f"{status:<{w}}")
                if args.verbose and status != "-" or status == "MISSING":
                    details.append(f"  {python} {target.label}: {row.strip()}: {detail}")
            print(f"| {row:<{width}} | " + " | ".join(cells) + " |")
    print("\nwheel: binary wheel; pure: py3-none-any; skipped: environment marker false there;"
          "\n-: not installed there (not required there, or an extra not checked there);"
          "\nn/a: that Python version does not come with that system.")
    if details:
        print("\n" + "\n".join(details))
    print(f"\n{'MISSING: ' + str(missing) + ' dependency lookups' if missing else 'no MISSING wheel'}"
          f" ({len(TARGETS)} targets x {len(pythons)} Python versions)")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
