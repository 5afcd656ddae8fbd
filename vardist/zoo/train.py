"""Train the toy zoo from a seed: the digit judge, then the VQVAE, then the VAR transformer.

    python -m vardist.zoo.train --out DIR [--seed 0] [--judge-steps N] [--vae-steps N] [--var-steps N]

Everything here is training-only (losses, straight-through quantisation, dead-code restarts,
initialisation); the models are vardist's own VAR modules (`vardist.models.var`), so the shipped
toy model runs through exactly the code the real VAR checkpoints do. DIR receives the same files
that ship in `vardist/zoo/weights/` plus `train_log.jsonl` (one JSON line per logged step).
Defaults reproduce the shipped weights on 2 CPU cores in about 10-15 minutes.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from vardist.models.var.transformer import VARConfig, VARTransformer
from vardist.models.var.vqvae import VQVAE, VectorQuantizer, VQVAEConfig
from vardist.zoo.data import IMAGE_SIZE, NUM_CLASSES, Digits, augment, batches, load_digits
from vardist.zoo.judge import DigitJudge
from vardist.zoo.loop import Log, TrainLog, lr_at, run_steps, set_lr, shuffled_batches
from vardist.zoo.specs import CONFIG_FILE, JUDGE_FILE, VAE_FILE, VAR_FILE

# The toy architecture: 16x16 digits, a 4x4 latent quantised over 4 scales (30 tokens).
# GroupNorm with 32 groups sets the minimum width (ch = 32).
TOY_VQVAE = VQVAEConfig(vocab_size=256, z_channels=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                        using_sa=False, using_mid_sa=False, share_quant_resi=4,
                        patch_nums=(1, 2, 3, 4))
TOY_VAR = VARConfig(depth=3, embed_dim=96, num_heads=2, vocab_size=256, Cvae=32,
                    num_classes=NUM_CLASSES, patch_nums=(1, 2, 3, 4))


@dataclass
class TrainConfig:
    seed: int = 0
    judge_steps: int = 300
    judge_batch: int = 128
    judge_lr: float = 3e-3
    vae_steps: int = 600
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vq_beta: float = 0.25           # commitment weight, as VAR's VQVAE
    dead_code_every: int = 50       # restart codes unused for this many steps
    var_steps: int = 1200
    var_batch: int = 64
    var_lr: float = 1.5e-3
    var_wd: float = 0.05
    cond_drop: float = 0.1          # labels replaced by the null class, so CFG has an unconditional model
    var_augment_copies: int = 8     # augmented copies of the train set, tokenised once
    log_every: int = 50
    threads: int = 1               # 1 is much faster than 2 on a CPU shared with other jobs


# ---------------------------------------------------------------------------------------------
# Judge

def train_judge(cfg: TrainConfig, data: Digits, log: Log) -> DigitJudge:
    torch.manual_seed(cfg.seed)
    judge = DigitJudge()
    opt = torch.optim.AdamW(judge.parameters(), lr=cfg.judge_lr, weight_decay=1e-4)
    stream = batches(data, cfg.judge_batch, cfg.seed + 1)

    def step(i: int) -> dict[str, float]:
        x, y = next(stream)
        set_lr(opt, lr_at(i, cfg.judge_steps, cfg.judge_lr))
        loss = F.cross_entropy(judge(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"ce": loss.item()}

    judge.train()
    run_steps("judge", cfg.judge_steps, step, log, cfg.log_every)
    return judge.eval()


# ---------------------------------------------------------------------------------------------
# VQVAE: multi-scale residual quantisation with straight-through gradients

def quantize_train(q: VectorQuantizer, f: torch.Tensor, beta: float
                   ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """VAR's training-time quantiser: returns (f_hat with straight-through gradient to f, vq loss,
    token maps, the residual vectors each scale quantised [N_s, C] (for dead-code restarts)).

    The loss at each scale compares the running f_hat with f: the codebook and phi are pulled
    towards the (fixed) encoder output, and the encoder is pulled towards f_hat with weight beta
    (commitment); both are averaged over scales."""
    B, C, n, _ = f.shape
    S = len(q.patch_nums)
    f_fixed = f.detach()
    f_rest, f_hat = f_fixed.clone(), torch.zeros_like(f_fixed)
    loss, maps, residuals = f.new_zeros(()), [], []
    for si, pn in enumerate(q.patch_nums):
        z = f_rest if si == S - 1 else F.interpolate(f_rest, size=(pn, pn), mode="area")
        z = z.permute(0, 2, 3, 1).reshape(-1, C)
        with torch.no_grad():
            idx = q.nearest(z).view(B, pn * pn)
        h = q.scale_contribution(si, q.lookup(idx, pn))
        f_hat = f_hat + h
        f_rest = f_rest - h.detach()
        loss = loss + F.mse_loss(f_hat, f_fixed) + beta * F.mse_loss(f_hat.detach(), f)
        maps.append(idx)
        residuals.append(z)
    f_st = f + (f_hat - f).detach()  # straight-through: the decoder sees f_hat, its gradient goes to f
    return f_st, loss / S, maps, residuals


def _restart_dead_codes(q: VectorQuantizer, hits: torch.Tensor, residuals: list[torch.Tensor],
                        gen: torch.Generator) -> int:
    """Move codes nobody used since the last check onto random residual vectors of this batch."""
    dead = (hits == 0).nonzero().flatten()
    if len(dead):
        pool = torch.cat(residuals).detach()
        pick = torch.randint(len(pool), (len(dead),), generator=gen)
        with torch.no_grad():
            q.embedding.weight[dead] = pool[pick] + 0.01 * torch.randn(len(dead), pool.shape[1], generator=gen)
    return len(dead)


def to_model_input(x: torch.Tensor) -> torch.Tensor:
    """Grey [B, 1, S, S] in [0, 1] -> the VQVAE's RGB input in [-1, 1] (grey in all channels)."""
    return (x * 2 - 1).expand(-1, 3, -1, -1)


