"""The shipped classification sets (``$HEADLAB_DATA/classification``, see ../shared/data/SOURCES.md)
read into ``Example(text, label)`` lists, with their prompt templates and label words.

Every record is checked: a missing or unknown label, a malformed line, an empty text raise
:class:`ACTDataError` naming the file, the line and the fault (``headlab`` prints one line).

Splits. ACT evaluates on each dataset's validation/test split; only those are shipped (plus CB
train, SST-5 test, MR test). Where a second file exists it supplies the demonstrations and the
head-search (calibration) examples; otherwise one seeded permutation of the evaluation file is
cut into disjoint demonstration, calibration and evaluation parts (:func:`split`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib

import numpy as np

from common.data.errors import DataError


class ACTDataError(DataError):
    """A malformed classification file or record (file, line and fault in the message)."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One input: ``text`` (the fields joined by the template's own layout) and ``label`` (the
    class id, the index into :attr:`Dataset.names`)."""

    fields: tuple[str, ...]
    label: int


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How a dataset is read and prompted.

    ``names``: class names in id order (``labels.json``); ``words``: the label word of each
    class (scored as the first token of ``" " + word``); ``instruction``, ``template`` (with
    ``{0}``, ``{1}`` for the fields) and ``answer`` (the text before the label word).
    """

    name: str
    eval_file: str
    pool_file: str | None
    names: tuple[str, ...]
    words: tuple[str, ...]
    instruction: str
    template: str
    answer: str


_SENT = "Classify the sentiment of each sentence."
SPECS: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec("sst2", "sst2/stsa.binary.dev.txt", None, ("negative", "positive"),
                ("negative", "positive"), _SENT, "Sentence: {0}", "Sentiment:"),
    DatasetSpec("sst5", "sst5/stsa.fine.dev.txt", "sst5/stsa.fine.test.txt",
                ("very negative", "negative", "neutral", "positive", "very positive"),
                ("terrible", "bad", "okay", "good", "great"), _SENT, "Sentence: {0}",
                "Sentiment:"),
    DatasetSpec("mr", "mr/validation.jsonl", "mr/test.jsonl", ("negative", "positive"),
                ("negative", "positive"), "Classify the sentiment of each movie review.",
                "Review: {0}", "Sentiment:"),
    DatasetSpec("subj", "subj/test_sample2000.jsonl", None, ("objective", "subjective"),
                ("objective", "subjective"), "Is each sentence objective or subjective?",
                "Input: {0}", "Type:"),
    # TREC: ACT's words matched to the classes by name (its release indexes them in the legacy
    # order; see SOURCES.md 2.5): ABBR -> Expression, ENTY -> Entity, DESC -> Description, ...
    DatasetSpec("trec", "trec/test.txt", None, ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"),
                ("Expression", "Entity", "Description", "Person", "Location", "Number"),
                "Classify the type of answer each question asks for.", "Question: {0}",
                "Answer type:"),
    DatasetSpec("agnews", "agnews/test_first2000.csv", None,
                ("World", "Sports", "Business", "Sci/Tech"),
                ("World", "Sports", "Business", "Technology"),
                "Classify the topic of each news article.", "Article: {0}", "Topic:"),
    DatasetSpec("cb", "cb/val.jsonl", "cb/train.jsonl", ("entailment", "contradiction", "neutral"),
                ("Yes", "No", "Maybe"), "Does the premise imply the hypothesis?",
                "Premise: {0}\nHypothesis: {1}", "Answer:"),
    DatasetSpec("boolq", "boolq/val_first1000.jsonl", None, ("false", "true"),
                ("False", "True"), "Answer each question about the passage.",
                "Passage: {0}\nQuestion: {1}?", "Answer:"),
)}
DATASETS = tuple(SPECS)


def data_root() -> pathlib.Path:
    """``$HEADLAB_DATA/classification`` (default ``../shared/data/classification``)."""
    return pathlib.Path(os.environ.get("HEADLAB_DATA", "../shared/data")) / "classification"


def _bad(path, line: int, what: str) -> ACTDataError:
    return ACTDataError(f"{path}:{line}: {what}")


def _label(path, line, raw, table: dict[str, int]) -> int:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise _bad(path, line, "missing label")
    key = str(raw).strip()
    if key not in table:
        raise _bad(path, line, f"unknown class {key!r}; known: {sorted(table)}")
    return table[key]


