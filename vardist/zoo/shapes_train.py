"""Train toy-shapes from a seed: the BSQ VAE, then the text-conditional Infinity transformer and its
word encoder, on scenes drawn by `vardist.zoo.shapes.sample_scene`.

    vardist train toy-shapes --out DIR [--seed 0] [--vae-steps N] [--var-steps N] [--stages vae,var]
    (the same as python -m vardist.zoo.shapes_train --out DIR ...)

Training-only code (losses, straight-through quantisation, initialisation); the modules are
vardist's Infinity ones (`vardist.zoo.shapes_model`). DIR receives the files that ship in
`vardist/zoo/weights/` (toy-shapes-*.safetensors, toy-shapes.json) plus `train_log.jsonl`.
Each stage is saved as soon as it is done; `--stages var` reruns the transformer on the VAE
already in DIR. The loop, progress bar and log are toy-digits' (`vardist.zoo.loop`).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from vardist.models.infinity.bsq_vae import BSQVAE, bits_to_codes, multiscale_bsq, next_scale_input
from vardist.models.infinity.transformer import Infinity, block_causal_mask, rope_table
from vardist.zoo.loop import Log, TrainLog, lr_at, run_steps, set_lr, shuffled_batches
from vardist.zoo.shapes_model import (INFINITY_CONFIG, SCHEDULE, TEXT_FILE, TRANSFORMER_FILE, VAE_CONFIG,
                                      VAE_FILE, WordEncoder, WordEncoderConfig, load_vae_from, write_config)


@dataclass
class ShapesTrainConfig:
    seed: int = 0
    vae_steps: int = 600
    vae_batch: int = 16
    vae_lr: float = 2e-3
    commit: float = 0.25            # weight of the encoder's pull towards its quantised sum
    max_flip: float = 0.1           # the decoder trains on codes with up to this share of bits flipped
    bit_temp: float = 0.05          # ... and with bits drawn from sigmoid(residual / bit_temp)
    scenes: int = 20000             # scenes tokenised once for the transformer
    var_steps: int = 2400
    var_batch: int = 16
    var_lr: float = 3e-3
    var_wd: float = 0.05
    cond_drop: float = 0.1          # prompts replaced by the unconditional rows, so CFG works
    log_every: int = 25
    threads: int = 1                # one thread: the development CPUs are shared (docs/zoo.md)


def scene_stream(seed: int) -> Iterator[tuple[str, dict, np.ndarray]]:
    """An endless, seeded stream of (prompt, metadata, uint8 image [S, S, 3]) scenes."""
    from vardist.zoo.shapes import sample_scene

    rng = np.random.default_rng(seed)
    while True:
        yield sample_scene(rng)


def to_model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB [B, S, S, 3] -> the VAE's float input in [-1, 1], NCHW."""
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1


# ---------------------------------------------------------------------------------------------
# BSQ VAE: multi-scale binary quantisation with a straight-through estimator

def train_vae(cfg: ShapesTrainConfig, log: Log) -> BSQVAE:
    torch.manual_seed(cfg.seed)
    vae = BSQVAE(VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0, betas=(0.9, 0.95))
    stream = scene_stream(cfg.seed + 1)
    gen = torch.Generator().manual_seed(cfg.seed + 4)

    def step(i: int) -> dict[str, float]:
        x = to_model_input(np.stack([next(stream)[2] for _ in range(cfg.vae_batch)]))
        set_lr(opt, lr_at(i, cfg.vae_steps, cfg.vae_lr))
        h = vae.encoder(x)
        residuals: list[torch.Tensor] = []
        _, z = multiscale_bsq(h.detach(), SCHEDULE, residuals)
        # The decoder sees bits drawn, not thresholded: bit = 1 with probability
        # sigmoid(r / bit_temp), so a residual component near zero (the sign of noise, which no
        # transformer can predict) gives a coin flip, and on top each image has up to max_flip of
        # its bits flipped (the transformer's mistakes). A decoder trained on exact signs turns
        # both into blobs and colour smears. Gradient straight through to h.
        rate = torch.rand(len(x), 1, 1, 1, generator=gen) * cfg.max_flip
        noisy = []
        for r in residuals:
            p1 = torch.sigmoid(r.permute(0, 2, 3, 1) / cfg.bit_temp)
            b = torch.rand(p1.shape, generator=gen) < p1
            noisy.append((b ^ (torch.rand(b.shape, generator=gen) < rate)).to(torch.uint8))
        z_st = h + (vae.codes_from_bits(noisy) - h).detach()
        rec = vae.decoder(z_st)
        rec_loss = F.mse_loss(rec, x) + F.l1_loss(rec, x)
        commit = F.mse_loss(h, z)
        loss = rec_loss + cfg.commit * commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"rec": rec_loss.item(), "commit": commit.item()}

    vae.train()
    run_steps("vae", cfg.vae_steps, step, log, cfg.log_every)
    return vae.eval()


