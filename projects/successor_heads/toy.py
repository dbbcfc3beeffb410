"""A tiny model trained on synthetic ordinal lists, where successor heads exist by design of
the data (spec §13): the whole weight-based pipeline on a positive case.

Vocabulary: ``"List:"``, ``","``, numbers ``" 0" .. " <n-1>"``, days, months, letters (each with
its leading space) and an unknown token. A training sequence is ``List: t_a, t_a+1, ...,`` of
one class (days and months wrap around): at each comma the next item is the successor of an
item one position back, which a head can supply by attending to it and mapping it through its
OV circuit (or by copying an MLP0 feature that already encodes the successor). Trained with the
shared loop (``common.train``), next-token cross-entropy on the item positions.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common.models import DecoderLM, ModelConfig
from projects.successor_heads.tasks import DAYS, LETTERS, MONTHS

LIST, COMMA, UNK = "List:", ",", "<unk>"


class VocabTokenizer:
    """Whole-string tokens from a fixed vocabulary; other text is split by greedy longest
    match, unknown characters becoming ``<unk>`` (so multi-token items are dropped as usual)."""

    def __init__(self, tokens: list[str]):
        self.vocab = list(tokens)
        self.ids = {t: i for i, t in enumerate(self.vocab)}

    def encode(self, text: str) -> list[int]:
        out, i = [], 0
        while i < len(text):
            for j in range(len(text), i, -1):
                if text[i:j] in self.ids:
                    out.append(self.ids[text[i:j]])
                    i = j
                    break
            else:
                out.append(self.ids[UNK])
                i += 1
        return out

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in ids)

    def __len__(self) -> int:
        return len(self.vocab)


def toy_vocab(n_numbers: int = 100) -> tuple[VocabTokenizer, list[tuple[list[int], bool]]]:
    """The tokenizer and the training classes ``[(token ids, cyclic), ...]``."""
    words = ([f" {i}" for i in range(n_numbers)], [" " + d for d in DAYS],
             [" " + m for m in MONTHS], [" " + c for c in LETTERS])
    tok = VocabTokenizer([LIST, COMMA, UNK] + [w for ws in words for w in ws])
    cyc = (False, True, True, False)
    return tok, [([tok.ids[w] for w in ws], c) for ws, c in zip(words, cyc, strict=True)]


def toy_config(vocab: int, d_model: int = 64, n_layers: int = 2) -> ModelConfig:
    """GQA Llama-style (RoPE, RMSNorm, SwiGLU), untied embeddings."""
    return ModelConfig(vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=4,
                       n_kv_heads=2, d_head=d_model // 4, d_mlp=2 * d_model, rope_theta=100.0,
                       tie_embeddings=False)


def _sampler(classes, n_items: int, batch: int, list_id: int, comma_id: int):
    """``key -> ids [batch, 1 + 2 n_items]``: ``List: t_a , t_a+1 , ...``."""
    sizes = np.array([len(c) for c, _ in classes])
    width = int(sizes.max())
    table = np.zeros((len(classes), width), np.int32)
    for k, (c, _) in enumerate(classes):
        table[k, :len(c)] = c
    cyclic = np.array([cy for _, cy in classes])
    table, sizes_j, cyclic_j = jnp.asarray(table), jnp.asarray(sizes), jnp.asarray(cyclic)

    def sample(key):
        kc, ks = jax.random.split(key)
        cls = jax.random.randint(kc, (batch,), 0, len(classes))
        size = sizes_j[cls]
        hi = jnp.where(cyclic_j[cls], size, size - n_items + 1)
        start = jnp.floor(jax.random.uniform(ks, (batch,)) * hi).astype(jnp.int32)
        pos = (start[:, None] + jnp.arange(n_items)[None]) % size[:, None]
        items = table[cls[:, None], pos]  # [b, n]
        body = jnp.stack([items, jnp.full_like(items, comma_id)], -1).reshape(batch, -1)
        return jnp.concatenate([jnp.full((batch, 1), list_id, jnp.int32), body], 1)

    return sample


def train_toy(*, steps: int, batch: int = 64, n_items: int = 6, lr: float = 3e-3,
              seed: int = 0, d_model: int = 64, n_layers: int = 2, workdir: pathlib.Path,
              metrics=None, progress: bool = True):
    """Train the toy model; returns ``(model, tokenizer, final mean loss on item positions)``."""
    from common.sharding import make_mesh
    from common.train import Task, TrainConfig
    from common.train import train as train_loop

    tok, classes = toy_vocab()
    cfg = toy_config(len(tok), d_model, n_layers)
    sample = _sampler(classes, n_items, batch, tok.ids[LIST], tok.ids[COMMA])
    key = jax.random.key(seed)
    seq = 1 + 2 * n_items
    # Predict at the commas (positions 2, 4, ...): the next token is the next item.
    weight = jnp.zeros((seq - 1,)).at[jnp.arange(2, seq - 1, 2)].set(1.0)

    def loss_fn(model, b):
        ids = b["ids"]
        logits = model(ids)[:, :-1]
        lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
        nll = -jnp.take_along_axis(lp, ids[:, 1:, None], -1)[..., 0]
        loss = jnp.sum(nll * weight) / (weight.sum() * ids.shape[0])
        return loss, {}

    log_every = min(steps, 100)
    task = Task(make_model=lambda: DecoderLM(cfg, rngs=nnx.Rngs(seed)), loss_fn=loss_fn,
                batch_axes={"ids": ("batch", "seq")},
                device_data=lambda step: {"ids": sample(jax.random.fold_in(key, step))})
    tc = TrainConfig(steps=steps, log_every=log_every, checkpoint_every=0,
                     steps_per_call=log_every, progress=progress)
    res = train_loop(task, optax.adam(lr), None, tc, make_mesh(), workdir, metrics=metrics)
    model = res.model()
    ids = sample(jax.random.fold_in(key, 10**6))
    final = float(loss_fn(model, {"ids": ids})[0])
    return model, tok, final
