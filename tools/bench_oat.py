"""Benchmark OAT training: ours (JAX, the shared train step) vs a PyTorch re-implementation of
the official model (``HKUST-NISL/oat_eccv24`` ``Seq2SeqTransformer`` with ``CAVersion=3``) at
the same size, forward + backward + clipped Adam, on CPU, measured in the same run.

    python -m tools.bench_oat [--size quick|paper] [--steps 10] [--batch 20] [--threads 1 2]
    python -m tools.bench_oat --size paper --profile /tmp/oat_trace   # ours' top ops, one step

``quick`` = the quick config's model (d_model 128, 2 + 2 layers, 4 × 6 objects of 12 × 8 crops);
``paper`` = the paper's model (d_model 512, 4 + 4 layers, FFN 512, 6 × 14 objects of 150 × 93
crops). Batch 20 (the paper's), decoder length 17 (quick) / 21 (paper). Target: ours ≥ 1.5×
PyTorch steps/s.

Each side runs in its own worker process (the paper-size batch of 20 does not fit twice in
23 GB in one process), both compiled and warmed up first; then the parent asks them for one step
at a time, **interleaved** (ours, torch with 1 thread, torch with 2 threads, ours, ...), so that
load from other processes on a shared machine falls on every side alike; an idle worker waits
on its pipe. Reported: median wall time per step, process CPU time per step (less sensitive to
other processes' load), the load average, and the work: the model FLOPs of a step
(:func:`train_flops`: convolutions and matrix products, the backward twice the forward, none for
the images' gradient) against the speed of a large float32 matrix product measured in the same
run by each framework, i.e. how close each side is to the fastest this CPU multiplies.

Ours runs the CNN's convolution + max-pool blocks through the C++ kernels of
:mod:`common.native` where they build (the report line names them: ``C++`` or ``XLA``;
``HEADLAB_NATIVE=0`` measures the XLA path). Ours embeds each object's crop once per trial
and gathers the decoder's tokens from those embeddings (the decoder's tokens are fixations of
the same crops, plus one all-ones BOS crop); the official model runs its CNN on every encoder
and decoder token, which this PyTorch model keeps: ``N + 1 + T + 1`` crops per trial against
our ``N`` (+ 1 per batch).

The PyTorch model mirrors the official layout (sequence-first ``nn.TransformerEncoder`` and
``nn.TransformerDecoder`` without a final norm, the CNN per crop of both the encoder and the
decoder sequence, the two-head ``Cross_Attention`` pointer with a 0 PAD logit and a
``Linear(2, 1)`` readout). One deliberate difference: the object PE is gathered with tensor
indexing, where the official ``calculate3DPositional_learned`` loops in Python over every
(position, batch) pair; the ratio is therefore against a faster PyTorch model than the official
one. :func:`load_ours` copies our parameters into it (the tests check the logits and the
gradients agree).
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

from projects.oat import pe as pe_lib
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


def train_flops(cfg: OATConfig, max_len: int, b: int, crops: int) -> float:
    """Model FLOPs of one training step: ``crops`` CNN passes and ``b`` trials of the transformer
    (matrix products and convolutions, 2 per multiply-add; backward = 2 × forward, except the
    first convolution, which needs no gradient for its images)."""
    (c1, c2), (k1, k2), p1 = cfg.channels, cfg.kernels, cfg.pools[0]
    h1, w1 = cfg.crop_h - k1 + 1, cfg.crop_w - k1 + 1
    h2, w2 = h1 // p1 - k2 + 1, w1 // p1 - k2 + 1
    hf, wf = cfg.cnn_out_hw()
    conv1 = 2 * h1 * w1 * k1 * k1 * 3 * c1
    rest = 2 * h2 * w2 * k2 * k2 * c1 * c2 + 2 * c2 * hf * wf * cfg.d_app
    s, t, d, f = cfg.n + 1, max_len + 1, cfg.d_model, cfg.d_ff
    enc = 8 * s * d * d + 4 * s * s * d + 4 * s * d * f
    dec = 8 * t * d * d + 4 * t * t * d + 4 * (t + s) * d * d + 4 * t * s * d + 4 * t * d * f
    ptr = 2 * (s + t) * d * d * cfg.pointer_heads + 2 * t * s * d * cfg.pointer_heads
    per_trial = cfg.enc_layers * enc + cfg.dec_layers * dec + ptr
    return float(crops * (2 * conv1 + 3 * rest) + 3 * b * per_trial)


def crops_per_step(cfg: OATConfig, max_len: int, b: int, side: str) -> int:
    """CNN passes per step: ours ``b·N + 1`` (objects once, one BOS crop), the official model
    ``b·(N + 1 + T + 1)`` (every encoder and decoder token)."""
    return b * cfg.n + 1 if side == "ours" else b * (cfg.n + 1 + max_len + 1)


class JaxSide:
    """Our model in the shared train step (:func:`common.train.make_train_step`), jitted."""

    def __init__(self, cfg: OATConfig, max_len: int, b: int):
        import jax
        import jax.numpy as jnp

        from common.sharding import make_mesh
        from common.sharding.state import sharded_init
        from common.train import make_train_step
        from projects.oat import pe as pe_lib
        from projects.oat import train as T

        self.jax = jax
        table = pe_lib.learn_table(cfg.pe_rows, pe_lib.part_width(cfg.d_pe), steps=100)
        task = T.make_task(cfg, table, max_len, seed=0)
        tx = T.optimiser(1e-4, 1.0)
        init = sharded_init(task.make_model, tx, make_mesh())
        self.fn = jax.jit(make_train_step(init.model_def, task.loss_fn, tx), donate_argnums=0)
        self.state = init.create()
        self.batch = {k: jnp.asarray(v) for k, v in batch(cfg, max_len, b).items()}
        self.mm = jax.jit(lambda a, c: a @ c)
        self.mm_args = (jnp.ones((1024, 1024), jnp.float32), jnp.ones((1024, 1024), jnp.float32))

    def step(self, threads: int) -> None:
        del threads  # XLA:CPU's own thread pool
        self.state, m, _ = self.fn(self.state, self.batch)
        self.jax.block_until_ready(m["loss"])

    def matmul(self) -> None:
        self.jax.block_until_ready(self.mm(*self.mm_args))


class TorchSide:
    """The PyTorch model: forward, CE (PAD ignored), backward, clip 1.0, Adam 1e-4."""

    def __init__(self, cfg: OATConfig, max_len: int, b: int):
        torch.manual_seed(0)
        table = np.random.default_rng(0).normal(size=(cfg.pe_rows, pe_lib.part_width(cfg.d_pe)))
        self.cfg = cfg
        self.model = TorchOAT(cfg, table, max_len + 1).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.batch = {k: torch.as_tensor(v).long() if v.dtype != np.float32 else torch.as_tensor(v)
                      for k, v in batch(cfg, max_len, b).items()}
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=cfg.pad)
        self.mm_args = (torch.ones(1024, 1024), torch.ones(1024, 1024))

    def step(self, threads: int) -> None:
        torch.set_num_threads(threads)
        b, m = self.batch, self.model
        logits = m(b["crops"], b["target"], b["dec_in"])
        loss = self.loss_fn(logits.reshape(-1, self.cfg.n + 2), b["dec_out"].reshape(-1))
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        self.opt.step()

    def matmul(self) -> None:
        torch.set_num_threads(2)
        self.mm_args[0] @ self.mm_args[1]


def worker(side: str, size: str, b: int) -> None:
    """A worker process: build, compile and warm up one side, then serve ``step THREADS`` /
    ``matmul`` / ``quit`` lines from stdin, answering ``WALL CPU`` seconds per request."""
    if side == "ours":
        from common.xla_flags import enable_xnn

        enable_xnn()  # as ``headlab run`` does (XNNPACK fusion on CPU), before JAX starts
    cfg, max_len = SIZES[size], MAX_LEN[size]
    t0 = time.perf_counter()
    runner = JaxSide(cfg, max_len, b) if side == "ours" else TorchSide(cfg, max_len, b)
    runner.step(1)
    runner.matmul()
    cnn = "-"
    if side == "ours":
        from common import native

        cnn = "C++" if native.available() else "XLA"
    print(f"ready {time.perf_counter() - t0:.3f} {cnn}", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        t0, c0 = time.perf_counter(), time.process_time()
        if cmd[0] == "matmul":
            for _ in range(5):
                runner.matmul()
        else:
            runner.step(int(cmd[1]))
        print(f"{time.perf_counter() - t0:.6f} {time.process_time() - c0:.6f}", flush=True)


class Worker:
    """The parent's handle on a worker process (one request at a time)."""

    def __init__(self, side: str, size: str, b: int):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.bench_oat", "--worker", side, "--size", size,
             "--batch", str(b)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=pathlib.Path(__file__).resolve().parents[1])
        self.side = side

    def ready(self) -> str:
        """Wait for the worker; returns the CNN's kernels (``C++``/``XLA``, ``-`` for torch)."""
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            raise RuntimeError(f"bench_oat: the {self.side} worker failed to start "
                               f"(exit {self.proc.wait()})")
        return line[2]

    def ask(self, cmd: str) -> tuple[float, float]:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        wall, cpu = self.proc.stdout.readline().split()
        return float(wall), float(cpu)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        self.proc.wait()


