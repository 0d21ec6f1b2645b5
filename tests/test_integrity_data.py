"""Broken VOC data never passes silently: the reader raises on first read, `check-data` lists all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from attrpreserve.data import VOCDataModule, VOCDataset, eval_transform
from attrpreserve.data.check import main, validate_data
from attrpreserve.data.voc import DataError
from tests.conftest import HEIGHT, SEG_IDS, TRAIN_IDS, VAL_IDS, WIDTH, voc_id, voc_mask, write_voc_folder


def _xml(voc: Path, index: int) -> Path:
    return voc / "Annotations" / f"{voc_id(index)}.xml"


def _edit_xml(voc: Path, index: int, old: str, new: str) -> Path:
    path = _xml(voc, index)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


def _drop_objects(voc: Path, index: int) -> Path:
    path = _xml(voc, index)
    path.write_text(re.sub(r"<object>.*?</object>\n?", "", path.read_text(), flags=re.S))
    return path


def _row(ids: list[str], index: int) -> int:
    return ids.index(voc_id(index))


# ------------------------------------------------------------------------------ on first read
def test_mask_of_other_size_names_both_files_and_sizes(tmp_path):
    voc = write_voc_folder(tmp_path, mask_scale={1: 2})
    ds = VOCDataset(voc, "val", segmentation=True)  # construction reads no mask
    with pytest.raises(ValueError) as err:
        ds[_row(SEG_IDS, 1)]
    message = str(err.value)
    assert f"SegmentationClass/{voc_id(1)}.png" in message and f"JPEGImages/{voc_id(1)}.jpg" in message
    assert f"{2 * WIDTH}x{2 * HEIGHT}" in message and f"{WIDTH}x{HEIGHT}" in message
    assert "expected a mask of its image's size" in message
    # the other items read, and resizing after reading (the eval transform) still happens
    assert torch.equal(ds[_row(SEG_IDS, 5)]["mask"], torch.from_numpy(voc_mask(5)).long())
    resized = VOCDataset(voc, "val", segmentation=True, transform=eval_transform(32))
    assert resized[_row(SEG_IDS, 2)]["mask"].shape == (32, 32)


def test_xml_size_other_than_the_image_names_both_files_and_sizes(tmp_path):
    voc = write_voc_folder(tmp_path)
    xml = _edit_xml(voc, 2, f"<width>{WIDTH}</width>", "<width>500</width>")
    ds = VOCDataset(voc, "train")
    ds[_row(TRAIN_IDS, 1)]
    with pytest.raises(ValueError) as err:
        ds[_row(TRAIN_IDS, 2)]
    message = str(err.value)
    assert str(xml) in message and f"JPEGImages/{voc_id(2)}.jpg" in message
    assert f"500x{HEIGHT}" in message and f"{WIDTH}x{HEIGHT}" in message and "<size>" in message


def test_xml_without_size_is_accepted_and_a_broken_size_is_not(tmp_path):
    voc = write_voc_folder(tmp_path)
    _edit_xml(voc, 1, f"<size><width>{WIDTH}</width><height>{HEIGHT}</height><depth>3</depth></size>", "")
    ds = VOCDataset(voc, "train")
    assert ds[_row(TRAIN_IDS, 1)]["image"].shape == (3, HEIGHT, WIDTH)
    xml = _edit_xml(voc, 3, f"<height>{HEIGHT}</height>", "<height>forty</height>")
    with pytest.raises(ValueError, match=rf"{re.escape(str(xml))}.*<size>.*positive integer"):
        VOCDataset(voc, "train")


def test_duplicate_ids_name_the_split_file_and_the_ids_at_construction(tmp_path):
    voc = write_voc_folder(tmp_path)
    split = voc / "ImageSets" / "Main" / "train.txt"
    split.write_text("\n".join(TRAIN_IDS + [voc_id(2), voc_id(0), voc_id(2)]) + "\n")
    with pytest.raises(ValueError) as err:
        VOCDataset(voc, "train")
    message = str(err.value)
    assert str(split) in message and "2 image ids more than once" in message
    assert repr(voc_id(2)) in message and repr(voc_id(0)) in message and repr(voc_id(1)) not in message
    with pytest.raises(ValueError, match=r"ImageSets/Main/train\.txt.*more than once"):
        VOCDataModule(voc, num_workers=0).setup("fit")
    VOCDataset(voc, "val")  # the other splits are fine


def test_image_without_objects_names_the_xml_in_a_classification_split(tmp_path):
    voc = write_voc_folder(tmp_path)
    xml = _drop_objects(voc, 4)  # in Main/val and Segmentation/val
    with pytest.raises(ValueError, match=rf"{re.escape(str(xml))}.*no object.*expected at least one <object>"):
        VOCDataset(voc, "val")
    seg = VOCDataset(voc, "val", segmentation=True)  # the localisation split's truth is its mask
    assert seg[_row(SEG_IDS, 4)]["labels"].sum() == 0
    VOCDataset(voc, "train")  # image 4 is in no training split


def test_only_difficult_objects_without_difficult_is_a_negative_image_not_an_error(tmp_path):
    voc = write_voc_folder(tmp_path)
    path = _xml(voc, 0)
    path.write_text(path.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>"))
    ds = VOCDataset(voc, "train", include_difficult=False)
    assert ds[_row(TRAIN_IDS, 0)]["labels"].sum() == 0
    assert VOCDataset(voc, "train")[_row(TRAIN_IDS, 0)]["labels"].sum() == 3


def test_data_error_is_a_value_error_carrying_the_problem(tmp_path):
    voc = write_voc_folder(tmp_path, corrupt_image=1)
    with pytest.raises(DataError) as err:
        VOCDataset(voc, "train")[_row(TRAIN_IDS, 1)]
    problem = err.value.problem
    assert isinstance(err.value, ValueError) and problem.file == voc / "JPEGImages" / f"{voc_id(1)}.jpg"
    assert str(err.value) == str(problem) == f"{problem.what}; expected {problem.expected}."


# ------------------------------------------------------------------------------ whole folder
def test_validate_data_clean_folder(voc_root):
    report = validate_data(voc_root.parent.parent)  # a parent of VOCdevkit/VOC2012 is fine too
    assert report.ok and report.problems == [] and report.root == voc_root
    assert report.splits == ["Main/train", "Main/val", "Segmentation/val"]
    assert report.num_images == len(set(TRAIN_IDS + VAL_IDS + SEG_IDS)) == 6
    assert report.summary() == "6 images checked, 0 problems"


def test_validate_data_lists_every_problem_with_the_readers_messages(tmp_path):
    voc = write_voc_folder(tmp_path, corrupt_image=1, mask_scale={4: 2})
    split = voc / "ImageSets" / "Main" / "val.txt"
    split.write_text("\n".join(VAL_IDS + [voc_id(5)]) + "\n")
    wrong_size = _edit_xml(voc, 2, f"<height>{HEIGHT}</height>", "<height>41</height>")
    no_object = _drop_objects(voc, 3)

    report = validate_data(voc)
    assert not report.ok and report.num_images == 6
    assert [p.file for p in report.problems] == [
        split,  # split files first, then images in the order the splits list them
        voc / "JPEGImages" / f"{voc_id(1)}.jpg",
        wrong_size,
        no_object,
        voc / "SegmentationClass" / f"{voc_id(4)}.png",
    ]
    # the dataset runs the same checks: the same messages, each on first read (or construction)
    seg = VOCDataset(voc, "val", segmentation=True)
    expected = []
    for read in (lambda: VOCDataset(voc, "val"), lambda: seg[_row(SEG_IDS, 1)], lambda: seg[_row(SEG_IDS, 2)],
                 lambda: VOCDataset(voc, "train"), lambda: seg[_row(SEG_IDS, 4)]):
        with pytest.raises(ValueError) as err:
            read()
        expected.append(str(err.value))
    assert [str(p) for p in report.problems] == expected
    seg[_row(SEG_IDS, 5)]  # the one clean image of the split reads


def test_validate_data_missing_files_splits_and_root(tmp_path):
    voc = write_voc_folder(tmp_path, missing_mask=5, missing_xml=2)
    report = validate_data(voc, splits=["Main/train", "Segmentation/val", "Segmentation/trainaug"])
    assert [p.file.name for p in report.problems] == ["trainaug.txt", f"{voc_id(2)}.xml", f"{voc_id(5)}.png"]
    assert "listed in" in report.problems[1].what and report.num_images == 6
    assert validate_data(voc, splits=["Main/train"]).problems[0].file.name == f"{voc_id(2)}.xml"
    with pytest.raises(ValueError, match=r"Expected argument `splits` to hold split names.*'train'"):
        validate_data(voc, splits=["train"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        validate_data(tmp_path / "nowhere")


def test_main_prints_summary_and_one_line_per_problem(tmp_path, voc_root, capsys):
    assert main([str(voc_root)]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("6 images checked, 0 problems")

    voc = write_voc_folder(tmp_path / "broken", corrupt_mask=2, unknown_class=3)
    assert main([str(voc), "--split", "Main/train", "--split", "Segmentation/val"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("6 images checked, 2 problems") and len(lines) == 3
    assert f"SegmentationClass/{voc_id(2)}.png" in lines[1]  # image 2 comes before image 3 in Main/train
    assert "'unicorn'" in lines[2] and f"{voc_id(3)}.xml" in lines[2] and "expected one of the VOC" in lines[2]
    assert main([str(voc), "--split", "Main/val"]) == 0  # images 4 and 5 only

    for argv, message in (([str(tmp_path / "nowhere")], "does not exist"), ([str(voc), "--split", "x"], "`splits`")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("usage: attrpreserve check-data") and message in err
