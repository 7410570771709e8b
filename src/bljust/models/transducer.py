"""The transducer head φ (``model.loss: rnnt``): a prediction network over the units emitted so far and
a joiner that combines it with each encoder frame into a distribution over the units, blank (0) included.

Both predictors read the units through an embedding whose blank row is zero and untrained (icefall's
``padding_idx=blank``): a hypothesis starts from blank, and the stateless predictor's missing left
context before the first unit is zeros, so "blank" and "nothing yet" are the same input in training
and in decoding.

Decoding steps a predictor one unit at a time through ``init_state`` / ``step``; a state is a tuple of
tensors with the hypotheses on dimension 0, so that a beam search can reorder (``select_state``) and
mix (``where_state``) states without knowing the predictor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from bljust.config import ModelConfig
from bljust.models.rnnt_loss import lattice_log_probs, rnnt_loss_sum

State = tuple[Tensor, ...]


class StatelessPredictor(nn.Module):
    """icefall's stateless prediction network: embeddings of the last ``context_size`` units, a grouped
    1-D convolution over them (no padding, so it sees exactly that context) and a ReLU."""

    def __init__(self, vocab_size: int, dim: int, context_size: int):
        super().__init__()
        self.context_size = context_size
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.conv = (nn.Conv1d(dim, dim, context_size, groups=dim // 4, bias=False) if context_size > 1
                     else None)

    def _read(self, emb: Tensor) -> Tensor:
        """(N, L + context_size − 1, dim) embeddings → (N, L, dim) outputs."""
        if self.conv is not None:
            emb = self.conv(emb.transpose(1, 2)).transpose(1, 2)
        return F.relu(emb)

    def forward(self, units: Tensor) -> Tensor:
        """(N, L) units, the first of them blank → (N, L, dim): output i has read units ≤ i."""
        return self._read(F.pad(self.embedding(units), (0, 0, self.context_size - 1, 0)))

    def init_state(self, n: int, device: torch.device) -> State:
        """The units before the first: context_size − 1 blanks (zero embeddings, like forward's padding)."""
        return (torch.zeros(n, self.context_size - 1, dtype=torch.long, device=device),)

    def step(self, units: Tensor, state: State) -> tuple[Tensor, State]:
        """One unit per hypothesis (N,) → its output (N, dim) and the next state."""
        context = torch.cat((state[0], units[:, None]), dim=1)
        return self._read(self.embedding(context))[:, -1], (context[:, 1:],)


class LstmPredictor(nn.Module):
    """A one-layer LSTM prediction network over every unit emitted so far (the original transducer's)."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)

    # The LSTM runs in float32 outside autocast, as the cnn_lstm encoder's does: oneDNN has no bf16 LSTM on CPUs
    # without AVX512 (forced bf16 failed there), and over U + 1 units it costs little.
    def forward(self, units: Tensor) -> Tensor:
        with torch.autocast(device_type=units.device.type, enabled=False):
            return self.lstm(self.embedding(units).to(self.lstm.weight_ih_l0.dtype))[0]

    def init_state(self, n: int, device: torch.device) -> State:
        zeros = torch.zeros(n, 1, self.lstm.hidden_size, device=device)
        return zeros, zeros.clone()

    def step(self, units: Tensor, state: State) -> tuple[Tensor, State]:
        dtype = self.lstm.weight_ih_l0.dtype
        h, c = (s.transpose(0, 1).to(dtype).contiguous() for s in state)  # nn.LSTM keeps layers first
        with torch.autocast(device_type=units.device.type, enabled=False):
            out, (h, c) = self.lstm(self.embedding(units).to(dtype)[:, None], (h, c))
        return out[:, 0], (h.transpose(0, 1), c.transpose(0, 1))


def select_state(state: State, index: Tensor) -> State:
    return tuple(s[index] for s in state)


def where_state(mask: Tensor, a: State, b: State) -> State:
    """Per hypothesis: ``a`` where ``mask`` (N,), else ``b``."""
    return tuple(torch.where(mask.view(-1, *[1] * (x.dim() - 1)), x, y.to(x.dtype)) for x, y in zip(a, b))


class Joiner(nn.Module):
    """out(tanh(enc_proj(encoder frame) + pred_proj(predictor output))). The projections are applied
    once per frame and once per predictor output (``project_*``), and ``forward`` adds them with
    broadcasting, so a (T, U+1) grid never holds more than the joiner's width before the output layer."""

    def __init__(self, encoder_dim: int, predictor_dim: int, dim: int, vocab_size: int):
        super().__init__()
        self.enc_proj = nn.Linear(encoder_dim, dim)
        self.pred_proj = nn.Linear(predictor_dim, dim, bias=False)  # enc_proj's bias serves both
        self.out = nn.Linear(dim, vocab_size)

    def forward(self, enc: Tensor, pred: Tensor) -> Tensor:
        """Projected encoder and predictor outputs, broadcastable → logits (..., vocab)."""
        return self.out(torch.tanh(enc + pred))


class Transducer(nn.Module):
    """φ of a transducer model: prediction network and joiner; its loss (``loss_sum``) is the RNN-T loss."""

    def __init__(self, cfg: ModelConfig, encoder_dim: int, vocab_size: int):
        super().__init__()
        self.predictor = (StatelessPredictor(vocab_size, cfg.predictor_dim, cfg.context_size)
                          if cfg.predictor == "stateless" else LstmPredictor(vocab_size, cfg.predictor_dim))
        self.joiner = Joiner(encoder_dim, cfg.predictor_dim, cfg.joiner_dim, vocab_size)
        self.chunk = cfg.rnnt_chunk

    def _lattice(self, enc: Tensor, pred: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """One chunk: projected frames (n, T, J) × projected predictor outputs (n, U+1, J) → lattice log-probs."""
        return lattice_log_probs(self.joiner(enc[:, :, None], pred[:, None]), labels)

    def loss_sum(self, hidden: Tensor, lens: Tensor, targets: list[list[int]]) -> Tensor:
        """Summed RNN-T loss of a batch: encoder output (B, T, D) with its lengths, and each utterance's units.

        The joint is computed ``model.rnnt_chunk`` utterances at a time (padded to the chunk's longest
        transcript and the batch's frames) and, when gradients are on, checkpointed: the backward pass
        recomputes one chunk's joint at a time instead of keeping every chunk's, so the joint's memory is
        that of one chunk. The recursion runs once over the whole batch in float32.
        """
        device = hidden.device
        units = [len(t) for t in targets]
        labels = torch.zeros(len(targets), max(units), dtype=torch.long)
        for i, t in enumerate(targets):
            labels[i, :len(t)] = torch.tensor(t, dtype=torch.long)
        labels = labels.to(device)
        enc = self.joiner.enc_proj(hidden)
        pred = self.joiner.pred_proj(self.predictor(F.pad(labels, (1, 0))))  # after a leading blank
        blanks, nexts = [], []
        for i in range(0, len(targets), self.chunk):
            j, u = i + self.chunk, max(units[i:i + self.chunk])
            args = (enc[i:j], pred[i:j, :u + 1], labels[i:j, :u])
            if torch.is_grad_enabled():
                blank_lp, label_lp = checkpoint(self._lattice, *args, use_reentrant=False)
            else:
                blank_lp, label_lp = self._lattice(*args)
            pad = max(units) - u
            blanks.append(F.pad(blank_lp, (0, pad)))
            nexts.append(F.pad(label_lp, (0, pad)))
        return rnnt_loss_sum(torch.cat(blanks), torch.cat(nexts), lens,
                             torch.tensor(units, dtype=torch.long, device=device))