def profile(size: str, b: int, out: pathlib.Path, top: int = 15) -> None:
    """Trace one step of ours (XLA's per-op traceme events, ``jax.profiler.trace``) and print
    the op time summed by op name (numeric suffixes dropped; ops run per chunk of a scan are
    marked ``[scan]``), with the traced step's wall time: op time ≈ wall means the ops ran one
    after another."""
    import collections
    import gzip
    import json
    import re

    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_enable_xprof_traceme=true").strip()
    from common.xla_flags import enable_xnn

    enable_xnn()
    import jax

    runner = JaxSide(SIZES[size], MAX_LEN[size], b)
    runner.step(2)
    runner.step(2)
    with jax.profiler.trace(str(out)):
        t0, c0 = time.perf_counter(), time.process_time()
        runner.step(2)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    trace = max(out.glob("**/*.trace.json.gz"), key=lambda f: f.stat().st_mtime)
    events = json.load(gzip.open(trace))["traceEvents"]
    hlo_op = re.compile(r"[a-z][a-z0-9_\-]*(\.\d+)?")  # XLA's op names, not runtime events
    ops = [e for e in events if e.get("ph") == "X" and "dur" in e and e["name"] != "while"
           and hlo_op.fullmatch(e["name"])]
    calls = collections.Counter(e["name"] for e in ops)
    total: collections.Counter = collections.Counter()
    for e in ops:
        name = re.sub(r"\.\d+$", "", e["name"])
        total[("[scan] " if calls[e["name"]] > 1 else "") + name] += e["dur"] / 1e6
    op_time = sum(total.values())
    print(f"OAT {size}, batch {b}: one traced step {wall:.2f} s wall, {cpu:.2f} s CPU, "
          f"{op_time:.2f} s of op time; top ops by name (trace in {out}):")
    for name, t in total.most_common(top):
        print(f"  {t * 1e3:8.0f} ms  {t / op_time:4.0%}  {name}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=tuple(SIZES), default="quick")
    ap.add_argument("--steps", type=int, default=10, help="timed steps of each side")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2],
                    help="torch thread counts to time (the fastest counts)")
    ap.add_argument("--profile", type=pathlib.Path, metavar="DIR",
                    help="instead: trace one step of ours into DIR and print its top ops")
    ap.add_argument("--worker", choices=("ours", "torch"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.profile:
        profile(a.size, a.batch, a.profile)
        return
    if a.worker:
        worker(a.worker, a.size, a.batch)
        return
    cfg, max_len = SIZES[a.size], MAX_LEN[a.size]
    load0 = os.getloadavg()[0]
    workers, cnn = {}, {}
    try:
        for side in ("ours", "torch"):  # one at a time: compile and warm-up peaks don't overlap
            workers[side] = Worker(side, a.size, a.batch)
            cnn[side] = workers[side].ready()
        variants = [("ours", 2)] + [("torch", n) for n in a.threads]
        times: dict[tuple[str, int], list[tuple[float, float]]] = {v: [] for v in variants}
        for _ in range(a.steps):
            for side, n in variants:
                times[(side, n)].append(workers[side].ask(f"step {n}"))
        peak = {side: 5 * 2 * 1024**3 / min(w.ask("matmul")[0] for _ in range(3))
                for side, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    load1 = os.getloadavg()[0]
    wall = {v: float(np.median([t[0] for t in ts])) for v, ts in times.items()}
    cpu = {v: float(np.median([t[1] for t in ts])) for v, ts in times.items()}
    best = min((v for v in variants if v[0] == "torch"), key=wall.get)
    ours = ("ours", 2)
    peak_best = max(peak.values())
    print(f"OAT {a.size} (d_model {cfg.d_model}, {cfg.enc_layers}+{cfg.dec_layers} layers, "
          f"{cfg.n} objects of {cfg.crop_h}x{cfg.crop_w}, batch {a.batch}, decoder {max_len + 1}); "
          f"{a.steps} interleaved steps per side, load average {load0:.1f} -> {load1:.1f} on "
          f"{os.cpu_count()} CPUs")
    print(f"  float32 1024^3 matmul: JAX {peak['ours'] / 1e9:.0f} GFLOP/s, "
          f"PyTorch {peak['torch'] / 1e9:.0f} GFLOP/s (2 threads)")
    for v in variants:
        side, n = v
        crops = crops_per_step(cfg, max_len, a.batch, side)
        flops = train_flops(cfg, max_len, a.batch, crops)
        name = (f"ours (JAX, {cnn['ours']} CNN kernels)" if side == "ours"
                else f"PyTorch, {n} thread{'s' * (n > 1)}")
        print(f"  {name:31s} {1 / wall[v]:7.2f} steps/s  ({wall[v] * 1e3:7.0f} ms wall, "
              f"{cpu[v] * 1e3:7.0f} ms CPU per step; {crops} crops, {flops / 1e9:.1f} GFLOP = "
              f"{flops / wall[v] / 1e9:.0f} GFLOP/s, {flops / wall[v] / peak_best:.0%} of the "
              "matmul rate)")
    ratio = wall[best] / wall[ours]
    print(f"  ratio ours / PyTorch (its fastest, {best[1]} thread{'s' * (best[1] > 1)}): "
          f"{ratio:.2f}x wall (target >= 1.5x); CPU time per step {cpu[best] / cpu[ours]:.2f}x")
    bound = train_flops(cfg, max_len, a.batch, crops_per_step(cfg, max_len, a.batch, "ours"))
    print(f"  bound: our step's {bound / 1e9:.1f} GFLOP at the matmul rate take "
          f"{bound / peak_best * 1e3:.0f} ms, at most {wall[best] * peak_best / bound:.1f}x "
          "PyTorch's step")
    verdict = "met" if ratio >= 1.5 else "NOT met"
    print(f"  target >= 1.5x {verdict}: ours runs at {bound / wall[ours] / peak_best:.0%} of the "
          f"matmul rate and uses {cpu[ours] / wall[ours]:.2f} of {os.cpu_count()} cores "
          f"(PyTorch, {best[1]} thread{'s' * (best[1] > 1)}: {cpu[best] / wall[best]:.2f})")


if __name__ == "__main__":
    main()
