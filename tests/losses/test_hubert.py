"""HuBERT: masked prediction of per-utterance k-means targets looked up by cut id."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bljust.config import SSLConfig
from bljust.losses import build_ssl_loss
from bljust.losses.hubert import HubertLoss
from bljust.models.subsampling import subsampled_lengths
from bljust.ssl_targets import TargetSpec, Targets, compute_targets, load_targets
from tests.losses.conftest import (FEAT, check_autocast, check_contract, check_determinism, optimise, random_batch,
                                   tiny_encoder)

torch.set_num_threads(1)

STATS = {"loss", "acc", "acc_majority", "masked_frac", "code_usage"}
K = 12


def random_targets(ids: list[str], frames: list[int], clusters: int = K, seed: int = 0) -> Targets:
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, clusters, (n,), generator=g) for n in frames]
    offsets = torch.tensor([0] + [s.numel() for s in seqs]).cumsum(0)
    return Targets(path=Path("random.pt"), rows={c: i for i, c in enumerate(ids)}, offsets=offsets,
                   labels=torch.cat(seqs), clusters=clusters, meta={"key": "random"})


def make(targets: Targets | None = None, lens=(400, 173, 311), **kw) -> tuple[HubertLoss, list[str]]:
    ids = [f"utt{i}" for i in range(len(lens))]
    if targets is None:
        targets = random_targets(ids, subsampled_lengths(torch.tensor(lens)).tolist())
    torch.manual_seed(1)
    loss = build_ssl_loss(SSLConfig(loss="hubert", **kw), 64, FEAT, targets=targets)
    assert isinstance(loss, HubertLoss)
    return loss, ids


class WithIds(torch.nn.Module):
    """The contract helpers call loss(encoder, feats, lens, generator): bind the batch's ids."""

    def __init__(self, loss, ids):
        super().__init__()
        self.loss, self.ids = loss, ids

    def forward(self, encoder, feats, lens, generator):
        return self.loss(encoder, feats, lens, generator, ids=self.ids)


def test_contract_gradients_determinism_and_autocast():
    loss, ids = make()
    enc = tiny_encoder()
    _, _, stats = check_contract(WithIds(loss, ids), enc, *random_batch(), STATS)
    assert 0 < stats["acc_majority"] <= 1 and 0 < stats["code_usage"] <= 1
    check_determinism(WithIds(loss, ids), enc, *random_batch())
    check_autocast(WithIds(loss, ids), enc, *random_batch())
    loss_sum, count, _ = loss(enc, *random_batch(), torch.Generator().manual_seed(0), ids=ids)
    (loss_sum / count).backward()
    assert loss.head.weight.grad.abs().sum() > 0 and loss.mask_emb.grad.abs().sum() > 0
    assert enc.subsampling.conv1.weight.grad.abs().sum() > 0


def test_default_masking_covers_about_half_of_the_frames():
    loss, ids = make(lens=(1500, 1400, 1300))
    _, _, stats = loss(tiny_encoder(), *random_batch(lens=(1500, 1400, 1300)), torch.Generator().manual_seed(0),
                       ids=ids)
    assert SSLConfig(loss="hubert").masking() == (0.04, 20)
    assert 0.45 < stats["masked_frac"] < 0.7


def test_missing_targets_name_the_utterance():
    loss, ids = make()
    with pytest.raises(ValueError, match="no targets for utterance 'other'"):
        loss(tiny_encoder(), *random_batch(), torch.Generator().manual_seed(0), ids=["other", *ids[1:]])


def test_encoder_layer_is_the_one_configured():
    enc = tiny_encoder()
    loss, ids = make(layer=0)
    loss_sum, count, _ = loss(enc, *random_batch(), torch.Generator().manual_seed(0), ids=ids)
    (loss_sum / count).backward()
    grads = {n: p.grad for n, p in enc.named_parameters()}
    assert all(grads[n] is None for n in grads if n.startswith("layers.1."))  # the block above g's tap
    assert grads["layers.0.attn.qkv.weight"].abs().sum() > 0


@pytest.fixture(scope="module")
def mfcc_targets(unlabeled_corpus) -> Targets:
    spec = TargetSpec(source="mfcc", clusters=20, fit_frames=20_000)
    return load_targets(compute_targets(unlabeled_corpus, spec))


def test_learns_beyond_the_majority_class_on_speech(mfcc_targets, speech):
    enc = tiny_encoder()
    loss = build_ssl_loss(SSLConfig(loss="hubert"), 64, FEAT, targets=mfcc_targets)
    before, after, history = optimise(loss, enc, speech, steps=60)
    print(f"hubert: {before} -> {after}")
    assert after["loss"] < before["loss"] - 0.3
    assert after["acc"] > 1.5 * after["acc_majority"] and after["acc"] > before["acc"] + 0.05
    assert after["code_usage"] > 0.5
