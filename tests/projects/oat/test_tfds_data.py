"""The TFDS builders on small fixtures in each official format, written here: the Amazon
repackaging (amazon_data.json + images/ + binarymask/) and the processed shelf pickle. Prepared
to ArrayRecord and read back without TensorFlow; bad input names the file and the record."""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pytest
from PIL import Image

from projects.oat import tfds_data as TD
from projects.oat.data import DataError

CELL_W, CELL_H, GAP = 12, 16, 4  # cover boxes in the fixture collages


def box(r: int, c: int) -> tuple[int, int, int, int]:
    x1, y1 = GAP + c * (CELL_W + GAP), GAP + r * (CELL_H + GAP)
    return x1, y1, x1 + CELL_W, y1 + CELL_H


def write_amazon(root, n_images=3, subjects=("s1", "s2"), corrupt=None):
    """Collages of 6 × 14 covers (cover k is a flat colour k), their masks and the json."""
    d = root / "amazon_data"
    (d / "images").mkdir(parents=True)
    (d / "binarymask").mkdir()
    w, h = 14 * (CELL_W + GAP) + GAP, 6 * (CELL_H + GAP) + GAP
    meta = {}
    for im in range(n_images):
        img = np.zeros((h, w, 3), np.uint8)
        mask = np.zeros((h, w, 3), np.uint8)
        for k in range(84):
            x1, y1, x2, y2 = box(*divmod(k, 14))
            img[y1:y2, x1:x2] = [(3 * k + im) % 256, (5 * k) % 256, 200 - k]
            mask[y1:y2, x1:x2] = 255
        name = f"img{im}.png"
        Image.fromarray(img).save(d / "images" / name)
        Image.fromarray(mask).save(d / "binarymask" / f"14x6-{name}")
        target = 14 + 5 + im  # row 1, col 5 + im
        x1, y1, x2, y2 = box(*divmod(target, 14))
        # subject fixations: inside cover 0, in a gap nearest cover 15, on the target
        fx = [[box(0, 0)[0] + 2, box(0, 0)[1] + 2], [box(1, 1)[0] - 1, box(1, 1)[1] + 8],
              [x1 + 3, y1 + 3]]
        meta[name] = {"fixations": {s: fx for s in subjects},
                      "ground_truth": [{"xmin": x1, "xmax": x2, "ymin": y1, "ymax": y2}],
                      "size": {"width": w, "height": h}, "target": f"target_{im}.jpg"}
    text = json.dumps(meta)
    (d / "amazon_data.json").write_text(text[:-5] if corrupt == "json" else text)
    return d


def test_mask_boxes_sorted_like_the_official_code():
    mask = np.zeros((60, 60), np.uint8)
    mask[30:40, 5:15] = 255   # row 2
    mask[2:12, 40:50] = 255   # row 1, right
    mask[5:15, 10:20] = 255   # row 1 (ymin 5 // 10 = 0, same band as ymin 2), left
    assert TD.mask_boxes(mask) == [(10, 5, 20, 15), (40, 2, 50, 12), (5, 30, 15, 40)]


def test_fixations_to_boxes_inside_else_nearest_centre():
    boxes = [(0, 0, 10, 10), (20, 0, 30, 10)]
    got = TD.fixations_to_boxes(np.array([[5, 5], [10, 10], [16, 5], [14, 5], [50, 50]]), boxes)
    # (10, 10) is on box 0's edge (inclusive); 16 is nearer box 1's centre (25) than box 0's (5)
    np.testing.assert_array_equal(got, [0, 0, 1, 0, 1])


def test_length_filter_drops_outside_three_std():
    recs = [{"scanpath": [0] * 5} for _ in range(30)] + [{"scanpath": [0] * 100}]
    assert len(TD.length_filter(recs)) == 30


