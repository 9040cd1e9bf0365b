"""Paths that may name cloud storage: `gs://bucket/run` works wherever a local directory does.

    from oresearcher import paths
    workdir = paths.path(config.workdir)          # etils.epath.Path: pathlib's API over local disk, gs://, s3://
    ckpt_dir = paths.absolute(workdir / "checkpoints")   # local: made absolute; gs://bucket/x: unchanged

etils.epath (installed with orbax) reads and writes cloud URLs through its backends (gcsfs or tf.io.gfile);
pathlib would turn `gs://B/x` into `gs:/B/x`, and `.absolute()` of either into `/cwd/gs:/B/x`.
"""
from __future__ import annotations

import os

from etils import epath


def is_cloud(p: str | os.PathLike) -> bool:
    """True for a URL with a scheme (gs://, s3://, ...): a path that is already absolute and not on local disk."""
    return "://" in os.fspath(p)


def path(p: str | os.PathLike) -> epath.Path:
    return epath.Path(p)


def absolute(p: str | os.PathLike) -> epath.Path:
    """A local path made absolute (resolved against the working directory); a cloud URL as it is."""
    return epath.Path(p) if is_cloud(p) else epath.Path(os.path.abspath(os.fspath(p)))


def under(workdir: str | os.PathLike, p: str | os.PathLike) -> str:
    """`p` itself when absolute or a cloud URL, else `p` inside the workdir (so a preset's "policy" follows
    --config.workdir)."""
    p = os.fspath(p)
    if is_cloud(p) or os.path.isabs(p):
        return p
    return os.fspath(epath.Path(workdir) / p)


def append_text(p: epath.Path, text: str) -> None:
    """Append `text` to the file at `p` (created if absent). Object stores have no append: there the file is
    rewritten whole, which suits the small logs written this way (one line per logged step)."""
    if is_cloud(p):
        p.write_text((p.read_text(encoding="utf-8") if p.exists() else "") + text, encoding="utf-8")
    else:
        with open(os.fspath(p), "a", encoding="utf-8") as f:
            f.write(text)


def local_copy(directory: str | os.PathLike, cache_root: str | os.PathLike | None = None,
               skip_suffixes: tuple[str, ...] = ()) -> str:
    """A local directory with the files of `directory`: itself when local; for a cloud URL, a copy under
    `cache_root` ($ORESEARCHER_CACHE or ~/.cache/oresearcher)/models/<bucket>/<path>, made once (a file already
    there with the same size is kept; files ending in `skip_suffixes` are not copied). Safetensors are
    memory-mapped, which needs a local file."""
    if not is_cloud(directory):
        return os.fspath(directory)
    root = cache_root or os.environ.get("ORESEARCHER_CACHE") or os.path.expanduser("~/.cache/oresearcher")
    source = epath.Path(directory)
    local = epath.Path(root) / "models" / os.fspath(directory).split("://", 1)[1]
    local.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_dir() or f.name.endswith(skip_suffixes):
            continue
        target = local / f.name
        if not (target.exists() and target.stat().length == f.stat().length):
            f.copy(target, overwrite=True)
    return os.fspath(local)
