"""`camlt data check`: histograms, shot groups, missing / undecodable files, JSON."""

import json

import pytest
from imagefiles import image_folder, imagenet_lt, write_jpeg, write_lines

from camlt.cli import main
from camlt.data.check import check


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["data", "check", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_shot_groups_and_histogram_from_a_split_file_alone(tmp_path, capsys):
    counts = {0: 150, 1: 101, 2: 100, 3: 20, 4: 19, 5: 2}  # many 2, medium 2, few 2
    lines = [f"train/c{c}/{j}.jpg {c}" for c, n in counts.items() for j in range(n)]
    path = write_lines(tmp_path / "train.txt", lines)
    code, out, _ = run_cli(capsys, str(path), "--json")
    report = json.loads(out)
    assert code == 0
    assert (report["num_classes"], report["num_images"]) == (6, 392)
    assert (report["many"], report["medium"], report["few"]) == (2, 2, 2)
    assert (report["missing"], report["corrupt"], report["files_checked"]) == (0, 0, False)
    assert report["counts"] == list(counts.values()) and report["imbalance_factor"] == 75
    assert {"images": "101-200", "classes": 2} in report["histogram"]
    code, out, _ = run_cli(capsys, str(path))
    assert "many 2, medium 2, few 2" in out and "pass --image-root" in out


def test_gaps_in_labels_are_reported(tmp_path):
    path = write_lines(tmp_path / "s.txt", ["a.jpg 0", "b.jpg 3"])
    report = check(path)
    assert not report["labels_contiguous"] and report["absent_labels"] == [1, 2]


def test_missing_and_corrupt_files_named_counted_and_fatal_on_request(tmp_path, capsys):
    root = tmp_path / "inet"
    files = imagenet_lt(root, val_foldered=True)  # the split file's val paths need a mapping
    (root / "val/n01443537/ILSVRC2012_val_00000003.JPEG").unlink()
    (root / "val/n01440764/ILSVRC2012_val_00000001.JPEG").write_bytes(b"")
    (root / "val/n01484850/ILSVRC2012_val_00000005.JPEG").write_bytes(b"\xff\xd8garbage")
    code, out, _ = run_cli(capsys, str(files["test"]), "--image-root", str(root), "--json")
    report = json.loads(out)
    assert code == 0 and report["missing"] == 1 and report["corrupt"] == 1  # zero-byte only
    assert report["missing_files"] == [f"{files['test']}:3: val/ILSVRC2012_val_00000003.JPEG"]
    assert "suffix" in report["path_mapping"] and "5/6 images found" in report["path_mapping"]
    args = [str(files["test"]), "--image-root", str(root), "--decode", "--workers", "1"]
    code, out, err = run_cli(capsys, *args, "--strict")
    assert code == 1 and "3 missing, undecodable or outside-the-root" in err
    assert "undecodable: 2" in out and "ILSVRC2012_val_00000005.JPEG: " in out


def test_folder_check_and_malformed_line(tmp_path, capsys):
    root = image_folder(tmp_path / "pets", {"cat": 3, "dog": 2})
    (root / "dog" / "img_1.jpg").write_bytes(b"")
    report = check(root)
    assert report["classes"] == ["cat", "dog"] and report["counts"] == [3, 2]
    assert report["corrupt"] == 1 and report["missing"] == 0
    bad = write_lines(tmp_path / "bad.txt", ["a.jpg 0", "b.jpg x"])
    code, _, err = run_cli(capsys, str(bad))
    assert code == 2 and "bad.txt:2: label 'x' is not an integer" in err


@pytest.mark.parametrize("n", [437_513])
def test_inat_sized_split_file_is_fast(tmp_path, n):
    import time

    lines = [f"train_val2018/c/{i % 8142}/{i}.jpg {i % 8142}" for i in range(n)]
    path = write_lines(tmp_path / "inat.txt", lines)
    start = time.perf_counter()
    report = check(path)
    assert report["num_images"] == n and report["num_classes"] == 8142
    # the issue asks for under a minute; on a 2-core EPYC it took 32 s beside two training runs
    # and 46 s beside them and the rest of the suite, so a tighter bound would fail by load alone
    assert time.perf_counter() - start < 60


def test_a_csv_is_checked_against_the_files_beside_it_as_training_reads_it(tmp_path):
    for i in range(3):
        write_jpeg(tmp_path / "img" / f"{i}.jpg", i % 2, seed=i)
    rows = ["path,label", "img/0.jpg,cat", "img/1.jpg,dog", "img/2.jpg,cat", "img/9.jpg,dog"]
    csv = write_lines(tmp_path / "list.csv", rows)
    report = check(csv)
    assert report["files_checked"] and report["image_root"] == str(tmp_path)
    assert report["missing"] == 1 and "list.csv:5" in report["missing_files"][0]