def test_amazon_builder_prepares_and_reads_without_tensorflow(tmp_path):
    manual = tmp_path / "manual"
    write_amazon(manual, n_images=5)
    cfg = TD.OatConfig(name="tiny", crop_h=15, crop_w=9)
    builder = TD.prepare("amazon", manual, tmp_path / "tfds", config=cfg)
    sizes = {s: len(builder.as_data_source(split=s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 8, "validation": 1, "test": 1}  # 10 records, 80 / 10 / 10
    ex = TD.read_split(builder, "train")[0]
    assert ex["crops"].shape == (84, 15, 9, 3) and ex["crops"].dtype == np.uint8
    im = int(ex["layout_id"][3:])
    assert int(ex["target"]) == 19 + im
    np.testing.assert_array_equal(ex["scanpath"], [0, 15, 19 + im])
    # cover k is a flat colour, so its resized crop is that colour (RGB, not BGR)
    np.testing.assert_array_equal(ex["crops"][7, 7, 4], [(21 + im) % 256, 35, 193])
    assert ex["tgt_id"] == str(im) and ex["fix_xy"].shape == (3, 2)  # gaze["target"][7]
    assert "tensorflow" not in sys.modules


def test_amazon_split_file_is_used(tmp_path):
    manual = tmp_path / "manual"
    write_amazon(manual, n_images=5)
    order = list(range(10))[::-1]
    (manual / "splitlist_all_amazon.txt").write_text("\n".join(map(str, order)))
    builder = TD.prepare("amazon", manual, tmp_path / "tfds",
                         config=TD.OatConfig(name="tiny", crop_h=15, crop_w=9))
    assert [int(x["uid"]) for x in TD.read_split(builder, "test")] == [0]
    assert [int(x["uid"]) for x in TD.read_split(builder, "validation")] == [1]


def test_amazon_malformed_json_names_the_file(tmp_path):
    manual = tmp_path / "manual"
    write_amazon(manual, n_images=1, corrupt="json")
    with pytest.raises(DataError, match="amazon_data.json: not valid JSON"):
        TD.amazon_records(manual, 15, 9)


def test_amazon_missing_field_names_the_record(tmp_path):
    d = write_amazon(tmp_path, n_images=2)
    meta = json.loads((d / "amazon_data.json").read_text())
    del meta["img1.png"]["ground_truth"]
    (d / "amazon_data.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"record 'img1.png': missing or malformed field"):
        TD.amazon_records(tmp_path, 15, 9)


def shelf_record(i, qid="Q1", target=3, seq=(1, 5, 3), n=22):
    return {"package_target": [target], "package_seq": list(seq),
            "X": [100.0 + k for k in range(len(seq))], "Y": [500.0] * len(seq),
            "question_img_feature": [np.full((150, 93, 3), (k % 11) / 10, np.float32)
                                     for k in range(n)],
            "id": qid, "tgt_id": "T1_2", "pair": "T1_2Q1_4", "layout_id": "Q1_4",
            "sub_id": 7 + i}


def write_shelf(root, records):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / TD.OatShelf.PICKLE, "wb") as f:
        pickle.dump(records, f)


def test_shelf_builder_reads_the_official_pickle(tmp_path):
    recs = [shelf_record(i) for i in range(10)] + [shelf_record(99, qid="Q3", n=27)]
    write_shelf(tmp_path / "manual", recs)
    builder = TD.prepare("wine", tmp_path / "manual", tmp_path / "tfds")
    splits = {s: TD.read_split(builder, s) for s in ("train", "validation", "test")}
    assert [len(v) for v in splits.values()] == [8, 1, 1]
    ex = splits["train"][0]
    assert ex["crops"].shape == (22, 150, 93, 3)
    np.testing.assert_array_equal(ex["scanpath"], [0, 4, 2])  # 1-based -> 0-based
    assert int(ex["target"]) == 2 and ex["layout_id"] == "Q1_4"
    assert int(ex["crops"][5, 0, 0, 0]) == 128  # 0.5 * 255 rounded
    g = TD.geometry("wine")
    np.testing.assert_allclose(g.centres[12], [1 * 152 + 76, 152 + 449 + 224.5])


def test_shelf_index_out_of_range_names_the_record(tmp_path):
    recs = [shelf_record(0), shelf_record(1, seq=(1, 23, 2))]  # object 23 of 22 (1-based)
    write_shelf(tmp_path, recs)
    with pytest.raises(DataError, match=r"record 1 \(layout Q1_4, subject 8\): scanpath position "
                                        r"1 points at object 22, which does not exist"):
        TD.shelf_records(tmp_path / TD.OatShelf.PICKLE, "wine")


def test_shelf_pickle_refuses_code_and_garbage(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump([Evil()], f)
    with pytest.raises(DataError, match=r"evil.pkl: not a readable dataset pickle.*builtins.print"):
        TD.read_pickle(tmp_path / "evil.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="junk.pkl: not a readable dataset pickle"):
        TD.read_pickle(tmp_path / "junk.pkl")


def test_missing_manual_files_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no amazon_data.json"):
        TD.amazon_records(tmp_path)
    with pytest.raises(FileNotFoundError, match="needs data_dir"):
        TD.load_splits("amazon", "")
