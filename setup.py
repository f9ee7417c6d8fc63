"""Metadata lives in setup.cfg; this file only declares the optional C extensions: the priors' step function
(hvqcodec/_stepkernel.c) and the torch-free runtime's decoder kernels (hvqcodec/_decoderkernel.c). Where they
cannot be built (no C compiler), the install goes on without them: the torch version, or plain numpy, runs."""
import os

from setuptools import Extension, setup

COMPILE_ARGS = [] if os.name == "nt" else ["-O3"]

# Both include hvqcodec/_amx.h (AMX tiles' set-up; MANIFEST.in puts it in the source distribution).
setup(ext_modules=[Extension("hvqcodec._stepkernel", ["hvqcodec/_stepkernel.c"], optional=True,
                             extra_compile_args=COMPILE_ARGS, depends=["hvqcodec/_amx.h", "hvqcodec/_rangecoder.h"]),
                   Extension("hvqcodec._decoderkernel", ["hvqcodec/_decoderkernel.c"], optional=True,
                             extra_compile_args=COMPILE_ARGS, depends=["hvqcodec/_amx.h"])])
