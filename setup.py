"""Declare autocore's optional Cython extensions and report which build was made.

Every ``src/autocore/_fast/*.pyx`` becomes an extension when Cython and a C
compiler are available. Each one has a pure-Python twin, so a failed or skipped
compile still gives a working package, unless ``AUTOCORE_REQUIRE_EXTENSIONS``
asks for the build to fail instead (wheel builds set it).

``_envelope`` also needs simdjson's amalgamated source (``simdjson.h`` and
``simdjson.cpp``), which the pysimdjson distribution ships: it is a build
requirement wherever pysimdjson has wheels. Without it ``_envelope`` stays pure
Python and the other modules are still compiled. The compiled ``_envelope``
embeds simdjson, so pysimdjson is not needed at run time.

Environment switches:
  AUTOCORE_NO_EXTENSIONS=1       build the pure-Python package only
  AUTOCORE_REQUIRE_EXTENSIONS=1  fail instead of falling back to pure Python
  AUTOCORE_REQUIRE_EXTENSIONS=_frames,_topics,_ring,_compress,_sqlwrite
                                 fail only if one of these modules is not compiled
                                 (wheels for 32-bit ARM, where pysimdjson has no wheel)
  AUTOCORE_CYTHON_ANNOTATE=1     write annotated HTML next to each .pyx
  AUTOCORE_CYTHON_TRACE=1        compile with line tracing (for coverage/profilers)
  AUTOCORE_DEBUG_BUILD=1         -O0 -g3 (release builds strip debug info on Linux)
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


def _required_modules():
    """Stems whose compile must not fall back: all ("*"), a listed few, or none."""
    raw = os.environ.get("AUTOCORE_REQUIRE_EXTENSIONS", "").strip()
    if raw.lower() in {"", "0", "false", "no", "off"}:
        return frozenset()
    if raw.lower() in {"1", "true", "yes", "on"}:
        return frozenset({"*"})
    return frozenset("_" + s.strip().lstrip("_") for s in raw.split(",") if s.strip())


REQUIRED = _required_modules()
REQUIRE_EXTENSIONS = bool(REQUIRED)


def _required(stem):
    """Tell whether a failed or skipped compile of ``stem`` must fail the build."""
    return "*" in REQUIRED or stem in REQUIRED


# Compile flags written gcc/clang style, and what MSVC calls them
MSVC_FLAGS = {"-O2": "/O2", "-O0": "/Od", "-g3": "/Z7", "-std=c++17": "/std:c++17"}


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
    # Python's own CFLAGS often carry -g: without stripping, the debug info makes
    # the modules ten times larger (4.9 MB instead of 0.6 MB on x86_64).
    strip = not (debug or trace) and sys.platform.startswith("linux")
    link_args = ["-Wl,--strip-debug"] if strip else []

    only = {s.strip() for s in os.environ.get("AUTOCORE_BUILD_ONLY", "").split(",") if s.strip()}
    unknown = REQUIRED - {"*"} - {pyx.stem for pyx in FAST_DIR.glob("*.pyx")}
    if unknown:
        raise RuntimeError(f"AUTOCORE_REQUIRE_EXTENSIONS names unknown modules: {sorted(unknown)}")
    extensions = []
    for pyx in sorted(FAST_DIR.glob("*.pyx")):
        stem = pyx.stem
        if only and stem not in only:
            continue
        kwargs = {"define_macros": list(macros), "extra_compile_args": list(c_args),
                  "extra_link_args": list(link_args)}
        sources = [str(pyx.relative_to(HERE))]
        if stem == "_sqlwrite" and sys.platform.startswith("linux"):
            kwargs["libraries"] = ["dl"]  # dlopen/dlsym live in libdl before glibc 2.34
        if stem == "_envelope":
            simdjson_dir = _simdjson_dir()
            if simdjson_dir is None:
                message = "pysimdjson not installed: _envelope stays pure Python"
                if _required(stem):
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
        self._drop_stale_modules()
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers, ...
            self._give_up(exc)

    def _drop_stale_modules(self):
        """Delete compiled modules an earlier build left in build_lib that this build does not make.

        Otherwise a build without pysimdjson would ship the _envelope compiled by an
        earlier build in the same tree.
        """
        made = {ext.name.rsplit(".", 1)[-1] for ext in self.extensions}
        folder = Path(self.build_lib) / "autocore" / "_fast"
        for pyx in FAST_DIR.glob("*.pyx"):
            if pyx.stem not in made:
                for stale in folder.glob(f"{pyx.stem}.*"):
                    if stale.suffix in {".so", ".pyd"}:
                        stale.unlink()

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            for ext in self.extensions:
                ext.extra_compile_args = [MSVC_FLAGS.get(a, a) for a in ext.extra_compile_args]
        super().build_extensions()

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)  # no stale copy
            self._give_up(exc, ext.name)

    def _give_up(self, exc, name=None):
        stem = name.rsplit(".", 1)[-1] if name else None
        if (stem is None and REQUIRE_EXTENSIONS) or (stem is not None and _required(stem)):
            raise
        what = name or "extensions"
        print(f"autocore: could not build {what} ({exc}); using the pure-Python twin")


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