def _label_table(spec: DatasetSpec, folder: pathlib.Path) -> dict[str, int]:
    """File label value -> class id, from the folder's ``labels.json``."""
    path = folder / "labels.json"
    try:
        meta = json.loads(path.read_text())
        names = list(meta["names"])
        values = dict(meta["file_label_values"])
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise ACTDataError(f"{path}: not a labels.json with names and file_label_values "
                           f"({e})") from None
    if spec.name == "trec":  # the file stores the coarse label itself (ABBR, DESC, ...)
        return {n: i for i, n in enumerate(names)}
    return {k: names.index(v) for k, v in values.items() if v in names}


def read_file(spec: DatasetSpec, path: pathlib.Path) -> list[Example]:
    """Every record of one file of ``spec``'s dataset, checked."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {spec.name} file not found (set HEADLAB_DATA to the "
                                "folder holding classification/)")
    table = _label_table(spec, path.parent)
    out: list[Example] = []
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows or rows[0][:1] != ["Class Index"]:
            raise _bad(path, 1, "expected the header 'Class Index,Title,Description'")
        for n, row in enumerate(rows[1:], start=2):
            if len(row) != 3:
                raise _bad(path, n, f"expected 3 fields (class, title, description), got "
                           f"{len(row)}")
            text = f"{row[1].strip()}. {row[2].strip()}".replace(" #39;", "'")
            out.append(Example((text,), _label(path, n, row[0], table)))
    elif path.suffix == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise _bad(path, n, f"not JSON ({e})") from None
            if spec.name == "cb":
                fields = (rec.get("premise"), rec.get("hypothesis"))
            elif spec.name == "boolq":
                fields = (rec.get("passage"), rec.get("question"))
            else:
                fields = (rec.get("text"),)
            if any(not isinstance(x, str) or not x.strip() for x in fields):
                raise _bad(path, n, "missing or empty text field")
            out.append(Example(tuple(x.strip() for x in fields),
                               _label(path, n, rec.get("label"), table)))
    else:  # "<label> <sentence>" (SST) or "<COARSE>:<fine> <question>" (TREC)
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            head, _, text = line.strip().partition(" ")
            if spec.name == "trec":
                head = head.partition(":")[0] if ":" in head else ""
            if not text.strip():
                raise _bad(path, n, "missing text after the label")
            out.append(Example((text.strip(),), _label(path, n, head or None, table)))
    if not out:
        raise ACTDataError(f"{path}: no records")
    return out


@dataclasses.dataclass(frozen=True)
class Splits:
    """Disjoint parts of one dataset: ``demos`` (few-shot pool), ``calib`` (head search),
    ``test`` (evaluation)."""

    spec: DatasetSpec
    demos: list[Example]
    calib: list[Example]
    test: list[Example]


def split(name: str, *, n_demo_pool: int, n_calib: int, n_test: int, seed: int = 0,
          root: pathlib.Path | None = None) -> Splits:
    """Read dataset ``name`` and cut it into demonstration, calibration and test parts.

    With a second shipped file (CB train, SST-5 test, MR test) the demonstrations and the
    calibration examples come from it and the test examples from the evaluation file; otherwise
    one seeded permutation of the evaluation file is cut into the three (disjoint). ``n_test``
    is a cap (CB has 56 validation examples).
    """
    if name not in SPECS:
        raise ACTDataError(f"unknown dataset {name!r}; shipped: {', '.join(DATASETS)}")
    spec = SPECS[name]
    root = root or data_root()
    rng = np.random.default_rng(seed)
    evals = read_file(spec, root / spec.eval_file)
    if spec.pool_file is not None:
        pool = read_file(spec, root / spec.pool_file)
        order = rng.permutation(len(pool))
        demos = [pool[i] for i in order[:n_demo_pool]]
        calib = [pool[i] for i in order[n_demo_pool:n_demo_pool + n_calib]]
        test = [evals[i] for i in rng.permutation(len(evals))[:n_test]]
    else:
        order = rng.permutation(len(evals))
        demos = [evals[i] for i in order[:n_demo_pool]]
        calib = [evals[i] for i in order[n_demo_pool:n_demo_pool + n_calib]]
        test = [evals[i] for i in order[n_demo_pool + n_calib:n_demo_pool + n_calib + n_test]]
    if len(demos) < 1 or len(test) < 1:
        raise ACTDataError(f"{name}: too few examples for {n_demo_pool} demonstrations, "
                           f"{n_calib} calibration and test examples")
    return Splits(spec, demos, calib, test)