# ---------------------------------------------------------------------------------------------
# Transformer + word encoder: teacher forcing on tokenised scenes

@dataclass
class Tokenised:
    prompts: list[str]
    targets: torch.Tensor   # [N, L, d] uint8 bits of every token of the schedule
    inputs: torch.Tensor    # [N, L - 1, d] the teacher-forcing inputs of scales 1.. (float32)


def teacher_forcing_inputs(bits: Sequence[torch.Tensor], schedule: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Bits per scale [B, h, w, d] -> the transformer's inputs of scales 1.. [B, L - 1, d]: the
    running sum of the upsampled codes resampled to the next map (what InfinityGenerator feeds)."""
    B, H, W, d = bits[-1].shape
    summed = torch.zeros(B, d, H, W)
    ins = []
    for s, b in enumerate(bits[:-1]):
        summed, x = next_scale_input(summed, bits_to_codes(b).permute(0, 3, 1, 2), tuple(schedule[s + 1]))
        ins.append(x)
    return torch.cat(ins, 1)


@torch.no_grad()
def tokenise(vae: BSQVAE, n: int, seed: int, batch: int = 250) -> Tokenised:
    stream = scene_stream(seed)
    prompts, targets, inputs = [], [], []
    for i in range(0, n, batch):
        scenes = [next(stream) for _ in range(min(batch, n - i))]
        bits, _ = vae.encode_bits(to_model_input(np.stack([s[2] for s in scenes])), SCHEDULE)
        prompts += [s[0] for s in scenes]
        targets.append(torch.cat([b.flatten(1, 2) for b in bits], 1))
        inputs.append(teacher_forcing_inputs(bits, SCHEDULE))
    return Tokenised(prompts, torch.cat(targets), torch.cat(inputs))


@torch.no_grad()
def init_infinity(model: Infinity, std: float = 0.02) -> None:
    """Small normal init, zero biases, and every block starts as the identity: the AdaLN gates
    (the first 2C outputs of the shared AdaLN, and ada_gss) start at zero, as in adaLN-zero."""
    for name, p in model.named_parameters():
        if name.endswith(("scale_mul_1H11", "ada_gss")) or (p.ndim == 1 and not name.endswith("bias")):
            continue  # cosine-attention scale ln(4), zero AdaLN offsets, norm weights of one
        if p.ndim >= 2:
            nn.init.trunc_normal_(p, std=std)
        else:
            nn.init.zeros_(p)
    C = model.cfg.embed_dim
    model.shared_ada_lin[1].weight[:2 * C].zero_()
    model.head_nm.ada_lin[1].weight.mul_(0.5)


def train_transformer(cfg: ShapesTrainConfig, vae: BSQVAE, log: Log) -> tuple[Infinity, WordEncoder]:
    from vardist.zoo.shapes import PROMPT_WORDS

    data = tokenise(vae, cfg.scenes, cfg.seed + 2)
    vocab = tuple(PROMPT_WORDS)
    torch.manual_seed(cfg.seed)
    text = WordEncoder(WordEncoderConfig(vocab, width=INFINITY_CONFIG.text_channels,
                                         max_words=INFINITY_CONFIG.text_maxlen - 1))
    model = Infinity(INFINITY_CONFIG)
    init_infinity(model)
    ids, mask = text.token_ids(data.prompts)
    lens = mask.sum(1)

    params = list(model.named_parameters()) + [(f"text.{n}", p) for n, p in text.named_parameters()]
    decay = [p for n, p in params if p.ndim >= 2 and "embed" not in n and "pos" not in n and "uncond" not in n]
    seen = {id(p) for p in decay}
    other = [p for _, p in params if id(p) not in seen]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.var_wd},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.var_lr, betas=(0.9, 0.95))
    levels = torch.cat([torch.full((h * w,), s, dtype=torch.long) for s, (h, w) in enumerate(SCHEDULE)])
    # every scale weighs the same in the loss (not every token): the coarse maps, which settle
    # which objects appear and where, would otherwise count for 21 of 121 tokens
    token_weight = (1.0 / torch.bincount(levels).float() / len(SCHEDULE))[levels]
    attn_mask = block_causal_mask(levels, levels)
    rope = rope_table(SCHEDULE, SCHEDULE[-1], INFINITY_CONFIG.head_dim)
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    next_idx = shuffled_batches(len(ids), cfg.var_batch, gen).__next__

    def step(i: int) -> dict[str, float]:
        idx = next_idx()
        n = lens[idx].tolist()
        feats = text(ids[idx, :max(n)], mask[idx, :max(n)])
        drop = (torch.rand(len(idx), generator=gen) < cfg.cond_drop).tolist()
        rows = [model.cfg_uncond[:k] if d else feats[j, :k] for j, (k, d) in enumerate(zip(n, drop))]
        set_lr(opt, lr_at(i, cfg.var_steps, cfg.var_lr))
        tc = model.encode_text(rows, guided=False)
        x = torch.cat((model.sos_tokens(tc), model.word_embed(data.inputs[idx])), 1)
        logits = model.logits(model.run_blocks(x, levels, rope, tc, None, attn_mask), tc.sos)
        target = data.targets[idx].long()
        ce = F.cross_entropy(logits.reshape(-1, 2), target.reshape(-1), reduction="none")
        loss = (ce.view(target.shape).mean((0, 2)) * token_weight).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([p for _, p in params], 2.0)
        opt.step()
        with torch.no_grad():
            acc = (logits.argmax(-1) == target).float().mean()
        return {"ce": loss.item(), "bit_acc": acc.item()}

    model.train()
    text.train()
    run_steps("var", cfg.var_steps, step, log, cfg.log_every)
    return model.eval(), text.eval()


# ---------------------------------------------------------------------------------------------

def _save(module: nn.Module, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))


def train_shapes(cfg: ShapesTrainConfig, out: str | Path, stages: tuple[str, ...] = ("vae", "var")) -> None:
    """Train the requested stages (the VAE is loaded from `out` when not trained) and save."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    with TrainLog(out) as log:
        if "vae" in stages:
            vae = train_vae(cfg, log)
            _save(vae, out / VAE_FILE)
        else:
            vae = load_vae_from(out)
        if "var" in stages:
            model, text = train_transformer(cfg, vae, log)
            _save(model, out / TRANSFORMER_FILE)
            _save(text, out / TEXT_FILE)
            write_config(out, text.cfg.vocab, asdict(cfg))
        elif not (out / "toy-shapes.json").is_file():
            write_config(out, (), asdict(cfg))  # the VAE alone; the vocabulary comes with the transformer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vardist.zoo.shapes_train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the weights, config and train_log.jsonl")
    p.add_argument("--seed", type=int, default=ShapesTrainConfig.seed)
    p.add_argument("--vae-steps", type=int, default=ShapesTrainConfig.vae_steps)
    p.add_argument("--var-steps", type=int, default=ShapesTrainConfig.var_steps)
    p.add_argument("--scenes", type=int, default=ShapesTrainConfig.scenes,
                   help="scenes tokenised once for the transformer")
    p.add_argument("--stages", default="vae,var", help="comma-separated subset of vae,var (the VAE is "
                                                       "loaded from --out when not trained)")
    p.add_argument("--batch", type=int, default=None, help="one batch size for both stages (tests)")
    p.add_argument("--threads", type=int, default=ShapesTrainConfig.threads)
    a = p.parse_args(argv)
    stages = tuple(s.strip() for s in a.stages.split(",") if s.strip())
    bad = [s for s in stages if s not in ("vae", "var")]
    if bad or not stages:
        p.error(f"unknown stage(s) {bad or a.stages!r}; choose from vae, var")
    for name in ("vae_steps", "var_steps", "scenes", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.batch is not None and a.batch < 2:
        p.error(f"--batch must be >= 2, got {a.batch}")
    cfg = ShapesTrainConfig(seed=a.seed, vae_steps=a.vae_steps, var_steps=a.var_steps, scenes=a.scenes,
                            threads=a.threads)
    if a.batch is not None:
        cfg.vae_batch = cfg.var_batch = a.batch
    if cfg.scenes < 2 * cfg.var_batch:
        p.error(f"--scenes ({cfg.scenes}) must be at least two batches ({2 * cfg.var_batch})")
    train_shapes(cfg, a.out, stages)


if __name__ == "__main__":
    main()
