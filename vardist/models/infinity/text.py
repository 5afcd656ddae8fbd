"""Text encoders for Infinity: Flan-T5-XL's encoder through `transformers` (local folder only, never
downloading), and a tiny randomly initialised T5 with a byte tokenizer for tests and the
`infinity-tiny` model. `encode(prompts)` returns one float32 tensor [L_i, d_model] per prompt:
the encoder's last hidden state over the prompt's tokens (EOS included), as the reference passes
them to the transformer."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


class ByteTokenizer:
    """Deterministic, download-free: UTF-8 bytes + 3 (0 pad, 1 EOS, 2 unknown), then EOS."""

    vocab_size = 259
    eos = 1

    def __call__(self, prompts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [[b + 3 for b in p.encode("utf-8")][:max_length - 1] + [self.eos] for p in prompts]
        L = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), L, dtype=torch.long)
        mask = torch.zeros(len(rows), L, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        return ids, mask


class T5TextEncoder:
    """`device`: where the encoder runs. `park`: where it waits between batches (None: on
    `device`); with park="cpu" and a CUDA device the weights move to the GPU for one batch's
    prompts and back (flan-t5-xl's ~2.4 GB in fp16 off a 24 GB card between batches).
    The features are the same either way; they are returned on `device`."""

    def __init__(self, model, tokenize, *, max_length: int = 512, device: str | torch.device = "cpu",
                 park: str | torch.device | None = None) -> None:
        self.device = torch.device(device)
        self.park = None if park is None else torch.device(park)  # kept when equal: a no-op move
        self.model = model.eval().requires_grad_(False).to(self.park or self.device)
        self.tokenize, self.max_length = tokenize, max_length

    @property
    def resident(self) -> torch.device:
        """Where the weights are between batches."""
        return self.park or self.device

    @property
    def channels(self) -> int:
        return self.model.config.d_model

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        # one prompt at a time, unpadded: a prompt's features then never depend on its batch
        if self.park is not None:
            self.model.to(self.device)
        try:
            out = []
            for p in prompts:
                ids, mask = self.tokenize([p], self.max_length)
                h = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
                out.append(h[0, :int(mask.sum())].float())
            return out
        finally:
            if self.park is not None:
                self.model.to(self.park)


def _transformers():
    try:
        import transformers
    except ImportError as e:  # an optional dependency
        raise ImportError("the Infinity text encoder needs `transformers`: pip install 'vardist[text]'") from e
    return transformers


def flan_t5(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
            park: str | torch.device | None = None) -> T5TextEncoder:
    """Flan-T5-XL's encoder and tokenizer from a local folder (a Hugging Face snapshot); fp16 on
    CUDA like the reference, fp32 on the CPU. park: see T5TextEncoder."""
    tf = _transformers()
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a T5 model folder (no config.json); download "
                                f"google/flan-t5-xl from https://huggingface.co/google/flan-t5-xl")
    from vardist.models.checkpoint import read_json_config

    read_json_config(folder / "config.json")  # a broken one is named here, not deep in transformers
    dtype = dtype or (torch.float16 if torch.device(device).type == "cuda" else torch.float32)
    model = tf.T5EncoderModel.from_pretrained(str(folder), local_files_only=True).to(dtype)
    tok = tf.AutoTokenizer.from_pretrained(str(folder), legacy=True, local_files_only=True)

    def tokenize(prompts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        # the reference pads to 512 tokens; padded keys are masked, so the valid rows match
        enc = tok(prompts, max_length=max_length, padding="longest", truncation=True, return_tensors="pt")
        return enc.input_ids, enc.attention_mask

    return T5TextEncoder(model, tokenize, device=device, park=park)


def tiny_t5(d_model: int, *, seed: int = 0, layers: int = 2, heads: int = 4,
            device: str | torch.device = "cpu", park: str | torch.device | None = None) -> T5TextEncoder:
    """A small random T5 encoder (fixed seed) with the byte tokenizer: no files, no download."""
    tf = _transformers()
    cfg = tf.T5Config(vocab_size=ByteTokenizer.vocab_size, d_model=d_model, d_kv=d_model // heads,
                      d_ff=2 * d_model, num_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu",
                      dropout_rate=0.0, pad_token_id=0, eos_token_id=ByteTokenizer.eos)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.T5EncoderModel(cfg)
    return T5TextEncoder(model, ByteTokenizer(), device=device, park=park)
