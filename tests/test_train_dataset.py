"""kohya-style training folders: repeats, captions, trigger words, bad input."""
import json

import pytest
from PIL import Image

from lora_core.train.dataset import DatasetError, load_image_tensor, scan_folder, with_trigger


def _img(path, colour=(200, 10, 10), size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_repeat_folders_captions_and_class_words(tmp_path):
    _img(tmp_path / "10_red thing" / "a.png")
    (tmp_path / "10_red thing" / "a.txt").write_text("red square, plain\n")
    _img(tmp_path / "10_red thing" / "b.jpg")  # no caption: the folder's class words
    _img(tmp_path / "2_other" / "c.png")
    (tmp_path / "2_other" / "c.caption").write_text("blue, sky")
    _img(tmp_path / "notes" / "ignored.png")  # not <n>_<name>: skipped
    ds = scan_folder(tmp_path)
    by_name = {i.image.name: i for i in ds.items}
    assert set(by_name) == {"a.png", "b.jpg", "c.png"}
    assert by_name["a.png"].caption == "red square, plain" and by_name["a.png"].repeats == 10
    assert by_name["b.jpg"].caption == "red thing"
    assert by_name["c.png"].caption == "blue, sky" and by_name["c.png"].subset == "2_other"
    assert ds.num_train_images == 22
    assert sorted(ds.epoch_order()) == sorted([0] * 10 + [1] * 10 + [2] * 2)
    assert ds.subsets == {"10_red thing": {"n_repeats": 10, "img_count": 2}, "2_other": {"n_repeats": 2, "img_count": 1}}
    freq = json.loads(ds.tag_frequency_json())
    assert freq == {"10_red thing": {"red square": 1, "plain": 1, "red thing": 1}, "2_other": {"blue": 1, "sky": 1}}


def test_trigger_is_prepended_once(tmp_path):
    _img(tmp_path / "1_x" / "a.png")
    (tmp_path / "1_x" / "a.txt").write_text("a cat")
    _img(tmp_path / "1_x" / "b.png")
    (tmp_path / "1_x" / "b.txt").write_text("lcstyle, a dog")
    ds = scan_folder(tmp_path, trigger="lcstyle")
    assert [i.caption for i in ds.items] == ["lcstyle, a cat", "lcstyle, a dog"]
    assert with_trigger("", "tok") == "tok"
    assert with_trigger("tok", "tok") == "tok"
    assert with_trigger("token, x", "tok") == "tok, token, x"


def test_flat_folder_is_one_subset(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("hello")
    ds = scan_folder(tmp_path)
    assert [(i.caption, i.repeats) for i in ds.items] == [("hello", 1)]


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "5_empty").mkdir()
    with pytest.raises(DatasetError, match="no training images"):
        scan_folder(tmp_path)


def test_image_tensor_resize_crop_and_bad_file(tmp_path):
    p = _img(tmp_path / "wide.png", colour=(255, 0, 0), size=(40, 20))
    t = load_image_tensor(p, 16)
    assert tuple(t.shape) == (3, 16, 16)
    assert float(t[0].min()) == pytest.approx(1.0) and float(t[1].max()) == pytest.approx(-1.0)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="bad.png"):
        load_image_tensor(bad, 16)
