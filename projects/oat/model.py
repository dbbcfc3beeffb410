"""The OAT model (spec §2-§6) on the shared per-head attention core.

Token indices (pointer space, size ``N + 2``): ``0..N−1`` objects, ``N`` = EOS = the target
token of the encoder sequence ("fixating the target token" means stop), ``N + 1`` = PAD (ignored
in the loss); ``N + 2`` = BOS (decoder input only).

* **Object embedding** (shared by encoder and decoder): appearance ``CNN(crop) [d_app]`` ⊕ position
  ``PE(row, col, flag) [d_pe]`` from the learned table (:mod:`projects.oat.pe`), concatenated:
  ``d_model = d_app + d_pe`` (512 = 256 + 256 in the paper).
* **Encoder** (no order encoding): the ``N`` objects (flag 0) then one target token (the target's
  crop and position, flag 1): ``[batch, N + 1, d_model]``.
* **Decoder**: ``[BOS, f_1, …, f_T]``, each fixation the object embedding of the fixated object
  with flag 1 iff it is the target; BOS is an all-ones crop at the shelf centre
  ``(rows // 2, cols // 2)``; a 1-D sinusoidal temporal PE is added.
* **Layers**: post-LN ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer`` (ReLU FFN,
  dropout; the official ``TransformerEncoder``/``TransformerDecoder`` stacks have no final
  LayerNorm) with every attention a :class:`common.attention.layer.MultiHeadAttention` (head
  axis explicit; the decoder's cross-attention via ``kv_x``).
* **Object attention** (pointer head): for each of ``C`` heads ``s_c = A_d A_eᵀ / √d_model`` with
  ``A_e = H_enc K_c + b``, ``A_d = H_dec Q_c + b'`` (kernels ``[d_model, C, d_model]``), a
  constant 0 appended for PAD, then ``logits = Σ_c w_c s_c + b``: ``[batch, T + 1, N + 2]``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.attention.layer import MultiHeadAttention
from common.attention.masks import Mask
from common.conv_pool import bias_relu, conv_max_pool
from common.dropout import SeedSequence, dropout, fold_seed
from projects.oat import pe as pe_lib


@dataclasses.dataclass(frozen=True)
class OATConfig:
    """Sizes of one OAT model (defaults: the paper's model on Amazon, 6 × 14 shelves)."""

    rows: int = 6
    cols: int = 14
    crop_h: int = 150
    crop_w: int = 93
    channels: tuple[int, int] = (16, 32)
    kernels: tuple[int, int] = (5, 3)
    pools: tuple[int, int] = (5, 3)
    d_app: int = 256
    d_pe: int = 256
    heads: int = 4
    d_ff: int = 512
    enc_layers: int = 4
    dec_layers: int = 4
    pointer_heads: int = 2
    dropout: float = 0.1
    pe_rows: int = 14  # R: rows of the learned PE table (>= max(rows, cols, 2))
    pe_sigma: float = 2.0

    @property
    def n(self) -> int:
        return self.rows * self.cols

    @property
    def d_model(self) -> int:
        return self.d_app + self.d_pe

    @property
    def eos(self) -> int:
        return self.n

    @property
    def pad(self) -> int:
        return self.n + 1

    @property
    def bos(self) -> int:
        return self.n + 2

    def cnn_out_hw(self) -> tuple[int, int]:
        """Spatial size after conv(valid) → pool → conv(valid) → pool (floor, as torch)."""
        h, w = self.crop_h, self.crop_w
        for k, p in zip(self.kernels, self.pools, strict=True):
            h, w = (h - k + 1) // p, (w - k + 1) // p
        return h, w

    def validate(self) -> None:
        h, w = self.cnn_out_hw()
        if h < 1 or w < 1:
            raise ValueError(f"OATConfig: crops {self.crop_h}x{self.crop_w} are too small for "
                             f"kernels {self.kernels} and pools {self.pools}")
        if self.pe_rows < max(self.rows, self.cols, 2):
            raise ValueError(f"OATConfig: pe_rows {self.pe_rows} < max(rows, cols) "
                             f"{max(self.rows, self.cols)}")
        if self.d_model % self.heads:
            raise ValueError(f"OATConfig: d_model {self.d_model} not divisible by heads "
                             f"{self.heads}")


class PETable(nnx.Variable):
    """The learned PE table ``[R, ceil(d_pe / 3)]``: fixed (not trained), kept with the model."""


def _xavier_std(fan_in: int, fan_out: int) -> float:
    return math.sqrt(2.0 / (fan_in + fan_out))


def sinusoidal(length: int, width: int) -> np.ndarray:
    """``[length, width]`` 1-D sinusoidal PE (base 10000; even dims sin, odd dims cos)."""
    pos = np.arange(length)[:, None]
    div = np.exp(np.arange(0, width, 2) * (-math.log(10000.0) / width))
    out = np.zeros((length, width), np.float32)
    out[:, 0::2] = np.sin(pos * div)
    out[:, 1::2] = np.cos(pos * div)[:, : width // 2]
    return out


class CNNEmbedding(nnx.Module):
    """conv(k1) → ReLU → maxpool(p1) → conv(k2) → ReLU → maxpool(p2) → flatten → Linear(d_app).

    Each ``conv → ReLU → maxpool`` block runs as ``bias_relu(conv_max_pool(x, kernel, pool), bias)``
    (:mod:`common.conv_pool`: the same values, since a bias and a ReLU commute with the max; on
    the CPU one C++ pass per image for the convolution and pool, :mod:`common.native`; the pool's
    gradient routed to each window's first maximum, as torch's ``max_pool2d``).
    """

    def __init__(self, cfg: OATConfig, rngs: nnx.Rngs):
        c1, c2 = cfg.channels
        k1, k2 = cfg.kernels
        self.pools = cfg.pools
        xu = nnx.initializers.xavier_uniform()
        self.conv1 = nnx.Conv(3, c1, (k1, k1), padding="VALID", kernel_init=xu, rngs=rngs)
        self.conv2 = nnx.Conv(c1, c2, (k2, k2), padding="VALID", kernel_init=xu, rngs=rngs)
        h, w = cfg.cnn_out_hw()
        self.fc = nnx.Linear(c2 * h * w, cfg.d_app, kernel_init=xu, rngs=rngs)

    def __call__(self, crops: jax.Array) -> jax.Array:
        """``crops [..., H, W, 3]`` → ``[..., d_app]``."""
        lead = crops.shape[:-3]
        x = crops.reshape((-1, *crops.shape[-3:]))
        for conv, p in ((self.conv1, self.pools[0]), (self.conv2, self.pools[1])):
            x = bias_relu(conv_max_pool(x, conv.kernel[...], p), conv.bias[...])
        # flatten channel-first like torch (C, H, W) so a converted torch fc matches
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        return self.fc(x).reshape((*lead, -1))


class FeedForward(nnx.Module):
    def __init__(self, d: int, d_ff: int, rngs: nnx.Rngs):
        xu = nnx.initializers.xavier_uniform()
        self.up = nnx.Linear(d, d_ff, kernel_init=xu, rngs=rngs)
        self.down = nnx.Linear(d_ff, d, kernel_init=xu, rngs=rngs)

    def __call__(self, x, rate, keys: SeedSequence):
        return self.down(dropout(jax.nn.relu(self.up(x)), rate, keys()))


def _attention(cfg: OATConfig, rngs: nnx.Rngs) -> MultiHeadAttention:
    d = cfg.d_model
    return MultiHeadAttention(d, cfg.heads, cfg.heads, d // cfg.heads, rngs=rngs, qkv_bias=True,
                              o_bias=True, init_std=_xavier_std(d, d))


class EncoderLayer(nnx.Module):
    """Post-LN: ``x = LN(x + SA(x))``, ``x = LN(x + FFN(x))``."""

    def __init__(self, cfg: OATConfig, rngs: nnx.Rngs):
        self.attn = _attention(cfg, rngs)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, rngs)
        self.ln1 = nnx.LayerNorm(cfg.d_model, epsilon=1e-5, rngs=rngs)
        self.ln2 = nnx.LayerNorm(cfg.d_model, epsilon=1e-5, rngs=rngs)
        self.rate = cfg.dropout

    def __call__(self, x, keys: SeedSequence):
        a, _ = self.attn(x, positions=None, mask=None)
        x = self.ln1(x + dropout(a, self.rate, keys()))
        return self.ln2(x + dropout(self.ffn(x, self.rate, keys), self.rate, keys()))


class DecoderLayer(nnx.Module):
    """Post-LN: masked SA, cross-attention to the encoder output (``kv_x``), FFN."""

    def __init__(self, cfg: OATConfig, rngs: nnx.Rngs):
        self.self_attn = _attention(cfg, rngs)
        self.cross_attn = _attention(cfg, rngs)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, rngs)
        self.ln1 = nnx.LayerNorm(cfg.d_model, epsilon=1e-5, rngs=rngs)
        self.ln2 = nnx.LayerNorm(cfg.d_model, epsilon=1e-5, rngs=rngs)
        self.ln3 = nnx.LayerNorm(cfg.d_model, epsilon=1e-5, rngs=rngs)
        self.rate = cfg.dropout

    def __call__(self, y, memory, mask: Mask, keys: SeedSequence):
        a, _ = self.self_attn(y, positions=None, mask=mask)
        y = self.ln1(y + dropout(a, self.rate, keys()))
        c, _ = self.cross_attn(y, positions=None, mask=None, kv_x=memory)
        y = self.ln2(y + dropout(c, self.rate, keys()))
        return self.ln3(y + dropout(self.ffn(y, self.rate, keys), self.rate, keys()))


