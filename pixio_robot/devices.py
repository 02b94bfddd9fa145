"""Choosing the device and the compute dtype from config strings."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .errors import PixioError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise PixioError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PixioError(f"device={name} but no CUDA GPU is visible: use device=cpu")
    return device


def fast_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 matmuls run natively on `device`. CPUs without AVX512-BF16 or AMX
    emulate them: bfloat16 autocast trained 13x slower than float32 on a 2-core AMD EPYC."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def pick_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """A dtype from its name; "auto" is bfloat16 where `device` computes it natively, else float32."""
    if name == "auto":
        return torch.bfloat16 if device is not None and fast_bfloat16(device) else torch.float32
    if name not in DTYPES:
        raise PixioError(f"dtype={name!r} is not supported: use one of auto, float32, bfloat16, float16")
    return DTYPES[name]


@contextmanager
def torch_threads(n: int | None):
    """Run the block on `n` torch CPU threads (None or 0: as it is), restoring the number after.

    Small models run best on one thread when other jobs share the cores."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
