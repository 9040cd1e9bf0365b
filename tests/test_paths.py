"""Cloud URLs pass through the path handling of workdirs and checkpoints unchanged; local paths take the same code."""
import os

from oresearcher import checkpoint, paths


def test_cloud_urls_stay_urls():
    for url in ("gs://bucket/run/checkpoints", "s3://bucket/x"):
        assert str(paths.absolute(url)) == url        # pathlib would give /cwd/gs:/bucket/run/checkpoints
    workdir = paths.path("gs://bucket/run")
    assert str(paths.absolute(workdir / "checkpoints")) == "gs://bucket/run/checkpoints"
    assert paths.is_cloud(workdir) and not paths.is_cloud("/tmp/run")


def test_local_paths_through_the_same_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(paths.absolute("run/checkpoints")) == str(tmp_path / "run" / "checkpoints")
    ckpt = checkpoint.Checkpointer(paths.path("run") / "checkpoints")
    assert str(ckpt.directory) == os.path.join(str(tmp_path), "run", "checkpoints")
    ckpt.close()
    log = paths.path("run") / "episodes.jsonl"
    paths.append_text(log, "é 1\n")
    paths.append_text(log, "2\n")
    assert log.read_text(encoding="utf-8") == "é 1\n2\n"


def test_a_local_model_directory_is_used_in_place(tmp_path):
    assert paths.local_copy(tmp_path) == str(tmp_path)
    assert paths.local_copy(paths.path(tmp_path), skip_suffixes=(".safetensors",)) == str(tmp_path)


def test_under_puts_relative_paths_in_the_workdir():
    from oresearcher import paths

    assert paths.under("/runs/a", "policy") == "/runs/a/policy"
    assert paths.under("gs://bucket/run", "policy") == "gs://bucket/run/policy"
    assert paths.under("/runs/a", "/exports/p") == "/exports/p"              # absolute: as given
    assert paths.under("/runs/a", "gs://bucket/p") == "gs://bucket/p"        # a URL: as given