class ObjectAttention(nnx.Module):
    """The pointer head (spec §4, ``CA_version=3``): per-head scores over the encoder tokens."""

    def __init__(self, cfg: OATConfig, rngs: nnx.Rngs):
        d, c = cfg.d_model, cfg.pointer_heads
        std = _xavier_std(d, d)
        init = lambda shape: nnx.Param(std * jax.random.normal(rngs.params(), shape))
        self.enc_kernel = init((d, c, d))  # [d_model, heads, d_model]
        self.dec_kernel = init((d, c, d))
        self.enc_bias = nnx.Param(jnp.zeros((c, d)))
        self.dec_bias = nnx.Param(jnp.zeros((c, d)))
        lim = math.sqrt(6.0 / (c + 1))
        self.combine = nnx.Param(jax.random.uniform(rngs.params(), (c,), minval=-lim, maxval=lim))
        self.combine_bias = nnx.Param(jnp.zeros(()))

    def __call__(self, h_dec: jax.Array, h_enc: jax.Array) -> jax.Array:
        """``h_dec [b, T, d]``, ``h_enc [b, N + 1, d]`` → logits ``[b, T, N + 2]``."""
        a_e = jnp.einsum("bnd,dce->bnce", h_enc, self.enc_kernel[...]) + self.enc_bias[...]
        a_d = jnp.einsum("btd,dce->btce", h_dec, self.dec_kernel[...]) + self.dec_bias[...]
        s = jnp.einsum("btce,bnce->btnc", a_d, a_e) / math.sqrt(h_dec.shape[-1])
        s = jnp.concatenate([s, jnp.zeros((*s.shape[:2], 1, s.shape[-1]), s.dtype)], axis=2)
        return jnp.einsum("btnc,c->btn", s, self.combine[...]) + self.combine_bias[...]


