"""Optional heavy dependencies, imported on first use with what they need from PyPI.

open3d's Linux wheel links against the system's `libusb-1.0.so.0`, which many machines (slim
containers, clusters) lack. The `libusb-package` wheel ships that library; loading it globally
before open3d's own import satisfies the dynamic linker, so no apt step is needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from types import ModuleType

from .errors import PixioError


@functools.cache
def _preload_libusb() -> None:
    # The PyPI copy first: it is always installed with the package, so every machine (CI
    # included, whose FFmpeg packages pull in the system copy) runs the same path.
    import libusb_package

    path = libusb_package.get_library_path()
    with contextlib.suppress(OSError):  # then open3d's own import names what is missing
        ctypes.CDLL(str(path) if path is not None else "libusb-1.0.so.0", mode=ctypes.RTLD_GLOBAL)


def open3d() -> ModuleType:
    """`import open3d`, with libusb preloaded from PyPI where the system has none."""
    if "open3d" in sys.modules:
        return sys.modules["open3d"]
    if sys.platform.startswith("linux"):
        _preload_libusb()
    try:
        import open3d as o3d
    except ImportError as e:
        raise PixioError(
            f"open3d could not be imported ({e}): reinstall the environment with `uv sync`; "
            "on Debian/Ubuntu a missing system library is in package libusb-1.0-0"
        ) from e
    return o3d
