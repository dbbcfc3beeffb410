"""Each backend name runs what it says; ``auto`` picks and logs; ``einsum_unit_free``."""

import itertools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import common.attention.backends as backends
from common.attention import BackendUnsupported, Mask, dot_product_attention
from common.attention.backends import einsum_unit_free
from tests.common.attention.test_core import _allowed, _qkv, brute_force


@pytest.mark.parametrize("b,q,k,g,s", list(itertools.product((1, 2), (1, 3), (1, 2), (1, 4), (1, 5))))
def test_matches_einsum_for_every_unit_pattern(b, q, k, g, s):
    rng = np.random.default_rng(b * 1000 + q * 100 + k * 10 + g + s)
    qg = rng.standard_normal((b, q, k, g, 6)).astype(np.float32)
    kk = rng.standard_normal((b, s, k, 6)).astype(np.float32)
    got = einsum_unit_free("bqkgd,bskd->bkgqs", qg, kk)
    want = np.einsum("bqkgd,bskd->bkgqs", qg.astype(np.float64), kk.astype(np.float64))
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    p = rng.standard_normal((b, k, g, q, s)).astype(np.float32)
    got = einsum_unit_free("bkgqs,bskd->bqkgd", p, kk)
    want = np.einsum("bkgqs,bskd->bqkgd", p.astype(np.float64), kk.astype(np.float64))
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_unit_free_output_axis_under_jit():
    a = np.ones((3, 1, 2), np.float32)
    b = np.ones((3, 4, 2), np.float32)
    out = jax.jit(lambda a, b: einsum_unit_free("bid,bjd->bij", a, b))(a, b)
    np.testing.assert_allclose(np.asarray(out), np.full((3, 1, 4), 2.0))


def _dot_shapes(fn, *args) -> list[tuple[int, ...]]:
    """Operand shapes of every ``dot_general`` in ``fn``'s jaxpr."""
    shapes = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                shapes.extend(tuple(x.aval.shape) for x in eqn.invars)
            for p in eqn.params.values():  # einsum is a jitted function: look inside
                sub = getattr(p, "jaxpr", p)
                if hasattr(sub, "eqns"):
                    walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return shapes


def _run(backend, q, k, v, **kw):
    return dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), backend=backend,
                                 **kw).out


def test_reference_is_the_plain_einsum_and_matches_brute_force():
    """``reference`` keeps unit axes (one query, one KV head, batch 1) in its einsums; ``cpu``
    drops them; both give the brute-force loop's numbers."""
    rng = np.random.default_rng(0)
    q, k, v = _qkv(rng, 1, 1, 9, 4, 1, 8)
    want = brute_force(q, k, v, _allowed(1, 4, 1, 9), np.full(4, 8**-0.5))
    ref = lambda *a: _run("reference", *a)
    cpu = lambda *a: _run("cpu", *a)
    for fn in (ref, cpu):
        np.testing.assert_allclose(np.asarray(fn(q, k, v)), want, atol=2e-6)
    ref_dots, cpu_dots = _dot_shapes(ref, q, k, v), _dot_shapes(cpu, q, k, v)
    assert ref_dots and cpu_dots
    assert (1, 1, 1, 4, 8) in ref_dots  # [b, q_len, kv_heads, group, d], as the einsum spells it
    assert all(1 not in shape for shape in cpu_dots)


@pytest.mark.parametrize("s,heads,kv_heads", [(128, 2, 1), (150, 6, 2), (200, 9, 3), (257, 4, 4)])
def test_cpu_backend_equals_reference_on_long_causal(s, heads, kv_heads, monkeypatch):
    """Causal, grouped-query, odd tail chunks: the chunked path gives the reference numbers."""
    calls = []
    real = backends._chunked_causal
    monkeypatch.setattr(backends, "_chunked_causal", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(s)
    q, k, v = _qkv(rng, 1, s, s, heads, kv_heads, 8)
    got = _run("cpu", q, k, v, mask=Mask(causal=True))
    assert calls == [1]
    want = _run("reference", q, k, v, mask=Mask(causal=True))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-6, rtol=0)


@pytest.mark.parametrize("kw", [
    {"mask": Mask(causal=True)},  # short: below 2 * CAUSAL_CHUNK
    {"mask": Mask(causal=True), "softcap": 2.0},
    {"mask": Mask(causal=True, kv_valid=jnp.arange(7)[None] < 5)},
    {},
], ids=["short_causal", "softcap", "padding", "no_mask"])
def test_cpu_backend_unit_free_einsum_elsewhere(kw, monkeypatch):
    calls = []
    monkeypatch.setattr(backends, "_chunked_causal", lambda *a: calls.append(1))
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, 1, 7, 7, 6, 2, 8)
    got = _run("cpu", q, k, v, **kw)
    assert calls == []
    np.testing.assert_allclose(np.asarray(got), np.asarray(_run("reference", q, k, v, **kw)),
                               atol=2e-6, rtol=0)


