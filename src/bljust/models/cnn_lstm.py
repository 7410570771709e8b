"""CNN-BiLSTM encoder.

Front-end :class:`~bljust.models.subsampling.Conv2dSubsampling4` (×4 in time, projected to
``cfg.d_model``), then a bidirectional ``nn.LSTM`` of ``cfg.num_layers`` layers with
``cfg.lstm_hidden`` units per direction (dropout ``cfg.dropout`` between layers) over packed
sequences, then a Linear from ``2·lstm_hidden`` to ``cfg.d_model``.

Packing makes each sequence's recurrence stop at its own length, so padding and batch
composition do not change a sequence's output. Padded output frames are returned as zeros.

The LSTM runs in float32 with autocast disabled (its input is cast up): recurrent state in
low precision drifts over long utterances, and bf16 RNN kernels are not available everywhere.
The convolutions and linear layers around it still follow autocast.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from bljust.config import ModelConfig
from bljust.models.dropout import Dropout
from bljust.models.subsampling import Conv2dSubsampling4, valid_mask


class CnnLstmEncoder(nn.Module):
    """(B, T, input_dim) log-mel features → (B, T', cfg.d_model), T' = ((T-1)//2 - 1)//2."""

    def __init__(self, cfg: ModelConfig, input_dim: int):
        super().__init__()
        self.cfg = cfg
        self.input_dim = input_dim
        self.output_dim = cfg.d_model
        self.subsampling = Conv2dSubsampling4(input_dim, cfg.subsampling_channels, cfg.d_model, cfg.dropout)
        self.lstm = nn.LSTM(cfg.d_model, cfg.lstm_hidden, num_layers=cfg.num_layers, batch_first=True,
                            bidirectional=True, dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.dropout = Dropout(cfg.dropout)
        self.out = nn.Linear(2 * cfg.lstm_hidden, cfg.d_model)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return self.subsampling.output_lengths(lengths)

    def forward(self, x: Tensor, lengths: Tensor, layer: int = -1) -> tuple[Tensor, Tensor]:
        """``layer`` must be -1 (the final output): the stacked ``nn.LSTM`` exposes no inner layer."""
        if layer not in (-1, self.cfg.num_layers - 1):
            raise ValueError(f"the cnn_lstm encoder gives only its final output (layer -1), not layer {layer}")
        x, out_lengths = self.subsampling(x, lengths)
        t = x.size(1)
        # pack_padded_sequence rejects empty sequences; a too-short input runs one (garbage) frame
        # and its output is masked below.
        packed = pack_padded_sequence(x.float(), out_lengths.clamp(min=1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        with torch.autocast(device_type=x.device.type, enabled=False):
            y, _ = self.lstm(packed)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=t)
        y = self.out(self.dropout(y))
        return y.masked_fill(~valid_mask(out_lengths, t)[:, :, None], 0.0), out_lengths
