"""Soft injection of task embeddings (Park & Rhee 2025; SITE): per-head task embeddings from
few-shot prompts, mixed into zero-shot prompts with learnt per-head weights."""

DESCRIPTION = ("Soft Injection of Task Embeddings (Park & Rhee 2025): learnt per-head mixing of "
               "ICL task embeddings vs 0/1/5/10-shot ICL on the function-vector tasks")
