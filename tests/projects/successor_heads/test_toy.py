"""The toy vocabulary and list sampler; (slow) a successor head emerges in the toy model and
the weight-based scan finds it."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from projects.successor_heads import succession, tasks, toy


def test_vocab_tokenizer_and_classes():
    tok, classes = toy.toy_vocab(n_numbers=12)
    assert tok.encode(" 7") == [tok.ids[" 7"]]
    assert tok.encode(" 12") == [tok.ids[" 1"], tok.ids["<unk>"]]  # greedy, "2" unknown
    assert tok.encode("List: Monday,") == [tok.ids["List:"], tok.ids[" Monday"], tok.ids[","]]
    cl, gone = tasks.build_classes(tok, ("numbers", "days", "day_prefixes"), bare=())
    assert [c.name for c in cl] == ["numbers", "days"] and gone[0].name == "day_prefixes"
    assert len(cl[0].items) == 12 and classes[1][0][0] == tok.ids[" Monday"]


def test_sampler_builds_ordered_lists_with_wrap():
    tok, classes = toy.toy_vocab(n_numbers=12)
    sample = toy._sampler(classes, 5, 256, tok.ids["List:"], tok.ids[","])
    ids = np.asarray(sample(jax.random.key(0)))
    assert ids.shape == (256, 11)
    assert (ids[:, 0] == tok.ids["List:"]).all() and (ids[:, 2::2] == tok.ids[","]).all()
    nxt = {}
    for c, cyclic in classes:
        nxt.update({a: b for a, b in zip(c, c[1:], strict=False)})
        if cyclic:
            nxt[c[-1]] = c[0]
    items = ids[:, 1::2]
    assert all(nxt[a] == b for row in items for a, b in zip(row, row[1:], strict=False))
    days = classes[1][0]
    assert any(r[0] == days[-1] for r in items)  # Sunday -> Monday appears


@pytest.mark.slow
def test_toy_model_has_a_successor_head(tmp_path):
    model, tok, loss = toy.train_toy(steps=1500, workdir=tmp_path, progress=False)
    assert loss < 0.05
    cl, _ = tasks.build_classes(tok, ("numbers", "days", "months", "letters"), bare=())
    sc = succession.score_heads(model, cl, embed_mode="raw_embed")
    assert sc.top(1)[0][2] > 0.4 and sc.top(1)[0][0] == 0
