"""Builds aribbps and its C++ coder extension ``aribbps._coder``.

Build knobs (environment variables):
  ARIB_DEBUG_BUILD=1   compile the coder with -O0 -g (assertions on)
  ARIB_SANITIZE=1      compile the coder with -fsanitize=address,undefined
"""
from __future__ import annotations

import os
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

sources = sorted(
    path for path in glob("coder/*.cpp") if not os.path.basename(path).startswith("test_")
)
compile_args = ["-O3"]
link_args: list[str] = []
if os.environ.get("ARIB_DEBUG_BUILD"):
    compile_args = ["-O0", "-g", "-UNDEBUG"]
if os.environ.get("ARIB_SANITIZE"):
    compile_args = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all"]
    link_args = ["-fsanitize=address,undefined"]

ext_modules = [
    Pybind11Extension(
        "aribbps._coder",
        sources,
        include_dirs=["coder"],
        cxx_std=17,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
