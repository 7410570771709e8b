"""The acoustic model: log-mel front-end, shared encoder θ, supervised head φ (a CTC layer, or a
transducer's prediction network and joiner: ``model.loss``), and for the semi-supervised methods a
self-supervised head η.

The head is the one place where CTC and transducer models differ: ``loss_sum`` (f, summed over the
batch) and ``decode`` branch on it, and everything that trains or decodes goes through them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bljust.config import Config
from bljust.data.features import LogMel
from bljust.decode import beam_search_transducer, greedy_ctc, greedy_transducer
from bljust.models import build_encoder
from bljust.models.transducer import Transducer


class ASRModel(nn.Module):
    def __init__(self, cfg: Config, vocab_size: int, ssl: bool = False, ssl_targets=None):
        super().__init__()
        self.frontend = LogMel(cfg.features)
        self.encoder = build_encoder(cfg.model, cfg.features.num_mel_bins)
        self.transducer = None
        if cfg.model.loss == "rnnt":
            self.transducer = Transducer(cfg.model, self.encoder.output_dim, vocab_size)
        else:  # the attribute's name is in every CTC checkpoint's keys
            self.ctc_head = nn.Linear(self.encoder.output_dim, vocab_size)
        self.ssl = None
        if ssl:
            from bljust.losses import build_ssl_loss

            self.ssl = build_ssl_loss(cfg.ssl, self.encoder.output_dim, cfg.features.num_mel_bins, targets=ssl_targets)

    @property
    def head(self) -> nn.Module:
        """φ: the CTC layer, or the transducer's predictor and joiner."""
        return self.ctc_head if self.transducer is None else self.transducer

    def param_groups(self, lr: float) -> list[dict]:
        """θ (encoder), φ (supervised head) and η (SSL head) as separate optimiser groups."""
        groups = [{"name": "theta", "params": list(self.encoder.parameters()), "lr": lr},
                  {"name": "phi", "params": list(self.head.parameters()), "lr": lr}]
        if self.ssl is not None:
            groups.append({"name": "eta", "params": [p for p in self.ssl.parameters() if p.requires_grad], "lr": lr})
        return groups

    def inference_state_dict(self) -> dict:
        """Everything transcription needs: the SSL head is training-only."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("ssl.")}

    def output_frames(self, feature_frames: int) -> int:
        """Encoder frames for an utterance of ``feature_frames`` 10 ms frames."""
        return int(self.encoder.output_lengths(torch.tensor([feature_frames]))[0])

    def encode(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        """θ: encoder output (B, T', D) and its lengths."""
        return self.encoder(feats, feat_lens)

    def log_probs(self, hidden: Tensor) -> Tensor:
        """CTC log-posteriors (B, T', V) in float32 of an encoder output. A transducer has none: its
        distribution over units depends on the units emitted before."""
        if self.transducer is not None:
            raise ValueError("this model is a transducer (model.loss=rnnt): it has no per-frame CTC posteriors "
                             "for the word-LM beam search or a CTC alignment; use a CTC model")
        return F.log_softmax(self.ctc_head(hidden).float(), dim=-1)

    def forward(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        """CTC log-posteriors (B, T', V) in float32 and their lengths (CTC models only)."""
        hidden, lens = self.encode(feats, feat_lens)
        return self.log_probs(hidden), lens

    def loss_sum(self, hidden: Tensor, lens: Tensor, targets: list[list[int]]) -> Tensor:
        """f summed over the batch (CTC or RNN-T loss, each −log P(units | audio)); non-finite values are
        kept so the caller can see and skip them."""
        if self.transducer is not None:
            return self.transducer.loss_sum(hidden, lens, targets)
        return ctc_loss_sum(self.log_probs(hidden), lens, targets)

    def decode(self, hidden: Tensor, lens: Tensor, beam: int | None = None) -> tuple[list[list[int]], list[float]]:
        """Units and a confidence per utterance (``bljust.decode``): greedy, or for a transducer with
        ``beam`` ≥ 1 its beam search. A CTC model decodes greedily either way (its beam search is the word LM's)."""
        if self.transducer is None:
            return greedy_ctc(self.log_probs(hidden), lens)
        if not beam:
            return greedy_transducer(self.transducer, hidden, lens)
        return beam_search_transducer(self.transducer, hidden, lens, beam)


def ctc_loss_sum(log_probs: Tensor, lens: Tensor, targets: list[list[int]]) -> Tensor:
    """Summed CTC loss of a batch; non-finite values are kept so the caller can see and skip them."""
    flat = torch.tensor([t for seq in targets for t in seq], dtype=torch.long, device=log_probs.device)
    target_lens = torch.tensor([len(seq) for seq in targets], dtype=torch.long, device=log_probs.device)
    return F.ctc_loss(log_probs.transpose(0, 1), flat, lens, target_lens, blank=0,
                      reduction="sum", zero_infinity=False)
