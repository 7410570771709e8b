"""wav2vec 2.0-style masked contrastive loss with a Gumbel-softmax product quantiser.

- Latents: the encoder's own front-end (``encoder.subsampling``, part of θ) on the UNMASKED
  input, with gradient (as wav2vec 2.0 trains its feature encoder through the quantiser too).
- Quantised targets ``q_t`` (η): the latents are standardised per dimension over the batch's
  valid frames (statistics held constant) and layer-normalised; per group of
  ``quantizer_groups``, a linear map (N(0, 1) weights, as fairseq) gives ``quantizer_entries``
  logits that select one code vector: straight-through hard Gumbel-softmax in training, at a
  temperature that decays geometrically from ``start`` to ``floor`` over the first
  ``gumbel_anneal_fraction`` of the run's own g steps (set by :meth:`Wav2Vec2Loss.set_progress`;
  wav2vec 2.0's per-update decay 0.999995 is meant for 400 k updates and would stay near ``start``
  for a run of a few thousand), argmax in eval mode. The group vectors are concatenated and
  linearly projected to ``proj_dim``. Only the masked frames are quantised (the only ones used).
- The encoder sees the input with masked spans of input frames (:func:`span_mask`) replaced by
  a learned mask embedding in input-feature space (η). Its outputs at masked encoder frames
  (:func:`subsample_mask`) are projected to ``proj_dim`` (η): ``c_t``.
- InfoNCE over ``cos(c_t, q)/temperature`` with the positive ``q_t`` and ``num_negatives``
  distractors drawn uniformly (with replacement) from the quantised targets of the OTHER
  masked frames of the same utterance (from the whole batch for an utterance with a single
  masked frame). A distractor with the same codes as the positive (an identical vector) is
  ignored, as in fairseq; a position left without any distractor is not counted (in ``count``
  either: counting it with loss 0, as fairseq does, rewards collapsing the codebook).
- Diversity loss ``(G·V − perplexity)/(G·V)``, the perplexity ``Σ_g exp(H(p̄_g))`` of the soft
  (noise-free) assignment probabilities averaged over the batch's masked frames.
  ``loss_sum = Σ InfoNCE + diversity_weight · diversity · count``, so ``loss_sum / count`` is
  the mean contrastive loss plus the weighted diversity loss.

Why the standardisation: the front-end's output shares one large direction across frames (mean
squared cosine between layer-normalised latents ≈ 0.87 at init, > 0.99 after a few steps of the
tiny test encoder at lr 2e-3 without warm-up); with layer normalisation alone nearly every
frame then lands on the same code, and the codebook collapsed to one entry per group within
5 steps on the demo corpus, diversity loss notwithstanding.

Stats: ``acc`` (positive ranked first), ``acc_chance`` (what a random scorer would get with the
distractors left after removing identical ones: mean of 1/(1+valid distractors)),
``perplexity`` (soft, as in the diversity loss; max G·V), ``code_perplexity`` (of the hard
codes), ``code_usage`` (fraction of the G·V entries chosen at least once), ``masked_frac``,
``temperature`` (Gumbel), ``diversity``, ``loss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bljust.config import SSLConfig
from bljust.losses import SSLLoss, info_nce, sample_negatives, stats_to_floats, unwrap, utterance_pools
from bljust.losses.masking import span_mask, subsample_mask
from bljust.models.subsampling import valid_mask


def gumbel_temperature(schedule: tuple[float, float], anneal_fraction: float, g_step: int, g_steps: int) -> float:
    """``start · (floor/start)^(g_step / (anneal_fraction · g_steps))``, held at ``floor`` afterwards."""
    start, floor = schedule
    progress = min(g_step / max(anneal_fraction * g_steps, 1.0), 1.0)
    return start * (floor / start) ** progress


class GumbelQuantizer(nn.Module):
    """Product quantiser: G groups × V entries, straight-through hard Gumbel-softmax in training."""

    def __init__(self, input_dim: int, groups: int, entries: int, out_dim: int):
        super().__init__()
        self.groups, self.entries = groups, entries
        group_dim = max(1, -(-out_dim // groups))
        self.weight_proj = nn.Linear(input_dim, groups * entries)
        # As fairseq: N(0, 1) weights on layer-normalised input give logits of std ~sqrt(input_dim),
        # so the codes follow the input rather than the Gumbel noise from the first step.
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        self.codevectors = nn.Parameter(torch.empty(groups, entries, group_dim).uniform_())
        self.project_q = nn.Linear(groups * group_dim, out_dim)

    def forward(self, x: Tensor, temperature: Tensor,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """x: (M, input_dim) → q (M, out_dim), codes (M, G) long, soft probabilities (M, G, V) float32.

        Gumbel noise is drawn from ``generator`` in training (hard argmax in eval mode).
        """
        m = x.size(0)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = F.layer_norm(x.float(), x.shape[-1:])  # scale-free input (fairseq normalises its features too)
            logits = self.weight_proj(x).view(m, self.groups, self.entries)
            probs = logits.softmax(dim=-1)
            if self.training:
                u = torch.rand(logits.shape, generator=generator).to(x.device)
                gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
                soft = ((logits + gumbel) / temperature.float()).softmax(dim=-1)
                codes = soft.argmax(dim=-1)
                hard = F.one_hot(codes, self.entries).to(soft.dtype)
                onehot = hard - soft.detach() + soft  # straight-through
            else:
                codes = logits.argmax(dim=-1)
                onehot = F.one_hot(codes, self.entries).to(logits.dtype)
            q = torch.einsum("mgv,gvd->mgd", onehot, self.codevectors.float()).flatten(1)
            return self.project_q(q), codes, probs


class Wav2Vec2Loss(SSLLoss):
    def __init__(self, cfg: SSLConfig, encoder_dim: int, feat_dim: int):
        super().__init__()
        self.cfg = cfg
        self.quantizer = GumbelQuantizer(encoder_dim, cfg.quantizer_groups, cfg.quantizer_entries, cfg.proj_dim)
        self.mask_emb = nn.Parameter(torch.empty(feat_dim).normal_(0.0, 0.1))
        self.final_proj = nn.Linear(encoder_dim, cfg.proj_dim)
        # Set by set_progress (a function of the g step); a buffer so that checkpoints carry it too.
        self.register_buffer("gumbel_temperature", torch.tensor(float(cfg.gumbel_temperature[0])))

    def set_progress(self, g_step: int, g_steps: int) -> None:
        """Anneal the Gumbel temperature over the run's own g steps (:func:`gumbel_temperature`)."""
        self.gumbel_temperature.fill_(gumbel_temperature(self.cfg.gumbel_temperature, self.cfg.gumbel_anneal_fraction,
                                                         g_step, g_steps))

    def forward(self, encoder: nn.Module, feats: Tensor, lens: Tensor, generator: torch.Generator,
                ids: list[str] | None = None) -> tuple[Tensor, Tensor, dict[str, float]]:
        b, t, f = feats.shape
        device = feats.device
        lens = lens.to(device)
        in_mask = span_mask(lens, t, *self.cfg.masking(), generator)

        latent, _ = unwrap(encoder).subsampling(feats, lens)  # (B, T', D), unmasked, with gradient
        masked_feats = torch.where(in_mask[:, :, None], self.mask_emb.to(feats.dtype), feats)
        hidden, out_lens = encoder(masked_feats, lens, layer=self.cfg.layer)
        t_out = hidden.size(1)
        valid = valid_mask(out_lens, t_out)
        mask = subsample_mask(in_mask, t_out, out_lens)  # (B, T')

        # Standardise the latents per dimension over the batch's valid frames (statistics held
        # constant): the front-end's output shares a large direction across frames, which would
        # otherwise send every frame to the same code.
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            lat_valid = latent[valid].float()
            mean = lat_valid.mean(dim=0)
            std = lat_valid.std(dim=0, unbiased=False) + 1e-5 if lat_valid.size(0) > 1 else torch.ones_like(mean)
        q, codes, probs = self.quantizer((latent[mask].float() - mean) / std, self.gumbel_temperature,
                                         generator)  # (M, P), (M, G), (M, G, V)
        with torch.autocast(device_type=device.type, enabled=False):
            c = self.final_proj(hidden[mask].float())  # (M, P)
        m = q.size(0)

        # Distractors: other masked frames of the same utterance (row-major order keeps them contiguous).
        utt_offset, utt_size = utterance_pools(mask)  # (M,)
        self_idx = torch.arange(m, device=device)
        own = utt_size >= 2
        pool_offset = torch.where(own, utt_offset, torch.zeros_like(utt_offset))
        pool_size = torch.where(own, utt_size, torch.full_like(utt_size, m))
        neg_idx, neg_valid = sample_negatives(pool_offset, pool_size, self_idx, self.cfg.num_negatives, generator)
        neg_valid = neg_valid & (codes[neg_idx] != codes[:, None, :]).any(dim=-1)
        loss, correct = info_nce(c, q, q[neg_idx], self.cfg.temperature, neg_valid)
        counted = neg_valid.any(dim=1)
        contrastive_sum = torch.where(counted, loss, torch.zeros_like(loss)).sum()
        count = counted.sum().to(torch.float32)

        gv = self.quantizer.groups * self.quantizer.entries
        avg_probs = probs.mean(dim=0)  # (G, V); NaN-free only when m > 0
        if m > 0:
            perplexity = torch.exp(-(avg_probs * torch.log(avg_probs + 1e-7)).sum(dim=-1)).sum()
        else:
            perplexity = probs.sum() + float(gv)  # zero-size sum keeps the graph; no diversity penalty
        diversity = (gv - perplexity) / gv
        loss_sum = contrastive_sum + self.cfg.diversity_weight * diversity * count

        with torch.no_grad():
            used = torch.zeros((self.quantizer.groups, self.quantizer.entries), device=device)
            used.scatter_add_(1, codes.t(), torch.ones_like(codes.t(), dtype=used.dtype))
            hard_p = used / used.sum(dim=1, keepdim=True).clamp(min=1)
            code_ppl = torch.exp(-(hard_p * torch.log(hard_p + 1e-7)).sum(dim=-1)).sum()
            stats = {
                "loss": loss_sum.detach() / count.clamp(min=1),
                "acc": (correct & counted).float().sum() / count.clamp(min=1),
                "acc_chance": (1.0 / (1.0 + neg_valid.sum(dim=1).float()))[counted].sum() / count.clamp(min=1),
                "perplexity": perplexity.detach(),
                "code_perplexity": code_ppl,
                "code_usage": (used > 0).float().mean(),
                "masked_frac": mask.sum() / valid.sum().clamp(min=1),
                "temperature": self.gumbel_temperature,
                "diversity": diversity.detach(),
            }
        return loss_sum, count, stats_to_floats(stats)
