"""faclip: fine-tune a Persian CLIP text encoder against a frozen vision encoder, as a DVC pipeline."""

import os
import platform

__version__ = "0.1.0"

# Bit-for-bit outputs on any x86-64 CPU: torch (ATen, MKL, oneDNN) and FAISS (OpenBLAS) pick their
# kernels by CPU, and AVX-512 kernels round differently from AVX2 ones, so a clone run on another
# machine would otherwise reproduce every model and metric only to the last bits. Pin them to AVX2
# (every x86-64 server CPU of the last decade has it). This must run before torch or faiss loads,
# which every faclip import guarantees; a value you set in the environment yourself wins.
if platform.machine().lower() in ("x86_64", "amd64"):
    for _name, _value in {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                          "OPENBLAS_CORETYPE": "Haswell", "FAISS_OPT_LEVEL": "avx2"}.items():
        os.environ.setdefault(_name, _value)
