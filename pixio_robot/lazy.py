"""Package names imported on first use (PEP 562), so that importing a package stays cheap for
the CLI and for worker processes that need one submodule."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], list[str]]:
    """`__getattr__` and `__all__` for `package`, whose public names live in the submodules
    `exports` maps them to: `__getattr__, __all__ = lazy_exports(__name__, {"name": "module"})`."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f".{exports[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(exports)