class OAT(nnx.Module):
    """The Object-level Attention Transformer (module docstring).

    Args:
      cfg: sizes.
      pe_table: ``[pe_rows, ceil(d_pe / 3)]`` learned table (:func:`projects.oat.pe.learn_table`).
      max_dec_len: decoder length ``T_max + 1`` (sizes the temporal PE).
    """

    def __init__(self, cfg: OATConfig, pe_table: np.ndarray, max_dec_len: int, *,
                 rngs: nnx.Rngs):
        cfg.validate()
        want = (cfg.pe_rows, pe_lib.part_width(cfg.d_pe))
        if tuple(pe_table.shape) != want:
            raise ValueError(f"OAT: pe_table has shape {pe_table.shape}, expected {want}")
        self.cfg = cfg
        self.pe_table = PETable(jnp.asarray(pe_table, jnp.float32))
        self.time_pe = PETable(jnp.asarray(sinusoidal(max_dec_len, cfg.d_model)))
        self.cnn = CNNEmbedding(cfg, rngs)
        self.encoder = nnx.List([EncoderLayer(cfg, rngs) for _ in range(cfg.enc_layers)])
        self.decoder = nnx.List([DecoderLayer(cfg, rngs) for _ in range(cfg.dec_layers)])
        self.pointer = ObjectAttention(cfg, rngs)

    # -- embeddings -----------------------------------------------------------------------------

    def token_table(self, crops: jax.Array, target: jax.Array) -> jax.Array:
        """Embeddings of every pointer token: ``[b, N + 3, d_model]`` (objects with flag
        ``1[i == target]``, the target token = EOS, PAD zeros, BOS).

        Args:
          crops: ``[b, N, H, W, 3]``; target: ``[b]`` int.
        """
        cfg = self.cfg
        b = crops.shape[0]
        app = self.cnn(crops)  # [b, N, d_app]
        i = jnp.arange(cfg.n)
        r, c = i // cfg.cols, i % cfg.cols
        tab = self.pe_table[...]
        flags = (i[None, :] == target[:, None]).astype(jnp.int32)  # decoder flag: is the target
        obj = jnp.concatenate([app, pe_lib.object_pe(tab, r[None], c[None], flags, cfg.d_pe)], -1)
        tgt_app = jnp.take_along_axis(app, target[:, None, None], axis=1)[:, 0]
        tgt = jnp.concatenate([tgt_app, pe_lib.object_pe(
            tab, target // cfg.cols, target % cfg.cols, jnp.ones_like(target), cfg.d_pe)], -1)
        bos_app = self.cnn(jnp.ones((1, cfg.crop_h, cfg.crop_w, 3), crops.dtype))[0]
        bos = jnp.concatenate([bos_app, pe_lib.object_pe(
            tab, jnp.int32(cfg.rows // 2), jnp.int32(cfg.cols // 2), jnp.int32(0), cfg.d_pe)])
        pad = jnp.zeros((b, 1, cfg.d_model), obj.dtype)
        return jnp.concatenate([obj, tgt[:, None], pad, jnp.broadcast_to(bos, (b, 1, cfg.d_model))],
                               axis=1)

    def encode(self, table: jax.Array, seed: jax.Array | None = None) -> jax.Array:
        """Encoder over ``[objects (flag 0), target token (flag 1)]`` → ``[b, N + 1, d_model]``."""
        cfg = self.cfg
        keys = SeedSequence(seed)
        i = jnp.arange(cfg.n)
        enc_pe = pe_lib.object_pe(self.pe_table[...], i // cfg.cols, i % cfg.cols,
                                  jnp.zeros_like(i), cfg.d_pe)
        objects = jnp.concatenate([table[:, :cfg.n, :cfg.d_app],
                                   jnp.broadcast_to(enc_pe, (table.shape[0], *enc_pe.shape))], -1)
        x = jnp.concatenate([objects, table[:, cfg.n:cfg.n + 1]], axis=1)
        for layer in self.encoder:
            x = layer(x, keys)
        return x

    def decode_logits(self, table: jax.Array, memory: jax.Array, dec_in: jax.Array,
                      seed: jax.Array | None = None) -> jax.Array:
        """``dec_in [b, L]`` token indices (BOS, fixations, PAD) → logits ``[b, L, N + 2]``."""
        cfg = self.cfg
        keys = SeedSequence(seed)
        y = jnp.take_along_axis(table, dec_in[..., None], axis=1)
        length = dec_in.shape[1]
        y = dropout(y + self.time_pe[...][:length], cfg.dropout, keys())
        mask = Mask(causal=True, kv_valid=dec_in != cfg.pad)
        for layer in self.decoder:
            y = layer(y, memory, mask, keys)
        return self.pointer(y, memory)

    def __call__(self, crops: jax.Array, target: jax.Array, dec_in: jax.Array,
                 seed: jax.Array | None = None) -> jax.Array:
        """Teacher-forced logits ``[b, L, N + 2]``; dropout on when ``seed`` (a ``uint32``
        scalar, :mod:`common.dropout`) is given."""
        s_enc, s_dec = (None, None) if seed is None else (fold_seed(seed, 1), fold_seed(seed, 2))
        table = self.token_table(crops, target)
        memory = self.encode(table, s_enc)
        return self.decode_logits(table, memory, dec_in, s_dec)


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars (the PE tables are not parameters)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def decode(model: OAT, crops: jax.Array, target: jax.Array, max_len: int,
           key: jax.Array | None = None) -> jax.Array:
    """Autoregressive scanpaths (spec §6): ``[b, max_len]`` int32 tokens (objects or EOS).

    Step 1 cannot choose EOS or PAD; later steps cannot choose PAD. ``key`` None is greedy
    (argmax), otherwise each step samples from the softmax. The chosen token is fed back as the
    next decoder input; the caller cuts each row at its first EOS (:func:`to_scanpaths`).
    """
    cfg = model.cfg
    b = crops.shape[0]
    table = model.token_table(crops, target)
    memory = model.encode(table)
    length = max_len + 1
    dec_in0 = jnp.full((b, length), cfg.pad, jnp.int32).at[:, 0].set(cfg.bos)
    banned0 = jnp.zeros(cfg.n + 2, bool).at[cfg.pad].set(True)

    def step(dec_in, t):
        logits = model.decode_logits(table, memory, dec_in)
        lt = jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)  # [b, N + 2]
        banned = banned0.at[cfg.eos].set(t == 0)
        lt = jnp.where(banned, -jnp.inf, lt)
        if key is None:
            nxt = jnp.argmax(lt, axis=-1).astype(jnp.int32)
        else:
            nxt = jax.random.categorical(jax.random.fold_in(key, t), lt, axis=-1).astype(jnp.int32)
        dec_in = jax.lax.dynamic_update_slice(dec_in, nxt[:, None], (0, t + 1))
        return dec_in, nxt

    _, out = jax.lax.scan(step, dec_in0, jnp.arange(max_len))
    return out.T


def to_scanpaths(tokens: np.ndarray, eos: int) -> list[np.ndarray]:
    """Cut each row of ``tokens [b, T]`` at its first EOS (a row without EOS keeps all)."""
    out = []
    for row in np.asarray(tokens):
        stop = np.flatnonzero(row == eos)
        out.append(row[: stop[0]] if len(stop) else row)
    return out
