"""Benchmark OAT training: ours (JAX, the shared train step) vs a PyTorch re-implementation of
the official model (``HKUST-NISL/oat_eccv24`` ``Seq2SeqTransformer`` with ``CAVersion=3``) at
the same size, forward + backward + clipped Adam, on CPU in the same process.

    python -m tools.bench_oat [--size quick|paper] [--steps 10] [--threads N]

``quick`` = the quick config's model (d_model 128, 2 + 2 layers, 4 × 6 objects of 12 × 8 crops);
``paper`` = the paper's model (d_model 512, 4 + 4 layers, FFN 512, 6 × 14 objects of 150 × 93
crops). Batch 20 by default (``--batch``), decoder length 17 (quick) / 21 (paper). Prints
steps/s and the ratio (target:
ours ≥ 1.5× PyTorch). Timings exclude compilation / the first step; on a shared CPU they are
noisy (the median of the timed steps is used).

The PyTorch model mirrors the official layout (sequence-first ``nn.TransformerEncoder`` and
``nn.TransformerDecoder`` without a final norm, the CNN per crop of both the encoder and the
decoder sequence, the two-head ``Cross_Attention`` pointer with a 0 PAD logit and a
``Linear(2, 1)`` readout). One deliberate difference: the object PE is gathered with tensor
indexing, where the official ``calculate3DPositional_learned`` loops in Python over every
(position, batch) pair; the ratio is therefore against a faster PyTorch model than the official
one. :func:`load_ours` copies our parameters into it (the test checks the logits agree).
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn

from common.sharding import make_mesh
from common.sharding.state import sharded_init
from common.train import make_train_step
from projects.oat import pe as pe_lib
from projects.oat import train as T
from projects.oat.model import OATConfig

SIZES = {
    "quick": OATConfig(rows=4, cols=6, crop_h=12, crop_w=8, channels=(8, 16), kernels=(3, 3),
                       pools=(2, 1), d_app=64, d_pe=64, heads=4, d_ff=256, enc_layers=2,
                       dec_layers=2, pe_rows=8),
    "paper": OATConfig(),
}
MAX_LEN = {"quick": 16, "paper": 20}


class TorchCNN(nn.Module):
    """conv → ReLU → maxpool → conv → ReLU → maxpool → flatten (C, H, W) → Linear."""

    def __init__(self, cfg: OATConfig):
        super().__init__()
        (c1, c2), (k1, k2), (p1, p2) = cfg.channels, cfg.kernels, cfg.pools
        self.cnn1 = nn.Sequential(nn.Conv2d(3, c1, k1), nn.ReLU(), nn.MaxPool2d(p1))
        self.cnn2 = nn.Sequential(nn.Conv2d(c1, c2, k2), nn.ReLU(), nn.MaxPool2d(p2))
        h, w = cfg.cnn_out_hw()
        self.fc = nn.Linear(c2 * h * w, cfg.d_app)

    def forward(self, x):  # [b, l, H, W, 3] -> [b, l, d_app]
        b, n = x.shape[:2]
        y = self.cnn2(self.cnn1(x.reshape(-1, *x.shape[2:]).permute(0, 3, 1, 2)))
        return self.fc(torch.flatten(y, 1)).view(b, n, -1)


class CrossAttention(nn.Module):
    """The official ``Cross_Attention``: (decode_fc(H_dec) · encode_fc(H_enc)ᵀ, 0) / √d_k."""

    def __init__(self, d: int):
        super().__init__()
        self.decode_fc, self.encode_fc, self.d_k = nn.Linear(d, d), nn.Linear(d, d), d

    def forward(self, enc, dec):  # seq-first [n, b, d], [t, b, d] -> [t, b, n + 1, 1]
        e = self.encode_fc(enc).permute(1, 0, 2)
        dd = self.decode_fc(dec).permute(1, 2, 0)
        out = torch.bmm(e, dd).permute(2, 0, 1)
        out = torch.cat([out, out.new_zeros(*out.shape[:2], 1)], -1) / math.sqrt(self.d_k)
        return out.unsqueeze(-1)


class TorchOAT(nn.Module):
    """The official model's computation at the sizes of ``cfg`` (module docstring)."""

    def __init__(self, cfg: OATConfig, pe_table: np.ndarray, max_dec_len: int):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        enc = nn.TransformerEncoderLayer(d, cfg.heads, cfg.d_ff, cfg.dropout)
        dec = nn.TransformerDecoderLayer(d, cfg.heads, cfg.d_ff, cfg.dropout)
        self.transformer_encoder = nn.TransformerEncoder(enc, cfg.enc_layers,
                                                         enable_nested_tensor=False)
        self.transformer_decoder = nn.TransformerDecoder(dec, cfg.dec_layers)
        self.cnn_embedding = TorchCNN(cfg)
        self.cross_attentions = nn.ModuleList([CrossAttention(d) for _ in
                                               range(cfg.pointer_heads)])
        self.readout = nn.Linear(cfg.pointer_heads, 1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.register_buffer("pe", torch.as_tensor(np.asarray(pe_table, np.float32)))
        den = torch.exp(-torch.arange(0, d, 2) * math.log(10000) / d)
        pos = torch.arange(max_dec_len).reshape(-1, 1)
        tpe = torch.zeros(max_dec_len, d)
        tpe[:, 0::2], tpe[:, 1::2] = torch.sin(pos * den), torch.cos(pos * den)
        self.register_buffer("time_pe", tpe.unsqueeze(1))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def object_pe(self, rc_flag):  # [..., 3] int -> [..., d_pe]
        w = self.pe
        return torch.cat([w[rc_flag[..., 0]], w[rc_flag[..., 1]], w[rc_flag[..., 2]]],
                         -1)[..., : self.cfg.d_pe]

    def forward(self, crops, target, dec_in):
        """``crops [b, N, H, W, 3]``, ``target [b]``, ``dec_in [b, T]`` → logits ``[b, T, N + 2]``."""
        cfg = self.cfg
        b, n = crops.shape[:2]
        idx = torch.arange(n)
        rc = torch.stack([idx // cfg.cols, idx % cfg.cols], -1)
        # encoder: objects (flag 0) + the target token (its crop, flag 1)
        tgt_crop = crops[torch.arange(b), target]
        src_img = torch.cat([crops, tgt_crop[:, None]], 1)
        src_rcf = torch.cat([torch.cat([rc, torch.zeros(n, 1, dtype=torch.long)], -1)
                             .expand(b, n, 3),
                             torch.stack([target // cfg.cols, target % cfg.cols,
                                          torch.ones_like(target)], -1)[:, None]], 1)
        src = torch.cat([self.cnn_embedding(src_img), self.object_pe(src_rcf)], -1)
        # decoder: BOS (all-ones crop at the centre), fixated objects (flag = is the target)
        is_bos, is_pad = dec_in == cfg.bos, dec_in == cfg.pad
        obj = torch.where(dec_in < n, dec_in, torch.where(dec_in == cfg.eos, target[:, None], 0))
        img = crops[torch.arange(b)[:, None], obj]
        img = torch.where(is_bos[..., None, None, None], torch.ones_like(img), img)
        rcf = torch.stack([obj // cfg.cols, obj % cfg.cols,
                           (obj == target[:, None]).long()], -1)
        centre = torch.tensor([cfg.rows // 2, cfg.cols // 2, 0])
        rcf = torch.where(is_bos[..., None], centre, rcf)
        tgt = torch.cat([self.cnn_embedding(img), self.object_pe(rcf)], -1)
        tgt = torch.where(is_pad[..., None], torch.zeros_like(tgt), tgt)
        src, tgt = src.transpose(0, 1), tgt.transpose(0, 1)  # sequence-first
        t = tgt.shape[0]
        tgt = self.dropout(tgt + self.time_pe[:t])
        causal = nn.Transformer.generate_square_subsequent_mask(t)
        memory = self.transformer_encoder(src)
        out = self.transformer_decoder(tgt, memory, tgt_mask=causal,
                                       tgt_key_padding_mask=is_pad)
        att = torch.cat([ca(memory, out) for ca in self.cross_attentions], -1)
        return self.readout(att).squeeze(-1).transpose(0, 1)


def load_ours(tm: TorchOAT, params: dict) -> None:
    """Copy our parameters (``nnx.to_pure_dict`` of :class:`projects.oat.model.OAT`) into ``tm``."""
    cfg = tm.cfg
    d = cfg.d_model
    t = lambda a: torch.as_tensor(np.asarray(a, np.float32))

    def lin(mod, p):
        mod.weight.data, mod.bias.data = t(np.asarray(p["kernel"]).T), t(p["bias"])

    def mha(mod, p):
        w = [np.asarray(p[f"{k}_kernel"]).reshape(d, d).T for k in "qkv"]
        mod.in_proj_weight.data = t(np.concatenate(w, 0))
        mod.in_proj_bias.data = t(np.concatenate([np.ravel(p[f"{k}_bias"]) for k in "qkv"]))
        mod.out_proj.weight.data = t(np.asarray(p["o_kernel"]).reshape(d, d).T)
        mod.out_proj.bias.data = t(p["o_bias"])

    def ln(mod, p):
        mod.weight.data, mod.bias.data = t(p["scale"]), t(p["bias"])

    c = params["cnn"]
    for conv, p in ((tm.cnn_embedding.cnn1[0], c["conv1"]), (tm.cnn_embedding.cnn2[0], c["conv2"])):
        conv.weight.data = t(np.transpose(np.asarray(p["kernel"]), (3, 2, 0, 1)))
        conv.bias.data = t(p["bias"])
    lin(tm.cnn_embedding.fc, c["fc"])
    for layer, p in zip(tm.transformer_encoder.layers, params["encoder"].values(), strict=True):
        mha(layer.self_attn, p["attn"])
        lin(layer.linear1, p["ffn"]["up"])
        lin(layer.linear2, p["ffn"]["down"])
        ln(layer.norm1, p["ln1"])
        ln(layer.norm2, p["ln2"])
    for layer, p in zip(tm.transformer_decoder.layers, params["decoder"].values(), strict=True):
        mha(layer.self_attn, p["self_attn"])
        mha(layer.multihead_attn, p["cross_attn"])
        lin(layer.linear1, p["ffn"]["up"])
        lin(layer.linear2, p["ffn"]["down"])
        for k in ("1", "2", "3"):
            ln(getattr(layer, f"norm{k}"), p[f"ln{k}"])
    pt = params["pointer"]
    for c_, ca in enumerate(tm.cross_attentions):
        ca.encode_fc.weight.data = t(np.asarray(pt["enc_kernel"])[:, c_, :].T)
        ca.encode_fc.bias.data = t(np.asarray(pt["enc_bias"])[c_])
        ca.decode_fc.weight.data = t(np.asarray(pt["dec_kernel"])[:, c_, :].T)
        ca.decode_fc.bias.data = t(np.asarray(pt["dec_bias"])[c_])
    tm.readout.weight.data = t(np.asarray(pt["combine"])[None])
    tm.readout.bias.data = t(np.asarray(pt["combine_bias"]).reshape(1))


def batch(cfg: OATConfig, max_len: int, b: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """A random training batch (crops, target, teacher-forced decoder in/out)."""
    rng = np.random.default_rng(seed)
    n = cfg.n
    crops = rng.uniform(size=(b, n, cfg.crop_h, cfg.crop_w, 3)).astype(np.float32)
    target = rng.integers(0, n, b).astype(np.int32)
    dec_in = np.full((b, max_len + 1), cfg.pad, np.int32)
    dec_out = np.full((b, max_len + 1), cfg.pad, np.int32)
    for i in range(b):
        k = int(rng.integers(1, max_len + 1))
        s = rng.integers(0, n, k)
        dec_in[i, 0], dec_in[i, 1:k + 1] = cfg.bos, s
        dec_out[i, :k], dec_out[i, k] = s, cfg.eos
    return {"crops": crops, "target": target, "dec_in": dec_in, "dec_out": dec_out,
            "uid": np.arange(b, dtype=np.int32), "seed": np.zeros(b, np.int32)}


def jax_step_times(cfg: OATConfig, max_len: int, steps: int, b: int = 20
                   ) -> tuple[list[float], float]:
    """Per-step wall times of our jitted train step (shared ``make_train_step``) after compile."""
    table = pe_lib.learn_table(cfg.pe_rows, pe_lib.part_width(cfg.d_pe), steps=100)
    task = T.make_task(cfg, table, max_len, seed=0)
    tx = T.optimiser(1e-4, 1.0)
    init = sharded_init(task.make_model, tx, make_mesh())
    step = jax.jit(make_train_step(init.model_def, task.loss_fn, tx), donate_argnums=0)
    state = init.create()
    bt = {k: jnp.asarray(v) for k, v in batch(cfg, max_len, b).items()}
    t0 = time.perf_counter()
    state, m, _ = step(state, bt)
    jax.block_until_ready(m["loss"])
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m, _ = step(state, bt)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t0)
    return times, compile_s


def torch_step_times(cfg: OATConfig, max_len: int, steps: int, bsz: int = 20) -> list[float]:
    """Per-step wall times of the PyTorch model: forward, CE (PAD ignored), backward, clip 1.0,
    Adam 1e-4 (the first step is a warm-up, not timed)."""
    torch.manual_seed(0)
    table = np.random.default_rng(0).normal(size=(cfg.pe_rows, pe_lib.part_width(cfg.d_pe)))
    m = TorchOAT(cfg, table, max_len + 1).train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    b = {k: torch.as_tensor(v).long() if v.dtype != np.float32 else torch.as_tensor(v)
         for k, v in batch(cfg, max_len, bsz).items()}
    loss_fn = nn.CrossEntropyLoss(ignore_index=cfg.pad)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        logits = m(b["crops"], b["target"], b["dec_in"])
        loss = loss_fn(logits.reshape(-1, cfg.n + 2), b["dec_out"].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> None:
    from common.xla_flags import enable_xnn

    enable_xnn()  # as ``headlab run`` does (XNNPACK fusion on CPU), before JAX starts
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=tuple(SIZES), default="quick")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=20,
                    help="batch (the paper's 20 needs more than 23 GB at --size paper)")
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2],
                    help="torch thread counts to try (the fastest counts)")
    a = ap.parse_args(argv)
    cfg, max_len = SIZES[a.size], MAX_LEN[a.size]
    jt, compile_s = jax_step_times(cfg, max_len, a.steps, a.batch)
    ours = 1 / float(np.median(jt))
    per_threads = {}
    for n in a.threads:
        torch.set_num_threads(n)
        per_threads[n] = 1 / float(np.median(torch_step_times(cfg, max_len, a.steps, a.batch)))
    best = max(per_threads, key=per_threads.get)
    theirs = per_threads[best]
    print(f"OAT {a.size} (d_model {cfg.d_model}, {cfg.enc_layers}+{cfg.dec_layers} layers, "
          f"{cfg.n} objects of {cfg.crop_h}x{cfg.crop_w}, batch {a.batch}, decoder {max_len + 1}), "
          f"median of {a.steps} timed steps each:")
    print(f"  ours (JAX, shared train step): {ours:.2f} steps/s (compile {compile_s:.1f} s)")
    print("  PyTorch re-implementation:     " + ", ".join(
        f"{v:.2f} steps/s ({n} thread{'s' * (n > 1)})" for n, v in per_threads.items()))
    print(f"  ratio ours / PyTorch (its best): {ours / theirs:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
