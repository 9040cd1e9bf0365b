"""Optional extras of setup.py: code that needs one imports it here, and says in one line how to install it."""
import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """Import `module`, or fail with the install line of the extra (`dev`, `aot`, ...) that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is not installed; it comes with the [{extra}] extra: "
                          f"pip install -e '.[{extra}]'") from e
