"""``bljust probe``: a linear CTC head on a frozen encoder, on the tiny corpus.

Whether a trained encoder probes better than a random one is not guaranteed on a few minutes of
audio and a few training steps, so these tests check what the probe guarantees: its head learns,
the encoder stays as it was, the result is reproducible, and the random-init baseline is another
encoder with the run's units and feature statistics.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from bljust.config import load_config
from bljust.methods import supervised
from bljust.probe import ProbeConfig, load_encoder, probe_run
from tests.conftest import REPO, TINY

STEPS = 40  # enough for the head's loss to fall well below its start, a fraction of a second on the tiny corpus


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    """A supervised run of the tiny recipe (4 steps)."""
    run = tmp_path_factory.mktemp("probe") / "run"
    supervised.train(load_config(TINY), tiny_corpus, run)
    return run


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _without_seconds(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "seconds"}


def test_the_head_learns_and_the_encoder_stays_frozen(trained, tiny_corpus, monkeypatch):
    import bljust.probe as probe

    loaded, original = {}, probe.load_encoder

    def spy(*args, **kwargs):
        loaded["model"], *rest = original(*args, **kwargs)
        return (loaded["model"], *rest)

    monkeypatch.setattr(probe, "load_encoder", spy)
    before, rng = _sha(trained / "best.pt"), torch.get_rng_state()
    result = probe_run(trained, tiny_corpus, ProbeConfig(steps=STEPS))
    assert result["train"]["loss_end"] < 0.8 * result["train"]["loss_start"]
    assert result["encoder"] == "trained" and result["method"] == "supervised" and result["train"]["utterances"] > 0
    assert 0 <= result["dev"]["cer"] and result["dev"]["num_utterances"] > 0
    assert result["settings"]["steps"] == STEPS and result["seconds"]["total"] > 0
    # the encoder the head was trained on is the file's, untouched; the file too; the caller's RNG too
    weights = torch.load(trained / "best.pt", weights_only=True)["model"]
    state = loaded["model"].state_dict()
    assert all(torch.equal(state[k], weights[k]) for k in weights)
    assert not any(p.requires_grad for p in loaded["model"].parameters())
    assert _sha(trained / "best.pt") == before and torch.equal(torch.get_rng_state(), rng)


def test_probe_is_deterministic(trained, tiny_corpus):
    first, second = (probe_run(trained, tiny_corpus, ProbeConfig(steps=STEPS)) for _ in range(2))
    assert json.dumps(_without_seconds(first)) == json.dumps(_without_seconds(second))
    other_seed = probe_run(trained, tiny_corpus, ProbeConfig(steps=STEPS, seed=1))
    assert other_seed["train"]["loss_start"] != first["train"]["loss_start"]


def test_random_init_is_another_encoder_with_the_runs_units_and_statistics(trained, tiny_corpus):
    model, tokenizer, _, _, _ = load_encoder(trained, torch.device("cpu"))
    random_model, random_tokenizer, _, _, _ = load_encoder(trained, torch.device("cpu"), random_init=True)
    assert random_tokenizer.state_dict() == tokenizer.state_dict()
    assert torch.equal(random_model.frontend.mean, model.frontend.mean)  # global normalisation, as the run measured
    assert not torch.equal(random_model.frontend.mean, torch.zeros_like(model.frontend.mean))
    enc, random_enc = model.encoder.state_dict(), random_model.encoder.state_dict()
    assert any(not torch.equal(enc[k], random_enc[k]) for k in enc)
    # seeded: the same random encoder every time, another one for another seed
    again = load_encoder(trained, torch.device("cpu"), random_init=True)[0].encoder.state_dict()
    seeded = load_encoder(trained, torch.device("cpu"), random_init=True, seed=1)[0].encoder.state_dict()
    assert all(torch.equal(again[k], random_enc[k]) for k in enc)
    assert any(not torch.equal(seeded[k], random_enc[k]) for k in enc)

    rand = probe_run(trained, tiny_corpus, ProbeConfig(steps=STEPS, random_init=True))
    real = probe_run(trained, tiny_corpus, ProbeConfig(steps=STEPS))
    assert rand["encoder"] == "random init" and rand["settings"]["random_init"] is True
    assert rand["train"]["loss_start"] != real["train"]["loss_start"]
    assert rand["train"]["loss_end"] < rand["train"]["loss_start"]
    assert rand["train"]["utterances"] == real["train"]["utterances"]


def test_layer_reads_a_block_and_names_a_missing_one(trained, tiny_corpus):
    # the tiny recipe's encoder has one block: block 0 is its final output
    last = probe_run(trained, tiny_corpus, ProbeConfig(steps=5))
    block0 = probe_run(trained, tiny_corpus, ProbeConfig(steps=5, layer=0))
    assert block0["dev"] == last["dev"] and block0["settings"]["layer"] == 0
    with pytest.raises(ValueError, match="layer 1 does not exist"):
        probe_run(trained, tiny_corpus, ProbeConfig(steps=5, layer=1))


def test_a_file_that_is_not_a_run_is_refused_with_the_reason(tmp_path, tiny_corpus):
    tensors = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(3)}, tensors)
    with pytest.raises(ValueError, match=r"weights\.pt is not a bljust model file: it lacks model, config, tokenizer"):
        probe_run(tensors, tiny_corpus)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*notes\.pt"):
        probe_run(text, tiny_corpus)
    with pytest.raises(FileNotFoundError, match="holds no trained model"):
        probe_run(tmp_path, tiny_corpus)


def test_probe_command_writes_json_and_prints_one_line(trained, tiny_corpus, tmp_path):
    def bljust(*args):
        return subprocess.run([sys.executable, "-m", "bljust", "probe", *args], capture_output=True, text=True,
                              cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)

    out = tmp_path / "probe.json"
    r = bljust(str(trained), "--data", str(tiny_corpus), "--steps", "5", "--random-init", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(r.stdout.splitlines()) == 1 and "random init encoder" in r.stdout and "dev CER" in r.stdout
    result = json.loads(out.read_text())
    assert result["settings"]["steps"] == 5 and result["settings"]["random_init"] is True
    assert set(result) >= {"dev", "train", "settings", "seconds", "model"}
    r = bljust(str(out), "--data", str(tiny_corpus))
    assert r.returncode == 2 and "bljust: error: cannot read checkpoint" in r.stderr and str(out) in r.stderr