def train_vqvae(cfg: TrainConfig, data: Digits, log: Log, vae_cfg: VQVAEConfig = TOY_VQVAE) -> VQVAE:
    torch.manual_seed(cfg.seed)
    vae = VQVAE(vae_cfg)
    V = vae_cfg.vocab_size
    nn.init.uniform_(vae.quantize.embedding.weight, -1 / V, 1 / V)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0, betas=(0.9, 0.95))
    stream = batches(data, cfg.vae_batch, cfg.seed + 2)
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    hits = torch.zeros(V)

    def step(i: int) -> dict[str, float]:
        nonlocal hits
        x, _ = next(stream)
        x = to_model_input(x)
        set_lr(opt, lr_at(i, cfg.vae_steps, cfg.vae_lr))
        f = vae.quant_conv(vae.encoder(x))
        f_hat, vq, maps, residuals = quantize_train(vae.quantize, f, cfg.vq_beta)
        rec = vae.decoder(vae.post_quant_conv(f_hat))
        rec_loss = F.mse_loss(rec, x) + F.l1_loss(rec, x)
        loss = rec_loss + vq
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hits += torch.bincount(torch.cat([m.flatten() for m in maps]), minlength=V).float()
        out = {"rec": rec_loss.item(), "vq": vq.item(), "used": float((hits > 0).sum())}
        # no restarts in the last fifth, so the final codebook is the one the decoder was tuned on
        if (i + 1) % cfg.dead_code_every == 0:
            if i < 0.8 * cfg.vae_steps:
                _restart_dead_codes(vae.quantize, hits, residuals, gen)
            hits = torch.zeros(V)
        return out

    vae.train()
    run_steps("vqvae", cfg.vae_steps, step, log, cfg.log_every)
    return vae.eval()


# ---------------------------------------------------------------------------------------------
# VAR transformer: teacher forcing on tokenised (augmented) digits

