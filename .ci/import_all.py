"""Import every module of oresearcher/, synth/ and experiments/ in the current environment.

CI runs it in a venv holding exactly the README's main-command install (no extras): a runtime dependency missing
from setup.py fails here, naming the module that imports it and the package. A module that needs an optional
extra may refuse to import only with an ImportError whose message names the extra (`pip install -e '.[dev]'`).
"""
import importlib
import pathlib
import re
import subprocess
import sys
import traceback

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # as `python -m` from the repository root, where configs/ is importable
EXTRA = re.compile(r"pip install -e '\.\[(\w+)\]'")


def modules():
    for package in ("oresearcher", "synth", "experiments"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def main() -> int:
    failures, extras, count = [], [], 0
    for name in modules():
        count += 1
        try:
            importlib.import_module(name)
        except ImportError as e:
            match = EXTRA.search(str(e))
            if match:
                extras.append(f"{name}: needs the [{match.group(1)}] extra")
            else:
                missing = getattr(e, "name", None) or str(e)
                failures.append(f"{name}: cannot import {missing!r} ({e}): declare it in setup.py "
                                "install_requires, or make the import name its extra")
        except Exception as e:  # noqa: BLE001 - any other failure on import is a defect too
            if type(e).__name__ == "DuplicateFlagError":
                # Two command-line entry points define the same absl flag: never imported together in real use,
                # so this one is imported alone, in a process of its own.
                alone = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True,
                                       text=True)
                if alone.returncode == 0:
                    continue
                failures.append(f"{name}: import raised (alone)\n{alone.stderr[-2000:]}")
            else:
                failures.append(f"{name}: import raised\n{traceback.format_exc()}")
    for line in extras:
        print(f"import_all: {line}")
    for line in failures:
        print(f"import_all: FAILED {line}", file=sys.stderr)
    print(f"import_all: {count - len(failures) - len(extras)} of {count} modules imported, "
          f"{len(extras)} need an extra, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
