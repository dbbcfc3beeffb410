"""Configs of the soft_injection project (Park & Rhee 2025, spec ../shared/papers/soft_injection.md).

Full run (SmolLM2-135M-Instruct; every shipped task, 3 seeds, the official 50 x 10-shot task
embeddings and 400 Adam steps; hours on 2 CPU cores, see the README):

    headlab run soft_injection

Quick CPU run (4 small tasks of the spec's pilot, 1 seed, 20 prompts, 100 steps, 30 test items):

    headlab run soft_injection --quick

Every shipped task with the quick run's sizes (1 seed, 100 steps, 30 test items; about an hour
on 2 CPU cores, 37 min measured with ``--set test_items=10``, see the README):

    headlab run soft_injection --config default:all

A killed run resumes its selection training from the last checkpoint when rerun with the same
``--workdir``.

``--set tasks=antonym,next_item`` picks tasks; ``--set model=/path/to/model.gguf`` another model.
"""

from __future__ import annotations

import ml_collections

from common.configs import ConfigError

QUICK_TASKS = ("country-capital", "antonym", "present-past", "next_item")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: None / ``"full"`` for the full run, ``"quick"`` for the small CPU run."""
    if arg not in (None, "", "full", "quick", "all"):
        raise ConfigError(f"soft_injection get_config: unknown argument {arg!r} (use 'quick' or "
                          "'all')")
    c = ml_collections.ConfigDict()
    c.model = "smollm2-135m-instruct"
    c.mesh = ""  # "" = one device; "fsdp=4,tensor=4" loads the model sharded over a mesh
    c.tasks = ()  # () = every task file under $HEADLAB_DATA/icl_tasks
    c.skip_invalid_tasks = False  # True (with tasks = ()): leave out files that fail the checks
    c.split_seed = 32  # the function-vector split seed (70/9/21)
    c.seeds = (0, 1, 2)  # prompt sampling, demonstrations and training order
    # ---- task embedding (spec §2.3) ----
    c.n_prompts = 50  # M
    c.n_shots = 10  # N
    c.max_prompt_tokens = 1024  # longer prompts lose front demonstrations (ag_news, commonsense_qa)
    # ---- soft head selection (spec §2.4-2.6) ----
    c.steps = 400
    c.lr = 0.2
    c.val_every = 50
    c.val_items = 100  # the first items of the valid split
    c.keep_best = True  # False: the official code's behaviour (final alpha)
    c.max_train_items = 2000  # zero-shot training prompts drawn from at most this many records
    c.group_by_length = True  # one training group per padded prompt length (False: one group)
    # ---- evaluation (spec §2.7) ----
    c.shots = (1, 5, 10)
    c.test_items = 200  # the first items of each test split (0 = all)
    c.batch_size = 16
    c.embed_batch_size = 8  # task-embedding prompts per forward
    c.max_new_tokens = 20  # greedy decoding for exact match (the official --max_token)
    # ---- baselines (spec §4) and ablations (spec §2.8) ----
    c.fv_heads = 10  # function vector: top heads by average indirect effect (Todd et al.)
    c.fv_layer = -1  # the layer whose output the FV is added to; -1: n_layers // 3
    c.fv_aie_prompts = 8  # corrupted (label-shuffled) prompts per task for the indirect effect
    c.ablations = ("task_agnostic", "m1")  # one a for all tasks; t from M = 1 prompt
    c.controls = ("uniform_mix", "si_binarised")  # untrained a = 0.5; the learnt a rounded
    c.transfer = True  # cross-task transfer: alpha of task A with the embedding of task B
    c.transfer_items = 50
    c.heatmap_tasks = 24  # the first tasks shown in the selection heatmaps
    if arg in ("quick", "all"):
        c.tasks = QUICK_TASKS if arg == "quick" else ()
        c.seeds = (0,)
        c.n_prompts = 20
        c.steps = 100
        c.val_items = 20
        c.test_items = 30
        c.transfer_items = 20
        c.group_by_length = False
        c.batch_size = 32
        c.fv_aie_prompts = 4
        c.controls = ("uniform_mix",)
    if arg == "all":  # every shipped task with the quick sizes (the lead's hour-long run)
        c.fv_aie_prompts = 1  # 56 corrupted prompts in all
        c.max_train_items = 100  # the task-agnostic problem holds every task's training prompts
        c.transfer = False  # 56 x 56 task pairs
        c.ablations = ("task_agnostic",)  # M = 1 would double the 57 trained problems
        c.skip_invalid_tasks = True
        c.controls = ()
        # one group per padded prompt length: the short-prompt groups' steps then run on the
        # drawn prompts' cached prefixes within the selection's memory budget
        c.group_by_length = True
    return c


def validate(c: ml_collections.ConfigDict, check_tasks: bool = True) -> None:
    """Raise :class:`ConfigError` naming the first impossible field, and (``check_tasks``)
    :class:`~projects.soft_injection.data.TaskDataError` naming a bad task file: ``headlab run``
    validates before it makes the run directory."""
    from common.sharding.mesh import check_mesh_field

    check_mesh_field(c.mesh)
    if not c.seeds:
        raise ConfigError("config.seeds must name at least one seed")
    if c.n_prompts < 1 or c.n_shots < 1:
        raise ConfigError("config.n_prompts and config.n_shots must be >= 1")
    if c.steps < 1 or c.val_every < 1 or c.steps % c.val_every:
        raise ConfigError(f"config.steps ({c.steps}) must be a positive multiple of "
                          f"config.val_every ({c.val_every})")
    if c.lr <= 0:
        raise ConfigError(f"config.lr must be > 0, got {c.lr}")
    if (c.val_items < 1 or c.test_items < 0 or c.batch_size < 1 or c.max_train_items < 1
            or c.embed_batch_size < 1):
        raise ConfigError("config.val_items, batch_size, max_train_items >= 1; test_items >= 0")
    if any(k < 1 for k in c.shots):
        raise ConfigError(f"config.shots must be positive, got {tuple(c.shots)}")
    if c.max_prompt_tokens < 16:
        raise ConfigError("config.max_prompt_tokens must be >= 16")
    bad = [k for k in c.ablations if k not in ("task_agnostic", "m1")]
    if bad:
        raise ConfigError(f"config.ablations: unknown {bad} (known: task_agnostic, m1)")
    bad = [k for k in c.controls if k not in ("uniform_mix", "si_binarised")]
    if bad:
        raise ConfigError(f"config.controls: unknown {bad} (known: uniform_mix, si_binarised)")
    if c.fv_heads < 1 or c.fv_aie_prompts < 1 or c.max_new_tokens < 1 or c.heatmap_tasks < 1:
        raise ConfigError("config.fv_heads, fv_aie_prompts, max_new_tokens and heatmap_tasks "
                          "must be >= 1")
    if c.fv_layer >= 0 and c.fv_layer > 200:
        raise ConfigError(f"config.fv_layer {c.fv_layer} is not a layer")
    if check_tasks:  # a missing or malformed task file: TaskDataError before anything is written
        load_tasks(c)


def load_tasks(c: ml_collections.ConfigDict, skipped: list | None = None) -> list:
    """Read, check and split the config's tasks (every shipped one when ``tasks`` is empty).

    With ``skip_invalid_tasks`` (the ``all`` config) and no tasks named, a shipped file that
    fails the checks is left out and its one-line error appended to ``skipped``; otherwise
    it stops the run (:class:`~projects.soft_injection.data.TaskDataError`)."""
    from projects.soft_injection import data

    names = list(c.tasks) or list(data.available_tasks())
    if not names:
        raise data.TaskDataError(f"{data.task_root()}: no task files (set HEADLAB_DATA to the "
                                 "shared data folder)")
    need = max(c.n_shots, *c.shots) + 1
    out = []
    for n in names:
        try:
            out.append(data.load_task(n, split_seed=c.split_seed, min_train=need))
        except data.TaskDataError as e:
            if c.tasks or not c.skip_invalid_tasks:
                raise
            if skipped is not None:
                skipped.append(str(e))
    if not out:
        raise data.TaskDataError(f"{data.task_root()}: no task file passes the checks")
    return out