@torch.no_grad()
def tokenize(vae: VQVAE, data: Digits, copies: int, seed: int, batch: int = 256
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`copies` augmented passes over the data (the first un-augmented) -> (labels [N],
    target token ids [N, L], teacher-forcing inputs [N, L - 1, Cvae])."""
    gen = torch.Generator().manual_seed(seed)
    labels, targets, inputs = [], [], []
    for c in range(copies):
        for i in range(0, len(data), batch):
            x = data.images[i:i + batch]
            x = x if c == 0 else augment(x, gen)
            maps = vae.img_to_idx(to_model_input(x))
            labels.append(data.labels[i:i + batch])
            targets.append(torch.cat(maps, 1))
            inputs.append(vae.quantize.teacher_forcing_input(maps[:-1]))
    return torch.cat(labels), torch.cat(targets), torch.cat(inputs)


@torch.no_grad()
def init_var(var: VARTransformer, std: float = 0.02) -> None:
    """Small normal init; every block starts as (nearly) the identity: the AdaLN gates gamma1 and
    gamma2 (the first 2C outputs of ada_lin) start at zero, as in adaLN-zero."""
    for name, p in var.named_parameters():
        if name.endswith("scale_mul_1H11"):
            continue  # keeps the module's ln(4)
        if p.ndim >= 2 or name in ("pos_start", "pos_1LC"):
            nn.init.trunc_normal_(p, std=std)
        else:
            nn.init.zeros_(p)
    C = var.cfg.embed_dim
    for b in var.blocks:
        b.ada_lin[1].weight[:2 * C].zero_()
    var.head_nm.ada_lin[1].weight.mul_(0.5)
    var.reset_buffers()


def train_var(cfg: TrainConfig, vae: VQVAE, data: Digits, log: Log,
              var_cfg: VARConfig = TOY_VAR) -> VARTransformer:
    labels, targets, inputs = tokenize(vae, data, cfg.var_augment_copies, cfg.seed + 4)
    torch.manual_seed(cfg.seed)
    var = VARTransformer(var_cfg)
    init_var(var)
    decay = [p for n, p in var.named_parameters() if p.ndim >= 2 and "emb" not in n and "pos_" not in n]
    other = [p for n, p in var.named_parameters() if not (p.ndim >= 2 and "emb" not in n and "pos_" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.var_wd},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.var_lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed + 5)
    next_idx = shuffled_batches(len(labels), cfg.var_batch, gen).__next__

    def step(i: int) -> dict[str, float]:
        idx = next_idx()
        y = labels[idx].clone()
        y[torch.rand(len(y), generator=gen) < cfg.cond_drop] = var.null_class
        set_lr(opt, lr_at(i, cfg.var_steps, cfg.var_lr))
        logits = var(y, inputs[idx])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[idx].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(var.parameters(), 2.0)
        opt.step()
        with torch.no_grad():
            acc = (logits.argmax(-1) == targets[idx]).float().mean()
        return {"ce": loss.item(), "tok_acc": acc.item()}

    var.train()
    run_steps("var", cfg.var_steps, step, log, cfg.log_every)
    return var.eval()


# ---------------------------------------------------------------------------------------------

def save_zoo(out: Path, judge: DigitJudge | None, vae: VQVAE | None, var: VARTransformer | None,
             cfg: TrainConfig) -> None:
    """Write the weight files and the JSON config that `vardist.zoo.specs` reads."""
    out.mkdir(parents=True, exist_ok=True)
    if judge is not None:
        save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(out / JUDGE_FILE))
    if vae is not None:
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(out / VAE_FILE))
    if var is not None:
        save_file({k: v.contiguous() for k, v in var.state_dict().items()}, str(out / VAR_FILE))
    meta = {"vqvae": asdict(vae.cfg if vae is not None else TOY_VQVAE),
            "var": asdict(var.cfg if var is not None else TOY_VAR),
            "image_size": IMAGE_SIZE, "train": asdict(cfg)}
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def train_zoo(cfg: TrainConfig, out: str | Path, stages: tuple[str, ...] = ("judge", "vqvae", "var")) -> None:
    """Train the requested stages (a stage not trained is loaded from `out` when needed) and save."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    with TrainLog(out) as log:
        _train_stages(cfg, out, stages, log)


def _train_stages(cfg: TrainConfig, out: Path, stages: tuple[str, ...], log: Log) -> None:
    data = load_digits("train")
    # each stage is saved as soon as it is done, so a later stage can be rerun on its own
    judge = vae = var = None
    if "judge" in stages:
        judge = train_judge(cfg, data, log)
        save_zoo(out, judge, None, None, cfg)
    if "vqvae" in stages:
        vae = train_vqvae(cfg, data, log)
        save_zoo(out, None, vae, None, cfg)
    if "var" in stages:
        if vae is None:
            from vardist.zoo.specs import load_vqvae
            vae = load_vqvae(out)
        var = train_var(cfg, vae, data, log)
        save_zoo(out, None, vae, var, cfg)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vardist.zoo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the weights, config and train_log.jsonl")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--judge-steps", type=int, default=TrainConfig.judge_steps)
    p.add_argument("--vae-steps", type=int, default=TrainConfig.vae_steps)
    p.add_argument("--var-steps", type=int, default=TrainConfig.var_steps)
    p.add_argument("--stages", default="judge,vqvae,var",
                   help="comma-separated subset of judge,vqvae,var (others are loaded from --out)")
    p.add_argument("--batch", type=int, default=None, help="one batch size for all stages (tests)")
    p.add_argument("--augment-copies", type=int, default=TrainConfig.var_augment_copies,
                   help="augmented copies of the train set the transformer is trained on")
    p.add_argument("--threads", type=int, default=TrainConfig.threads)
    a = p.parse_args(argv)
    stages = tuple(s.strip() for s in a.stages.split(",") if s.strip())
    bad = [s for s in stages if s not in ("judge", "vqvae", "var")]
    if bad:
        p.error(f"unknown stage(s) {bad}; choose from judge, vqvae, var")
    for name in ("judge_steps", "vae_steps", "var_steps", "augment_copies", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.batch is not None and a.batch < 2:
        p.error(f"--batch must be >= 2, got {a.batch}")
    cfg = TrainConfig(seed=a.seed, judge_steps=a.judge_steps, vae_steps=a.vae_steps,
                      var_steps=a.var_steps, var_augment_copies=a.augment_copies, threads=a.threads)
    if a.batch is not None:
        cfg.judge_batch = cfg.vae_batch = cfg.var_batch = a.batch
    train_zoo(cfg, a.out, stages)


if __name__ == "__main__":
    main()
