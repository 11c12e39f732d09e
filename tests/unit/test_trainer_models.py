"""The reference trainer's models and data sets."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from hpo_trial import data, env, models, reporting, train


def test_mobilenetv3_small_has_the_papers_size_and_parts() -> None:
    model = models.build("mobilenetv3_small", num_classes=1000, in_channels=3)
    parameters = sum(p.numel() for p in model.parameters())
    assert 2.4e6 < parameters < 2.7e6  # the paper's 2.5M
    assert sum(isinstance(m, models.SqueezeExcite) for m in model.modules()) == 9
    assert any(isinstance(m, nn.Hardswish) for m in model.modules())
    assert sum(isinstance(m, models.InvertedResidual) and m.residual for m in model.modules()) == 6
    assert models.SPECS["mobilenetv3_small"].total_stride == 32
    model.eval()
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1000)


def test_the_tiny_model_takes_8x8_digits() -> None:
    model = models.build("tiny", num_classes=10, in_channels=1)
    assert sum(p.numel() for p in model.parameters()) < 50_000
    assert any(isinstance(m, models.SqueezeExcite) for m in model.modules())
    assert model(torch.zeros(4, 1, 8, 8)).shape == (4, 10)


def test_an_unknown_model_is_an_error_that_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="mobilenetv3_small, tiny"):
        models.build("resnet", 10, 3)


def test_digits_are_split_the_same_way_whatever_the_seed() -> None:
    torch.manual_seed(1)
    first = data.digits(8, 0.2)
    torch.manual_seed(2)
    second = data.digits(8, 0.2)
    assert torch.equal(first.val_y, second.val_y)
    assert len(first.train_y) + len(first.val_y) == 1797
    assert set(first.val_y.tolist()) == set(range(10))
    assert float(first.train_x.max()) == 1.0 and float(first.train_x.min()) == 0.0


def test_digits_are_upsampled_on_request() -> None:
    assert data.digits(32, 0.2).train_x.shape[1:] == (1, 32, 32)


def make_folder(root: Path, per_class: int = 4) -> Path:
    from PIL import Image

    for name, colour in [("roses", (220, 20, 20)), ("tulips", (20, 20, 220))]:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20 + i, 12), colour).save(root / name / f"{i}.png")
    (root / "roses" / "notes.txt").write_text("not an image")
    return root


def test_an_image_folder_is_read_with_classes_from_sub_folders(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    ds = data.image_folder(make_folder(tmp_path / "flowers"), image_size=16, val_fraction=0.25)
    assert ds.classes == ("roses", "tulips")
    assert ds.train_x.shape == (6, 3, 16, 16) and ds.train_x.dtype == torch.uint8
    assert sorted(ds.val_y.tolist()) == [0, 1]
    assert ds.flip
    red = ds.train_x[ds.train_y == 0][0]
    assert int(red[0].min()) > 200 and int(red[2].max()) < 40


def test_a_folder_without_classes_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match="two class sub-folders"):
        data.image_folder(tmp_path, 16, 0.2)
    with pytest.raises(data.DataError, match="not a folder"):
        data.image_folder(tmp_path / "missing", 16, 0.2)


def test_an_image_folder_without_pillow_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(data.DataError, match="pip install pillow"):
        data.image_folder(tmp_path, 16, 0.2)


@pytest.fixture
def restore_signals() -> Iterator[None]:
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


@pytest.mark.usefixtures("restore_signals")
def test_the_trainer_trains_on_an_image_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("PIL")
    for name in [v for k, v in vars(env).items() if k.startswith("HPO_")]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HPO_REPORT_FILE", str(tmp_path / "reports.jsonl"))
    monkeypatch.setattr(reporting, "_default", None)
    folder = make_folder(tmp_path / "flowers")
    argv = ["--dataset", str(folder), "--model", "tiny", "--image-size", "16", "--epochs", "2"]
    argv += ["--batch-size", "3"]
    assert train.main([*argv, "--checkpoint-dir", str(tmp_path / "ckpt")]) == 0
    reports = [json.loads(line) for line in (tmp_path / "reports.jsonl").read_text().splitlines()]
    assert [r["resource"] for r in reports] == [1, 2]
    assert all(0.0 <= r["value"] <= 1.0 for r in reports)
