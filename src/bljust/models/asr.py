"""The acoustic model: log-mel front-end, shared encoder θ, CTC head φ, and for the
semi-supervised methods a self-supervised head η."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bljust.config import Config
from bljust.data.features import LogMel
from bljust.models import build_encoder


class CTCModel(nn.Module):
    def __init__(self, cfg: Config, vocab_size: int, ssl: bool = False, ssl_targets=None):
        super().__init__()
        self.frontend = LogMel(cfg.features)
        self.encoder = build_encoder(cfg.model, cfg.features.num_mel_bins)
        self.ctc_head = nn.Linear(self.encoder.output_dim, vocab_size)
        self.ssl = None
        if ssl:
            from bljust.losses import build_ssl_loss

            self.ssl = build_ssl_loss(cfg.ssl, self.encoder.output_dim, cfg.features.num_mel_bins, targets=ssl_targets)

    def param_groups(self, lr: float) -> list[dict]:
        """θ (encoder), φ (CTC head) and η (SSL head) as separate optimiser groups."""
        groups = [{"name": "theta", "params": list(self.encoder.parameters()), "lr": lr},
                  {"name": "phi", "params": list(self.ctc_head.parameters()), "lr": lr}]
        if self.ssl is not None:
            groups.append({"name": "eta", "params": [p for p in self.ssl.parameters() if p.requires_grad], "lr": lr})
        return groups

    def inference_state_dict(self) -> dict:
        """Everything transcription needs: the SSL head is training-only."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("ssl.")}

    def output_frames(self, feature_frames: int) -> int:
        """Encoder frames for an utterance of ``feature_frames`` 10 ms frames."""
        return int(self.encoder.output_lengths(torch.tensor([feature_frames]))[0])

    def forward(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Log-posteriors (B, T', V) in float32 and their lengths."""
        hidden, lens = self.encoder(feats, feat_lens)
        return F.log_softmax(self.ctc_head(hidden).float(), dim=-1), lens


def ctc_loss_sum(log_probs: Tensor, lens: Tensor, targets: list[list[int]]) -> Tensor:
    """Summed CTC loss of a batch; non-finite values are kept so the caller can see and skip them."""
    flat = torch.tensor([t for seq in targets for t in seq], dtype=torch.long, device=log_probs.device)
    target_lens = torch.tensor([len(seq) for seq in targets], dtype=torch.long, device=log_probs.device)
    return F.ctc_loss(log_probs.transpose(0, 1), flat, lens, target_lens, blank=0,
                      reduction="sum", zero_infinity=False)
