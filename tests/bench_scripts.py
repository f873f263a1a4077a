"""Load a bench/ script as a module, for the tests that drive it briefly (the scripts run
standalone too, so they are not part of a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH: Path = Path(__file__).resolve().parent.parent / "bench"


def load(script: str) -> ModuleType:
    """bench/<script>.py, imported once per test session."""
    name = f"jwtproxy_bench_{script}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{script}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module
