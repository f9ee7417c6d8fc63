"""Metadata lives in setup.cfg; this file only declares the optional C step function (hvqcodec/_stepkernel.c).
Where it cannot be built (no C compiler), the install goes on without it and the torch version runs."""
import os

from setuptools import Extension, setup

setup(ext_modules=[Extension("hvqcodec._stepkernel", ["hvqcodec/_stepkernel.c"], optional=True,
                             extra_compile_args=[] if os.name == "nt" else ["-O3"])])