def test_xla_backend_is_jax_nn_dot_product_attention(monkeypatch):
    """``xla`` calls ``jax.nn.dot_product_attention(implementation="xla")`` at any length (no CPU
    chunking behind its name)."""
    seen = []
    real = jax.nn.dot_product_attention

    def spy(*a, **kw):
        seen.append((kw["implementation"], kw["is_causal"]))
        return real(*a, **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    monkeypatch.setattr(backends, "_chunked_causal", lambda *a: pytest.fail("xla ran chunked"))
    rng = np.random.default_rng(2)
    q, k, v = _qkv(rng, 1, 150, 150, 6, 2, 8)
    got = _run("xla", q, k, v, mask=Mask(causal=True))
    assert seen == [("xla", True)]
    np.testing.assert_allclose(np.asarray(got),
                               np.asarray(_run("reference", q, k, v, mask=Mask(causal=True))),
                               atol=2e-6, rtol=0)


def test_cudnn_says_why_it_cannot_run_here():
    if jax.default_backend() == "gpu":
        pytest.skip("on a GPU cudnn may run")
    q = jnp.zeros((1, 4, 2, 8))
    with pytest.raises(BackendUnsupported, match="cudnn: needs a GPU"):
        dot_product_attention(q, q, q, backend="cudnn")


def test_auto_on_cpu_picks_the_cpu_backend(monkeypatch):
    assert backends.auto_order("cpu") == ("cpu",)
    assert backends.auto_order("gpu") == ("pallas", "cudnn", "xla")
    assert backends.auto_order("tpu") == ("pallas", "xla")
    if jax.default_backend() != "cpu":
        pytest.skip("the default platform is not CPU")
    calls = []
    real = backends._IMPLS["cpu"]
    monkeypatch.setitem(backends._IMPLS, "cpu", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(backends, "reference_attention",
                        lambda *a, **k: pytest.fail("auto ran reference on CPU"))
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, 1, 130, 130, 4, 2, 8)
    for kw in ({"mask": Mask(causal=True)}, {"softcap": 3.0}, {}):
        calls.clear()
        got = _run("auto", q, k, v, **kw)
        assert calls == [1]
        np.testing.assert_array_equal(np.asarray(got), np.asarray(_run("cpu", q, k, v, **kw)))


@pytest.fixture
def log(monkeypatch, caplog):
    monkeypatch.setattr(backends, "_LOGGED", set())
    caplog.set_level(logging.INFO, logger="common.attention.backends")
    return caplog


def test_auto_fallback_logs_its_reason_once(monkeypatch, log):
    """When no backend of ``auto``'s order serves a call, ``reference`` runs and the reason is
    logged once per distinct reason (here: ``xla`` has no softcap), also across retraces."""
    monkeypatch.setattr(backends, "auto_order", lambda platform=None: ("xla",))
    rng = np.random.default_rng(4)
    for s in (5, 6, 5):  # two shapes: two traces
        q, k, v = _qkv(rng, 1, s, s, 2, 1, 4)
        f = jax.jit(lambda q, k, v: _run("auto", q, k, v, softcap=3.0))
        np.testing.assert_allclose(np.asarray(f(q, k, v)),
                                   np.asarray(_run("reference", q, k, v, softcap=3.0)), atol=2e-6)
    warnings = [r for r in log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "falls back to 'reference'" in warnings[0].getMessage()
    assert "xla: softcap not supported" in warnings[0].getMessage()
    # A different reason is logged too; an explicitly named backend raises instead.
    monkeypatch.setattr(backends, "auto_order", lambda platform=None: ("cudnn",))
    if jax.default_backend() != "gpu":
        _run("auto", q, k, v)
        assert len([r for r in log.records if r.levelno == logging.WARNING]) == 2
    with pytest.raises(BackendUnsupported, match="softcap"):
        _run("xla", q, k, v, softcap=3.0)


def test_pattern_request_runs_reference_and_says_so_once(log):
    rng = np.random.default_rng(5)
    q, k, v = map(jnp.asarray, _qkv(rng, 1, 4, 4, 2, 2, 4))
    for _ in range(2):
        res = dot_product_attention(q, k, v, backend="cpu", return_pattern=True)
    assert res.pattern.shape == (1, 2, 4, 4)
    infos = [r.getMessage() for r in log.records if r.levelno == logging.INFO]
    assert infos == ["attention backend 'cpu': the pattern needs 'reference'"]
    dot_product_attention(q, k, v, backend="reference", return_pattern=True)
    assert len([r for r in log.records if r.levelno == logging.INFO]) == 1
