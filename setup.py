"""Declare autocore's optional Cython extensions and report which build was made.

Every ``src/autocore/_fast/*.pyx`` becomes an extension when Cython and a C
compiler are available. Each one has a pure-Python twin, so a failed or skipped
compile still gives a working package, unless ``AUTOCORE_REQUIRE_EXTENSIONS=1``
asks for the build to fail instead (wheel builds set it).

Environment switches:
  AUTOCORE_NO_EXTENSIONS=1       build the pure-Python package only
  AUTOCORE_REQUIRE_EXTENSIONS=1  fail instead of falling back to pure Python
  AUTOCORE_CYTHON_ANNOTATE=1     write annotated HTML next to each .pyx
  AUTOCORE_CYTHON_TRACE=1        compile with line tracing (for coverage/profilers)
  AUTOCORE_DEBUG_BUILD=1         -O0 -g3
  AUTOCORE_BUILD_ONLY=_ring,...  compile only these modules (quick rebuilds)
"""

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
FAST_DIR = HERE / "src" / "autocore" / "_fast"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


NO_EXTENSIONS = _flag("AUTOCORE_NO_EXTENSIONS") or sys.implementation.name != "cpython"
REQUIRE_EXTENSIONS = _flag("AUTOCORE_REQUIRE_EXTENSIONS")


def _simdjson_dir():
    """Return the folder holding simdjson.h/.cpp shipped by pysimdjson, or None."""
    try:
        import simdjson
    except ImportError:
        return None
    folder = Path(simdjson.__file__).parent
    if (folder / "simdjson.h").is_file() and (folder / "simdjson.cpp").is_file():
        return folder
    return None


def _extensions():
    from Cython.Build import cythonize
    from setuptools import Extension

    debug = _flag("AUTOCORE_DEBUG_BUILD")
    trace = _flag("AUTOCORE_CYTHON_TRACE")
    c_args = ["-O0", "-g3"] if debug else ["-O2"]
    macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")] if trace else []

    only = {s.strip() for s in os.environ.get("AUTOCORE_BUILD_ONLY", "").split(",") if s.strip()}
    extensions = []
    for pyx in sorted(FAST_DIR.glob("*.pyx")):
        stem = pyx.stem
        if only and stem not in only:
            continue
        kwargs = {"define_macros": list(macros), "extra_compile_args": list(c_args)}
        sources = [str(pyx.relative_to(HERE))]
        if stem == "_envelope":
            simdjson_dir = _simdjson_dir()
            if simdjson_dir is None:
                message = "pysimdjson not installed: _envelope stays pure Python"
                if REQUIRE_EXTENSIONS:
                    raise RuntimeError(message)
                print(f"autocore: {message}")
                continue
            sources.append(str(simdjson_dir / "simdjson.cpp"))
            kwargs["include_dirs"] = [str(simdjson_dir)]
            kwargs["language"] = "c++"
            kwargs["extra_compile_args"] += ["-std=c++17"]
        extensions.append(Extension(f"autocore._fast.{stem}", sources, **kwargs))

    directives = {"language_level": "3", "embedsignature": True}
    if trace:
        directives.update(linetrace=True, profile=True)
    return cythonize(
        extensions,
        compiler_directives=directives,
        annotate=_flag("AUTOCORE_CYTHON_ANNOTATE"),
    )


class OptionalBuildExt(build_ext):
    """Build the extensions, but fall back to pure Python when compiling fails."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers, ...
            self._give_up(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._give_up(exc, ext.name)

    def _give_up(self, exc, name="extensions"):
        if REQUIRE_EXTENSIONS:
            raise
        print(f"autocore: could not build {name} ({exc}); using the pure-Python twin")


def _setup_kwargs():
    if NO_EXTENSIONS:
        print("autocore: pure-Python build (AUTOCORE_NO_EXTENSIONS or not CPython)")
        return {}
    try:
        ext_modules = _extensions()
    except ImportError as exc:  # Cython missing
        if REQUIRE_EXTENSIONS:
            raise
        print(f"autocore: pure-Python build ({exc})")
        return {}
    print("autocore: accelerated build of " + ", ".join(e.name for e in ext_modules))
    return {"ext_modules": ext_modules, "cmdclass": {"build_ext": OptionalBuildExt}}


setup(**_setup_kwargs())
