"""The embedded offline evaluation set: deterministic, built from the corpus as documented."""
import json

import pytest

from experiments.eval import make_embedded as me


def test_key_points_are_lead_plus_most_salient_in_text_order():
    text = ("Alpha is a small village in the north of the country. Its people farm wheat. "
            "It was founded in 1821 by Johann Weber and Maria Koch after the Napoleonic Wars ended. "
            "The village has a church and a school that serve the surrounding farms.")
    # "Its people farm wheat." is shorter than 40 characters; of the other two, the 1821 sentence scores
    # 2*1 (figure) + 5 capitalised words capped at 4 + content words/4 > the church sentence.
    assert me.key_points(text, 2) == [
        "Alpha is a small village in the north of the country.",
        "It was founded in 1821 by Johann Weber and Maria Koch after the Napoleonic Wars ended."]
    assert me.key_points(text, 3)[2].startswith("The village has a church")


def test_sentence_split_keeps_abbreviations_before_lower_case():
    assert me.split_sentences("It was built c. 2600 BC by workers. Then it fell.") == [
        "It was built c. 2600 BC by workers.", "Then it fell."]


def test_missing_page_is_named():
    with pytest.raises(ValueError, match="not in the corpus"):
        me.build({"Rococo": ("u", "Rococo is a style of art that emerged in France in the 1730s.")})


@pytest.fixture(scope="module")
def built():
    return me.build()


def test_build_is_deterministic_and_matches_the_committed_file(built):
    again = me.build()
    assert me.dumps(built) == me.dumps(again)
    assert me.DEFAULT_OUT.read_text(encoding="utf-8") == me.dumps(built), \
        "experiments/data/embedded_eval.jsonl is stale: run python -m experiments.eval.make_embedded"


def test_set_shape_and_key_points_come_from_the_pages(built):
    from synth import corpus

    text_of = {p.url: p.text for p in corpus.load().pages}
    assert len(built) == 30 and len({r["id"] for r in built}) == 30
    assert len({r["topic"] for r in built}) == 11
    for row in built:
        assert 2 <= len(row["pages"]) <= 4 and row["language"] == "en"
        assert row["prompt"].endswith(("?", "."))
        urls = {p["url"] for p in row["pages"]}
        assert len(row["key_points"]) >= 4
        for kp in row["key_points"]:
            assert kp["url"] in urls
            assert kp["text"] in " ".join(text_of[kp["url"]].split()), "key points are verbatim extracts"
            assert me.MIN_CHARS <= len(kp["text"]) <= me.MAX_CHARS
    rows = [json.loads(line) for line in me.DEFAULT_OUT.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [f"emb-{n:02d}" for n in range(1, 31)]


# ------------------------------------------------------------------------ the table command, 2 questions
@pytest.fixture(scope="module")
def tiny_policies(tmp_path_factory):
    """An SFT-like HF export and an RL-like workdir (config.json + an orbax checkpoint of other weights), both of
    the tiny preset with SmolLM2's tokenizer: the two layouts `python -m oresearcher.train` leaves behind."""
    import dataclasses

    import numpy as np
    from flax import nnx

    from oresearcher.checkpoint import Checkpointer
    from oresearcher.model import PRESETS, Decoder, load_gguf, save_hf

    root = tmp_path_factory.mktemp("policies")
    cfg = dataclasses.replace(PRESETS["tiny"], vocab_size=49152)
    tokenizer = load_gguf()[1]
    sft = root / "sft-export"
    save_hf(Decoder(cfg, rngs=nnx.Rngs(0)), str(sft))
    tokenizer.save(str(sft))
    rl = root / "rl-workdir"
    rl.mkdir()
    (rl / "config.json").write_text(json.dumps({"stage": "rl", "model": "tiny", "seed": 0, "tokenizer": str(sft),
                                                "model_overrides": {"vocab_size": 49152}, "export_dir": ""}))
    trained = Decoder(cfg, rngs=nnx.Rngs(7))
    ckpt = Checkpointer(rl / "checkpoints")
    ckpt.save(4, {"params": nnx.to_pure_dict(nnx.state(trained, nnx.Param)), "optimizer": {"count": np.zeros(())}},
              wait=True)
    ckpt.close()
    return sft, rl, trained


def test_find_policy_reads_the_training_layouts(tiny_policies, tmp_path):
    from experiments.eval.embedded import PolicyMissing, find_policy

    sft, rl, _ = tiny_policies
    assert find_policy("sft", str(sft)) == ("hf", sft)
    assert find_policy("rl", str(rl)) == ("rl_checkpoint", rl)
    warm = tmp_path / "warm_start" / "policy"        # an RL workdir whose warm start exported the SFT policy
    warm.mkdir(parents=True)
    for f in sft.iterdir():
        (warm / f.name).write_bytes(f.read_bytes())
    assert find_policy("sft", str(tmp_path)) == ("hf", warm)
    with pytest.raises(PolicyMissing, match=r"not available: point --rl at .*no RL export and no checkpoint"):
        find_policy("rl", str(tmp_path))


def test_rl_checkpoint_parameters_replace_the_starting_model(tiny_policies):
    import jax
    import numpy as np
    from flax import nnx

    from experiments.eval.embedded import load_policy

    _, rl, trained = tiny_policies
    model, tokenizer = load_policy("rl_checkpoint", rl)
    want = nnx.to_pure_dict(nnx.state(trained, nnx.Param))
    got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert tokenizer.vocab_size == 49152


def test_command_prints_one_table_with_every_row(tiny_policies, tmp_path, capsys):
    from experiments.eval import embedded

    sft, rl, _ = tiny_policies
    out = tmp_path / "embedded.json"
    rc = embedded.main(["--limit", "2", "--systems", "teacher,sft,rl", "--sft", str(sft), "--rl", str(rl),
                        "--max-turns", "1", "--turn-tokens", "8", "--max-tokens", "640",
                        "--observation-tokens", "32", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("Embedded evaluation: 2 questions")
    table = printed[1:]
    assert [line.split()[0] for line in table] == ["system", "teacher", "sft", "rl"]
    rows = {r["system"]: r for r in json.loads(out.read_text())["rows"]}
    assert all(rows[s]["status"] == "ok" for s in ("teacher", "sft", "rl")), rows
    teacher = table[1].split()
    assert teacher[1] == f"{rows['teacher']['judge']:.1f}" and teacher[6] == f"{rows['teacher']['kpr']:.1f}"
    assert rows["teacher"]["reports"] == 2 and rows["teacher"]["kpr"] > 0
    for system in ("sft", "rl"):              # the random tiny policies ran their rollouts and were scored
        assert (tmp_path / "work" / f"{system}.jsonl").read_text().count("\n") == 2
        assert rows[system]["judge"] is not None


def test_missing_policies_say_how_to_make_them(tmp_path, capsys):
    from experiments.eval import embedded

    empty = tmp_path / "nothing-here"
    empty.mkdir()
    rc = embedded.main(["--limit", "1", "--systems", "sft,rl", "--sft", str(empty), "--rl", str(empty),
                        "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "e.json")])
    assert rc == 0
    table = capsys.readouterr().out.splitlines()[1:]
    assert table[1].startswith("sft") and "not available: point --sft at an HF export" in table[1]
    assert table[2].startswith("rl") and "not available: point --rl at an HF export" in table[2]
