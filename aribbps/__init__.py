"""aribbps: learned lossless image compression by bit-plane slicing (ArIB-BPS).

Importing the package limits torch's oneDNN CPU kernels to AVX2 unless
``ONEDNN_MAX_CPU_ISA`` is set, and its ATen kernels unless
``ATEN_CPU_CAPABILITY`` is (:mod:`aribbps.cpu_isa`): files then decode on
more x86-64 machines than those with the encoder's instruction set.
"""
from aribbps import cpu_isa as _cpu_isa

_cpu_isa.pin()
