"""The metrics collector, python -m hpo_trial.collect: what it reads from output, files and event
files, in this process (tests/integration/test_collect_commands.py runs it around real commands)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hpo_trial.collect import (
    Collector,
    Extractor,
    FileSource,
    FollowedFile,
    LineParser,
    Options,
    TensorBoardSource,
    expand_variables,
)
from hpo_trial.transports import FileTransport
from tests.support.fake_kube_api import FakeApi, cluster_reporter, make_sa_dir, serving

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


# --- lines ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("epoch=3 accuracy=0.91", {"epoch": 3, "accuracy": 0.91}),  # Katib's format
        ("epoch = 3, accuracy = 9.1e-1.", {"epoch": 3, "accuracy": 0.91}),
        (
            "{'eval_loss': 0.36, 'eval_accuracy': 0.88, 'epoch': 1.0}",
            {"eval_loss": 0.36, "eval_accuracy": 0.88, "epoch": 1.0},
        ),
        ('{"epoch": 2, "val/acc": 0.5}', {"epoch": 2, "val/acc": 0.5}),
        ("INFO:root:epoch: 4 | val_acc: 0.75 | lr: 1e-3", {"epoch": 4, "val_acc": 0.75, "lr": 0.001}),
        ("12:30:45 step=100 loss=nan", {"step": 100}),  # loss: nan is matched, see below
        ("Epoch 3: 100%|#####| 32/32 [00:01<00:00, v_num=0, val_acc=0.912]", {"v_num": 0, "val_acc": 0.912}),
        ("accuracy=0.9s epoch=3x version=1.2.3", {}),  # a number with a unit is no number
        ("xaccuracy=0.5", {"xaccuracy": 0.5}),
    ],
)
def test_the_default_pattern_reads_name_value_pairs(line: str, expected: dict[str, float]) -> None:
    found = LineParser(None).parse(line)
    found.pop("loss", None)
    assert found == expected


def test_not_finite_values_are_read_as_such() -> None:
    found = LineParser(None).parse("epoch=2 accuracy=NaN loss=-inf")
    assert found["epoch"] == 2 and found["accuracy"] != found["accuracy"] and found["loss"] == float("-inf")


def test_lines_without_the_names_that_matter_are_passed_over() -> None:
    parser = LineParser(None, ("accuracy", "epoch"))
    assert parser.parse("loss=0.3 lr=0.1") == {}
    assert parser.parse("epoch=1 loss=0.3") == {"epoch": 1, "loss": 0.3}


def test_a_custom_pattern_names_its_metrics_by_group_or_by_name_and_value() -> None:
    by_group = LineParser(r"Epoch (?P<epoch>\d+)/\d+ .* val_accuracy: (?P<accuracy>[\d.]+)")
    line = "Epoch 3/10 - 2s - loss: 0.2 - val_accuracy: 0.9140"
    assert by_group.parse(line) == {"epoch": 3, "accuracy": 0.914}
    pairs = LineParser(r"(?P<name>[a-z/]+)\s+->\s+(?P<value>\S+)")
    assert pairs.parse("val/acc -> 0.5 epoch -> 2 tag -> x") == {"val/acc": 0.5, "epoch": 2}


def test_a_pattern_may_mix_pairs_and_named_groups_as_for_otx_1s_validation_lines() -> None:
    parser = LineParser(r"Epoch\(val\) \[(?P<epoch>\d+)\]|(?P<name>[\w-]+): (?P<value>[-+.\deE]+)")
    line = "2024-05-10 12:00:00,123 | INFO : Epoch(val) [3][10]\taccuracy_top-1: 0.9100, accuracy_top-5: 1.0"
    assert parser.parse(line) == {"epoch": 3, "accuracy_top-1": 0.91, "accuracy_top-5": 1.0}


def test_records_become_reports_at_their_resource() -> None:
    x = Extractor("accuracy", ("epoch", "step"), offset=1, clock=lambda: 7.0)
    assert x.take({"accuracy": 0.5}) is None and x.without_resource == 1  # no resource yet
    assert x.take({"epoch": 0, "loss": 0.4}) is None  # a resource alone: remembered
    found = x.take({"accuracy": 0.6, "loss": 0.3})
    assert found is not None and (found.resource, found.value, found.extra, found.at) == (
        1,
        0.6,
        {"loss": 0.3},
        7.0,
    )
    found = x.take({"step": 9, "epoch": 1, "accuracy": 0.7})
    assert found is not None and (found.resource, found.extra) == (2, {"step": 9})


def send_records(collector: Collector, epochs: Sequence[float]) -> None:
    """What the collector's sender does with records read in this order, up to the command's end."""
    for epoch in epochs:
        collector._found({"epoch": epoch, "score": epoch / 10})
    collector._queue.put(None)
    collector._send_all()


def test_reports_to_the_cluster_are_thinned_the_last_written_and_all_journaled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "HPO_MAX_RESOURCE": "10",
        "HPO_STATUS_POINTS": "2",
        "HPO_CHECKPOINT_DIR": str(tmp_path),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HPO_RUNG_LEVELS", raising=False)
    monkeypatch.delenv("HPO_STOP_RESOURCE", raising=False)
    api = FakeApi()
    with serving(api) as url:
        transport = cluster_reporter(url, make_sa_dir(tmp_path)).transport
        collector = Collector(Options(kind="stdout", command=["train"], metric="score"), transport=transport)
        send_records(collector, range(1, 10))
    # 5 apart: the two sizing reports, 7, and 9 (the last, held, written at the command's end).
    assert [(r["seq"], r["resource"]) for r in api.reports] == [(0, 1), (1, 2), (6, 7), (8, 9)]
    assert collector.delivered == 4
    journal = [json.loads(line) for line in (tmp_path / "reports.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in journal] == list(range(9))


def test_reports_to_a_report_file_are_not_thinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_MAX_RESOURCE", "10")
    monkeypatch.setenv("HPO_STATUS_POINTS", "2")
    path = tmp_path / "reports.jsonl"
    collector = Collector(
        Options(kind="stdout", command=["train"], metric="score"), transport=FileTransport(path)
    )
    send_records(collector, [k / 2 for k in range(1, 20)])
    assert [json.loads(line)["seq"] for line in path.read_text().splitlines()] == list(range(19))


def test_variables_in_a_path_are_expanded_from_the_environment() -> None:
    assert (
        expand_variables("$(HPO_CHECKPOINT_DIR)/logs/$(NOPE)", {"HPO_CHECKPOINT_DIR": "/c"})
        == "/c/logs/$(NOPE)"
    )


# --- files ------------------------------------------------------------------------------------------------


def test_a_csv_file_is_followed_through_appends_partial_lines_and_a_rewrite_with_a_new_header(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.csv"
    path.write_bytes(b"epoch,step,train_loss\r\n0,0,0.9\r\n0,1,0.8\r\n")
    followed = FollowedFile(path, csv=True)
    assert followed.read() == [
        {"epoch": 0, "step": 0, "train_loss": 0.9},
        {"epoch": 0, "step": 1, "train_loss": 0.8},
    ]
    with path.open("ab") as f:
        f.write(b"1,2,0.7\r\n1,3,0.")
    assert followed.read() == [{"epoch": 1, "step": 2, "train_loss": 0.7}]  # a row is read once whole
    # CSVLogger rewrites the file with a wider header when validation logs its first value.
    path.write_bytes(
        b"epoch,step,train_loss,val_acc\r\n0,0,0.9,\r\n0,1,0.8,\r\n1,2,0.7,\r\n1,3,0.6,\r\n1,3,,0.55\r\n"
    )
    assert followed.read() == [
        {"epoch": 1, "step": 3, "train_loss": 0.6},
        {"epoch": 1, "step": 3, "val_acc": 0.55},
    ]
    assert followed.read() == []


def test_a_json_lines_file_with_nested_objects_and_a_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"epoch": 1, "val": {"acc": 0.5, "name": "x"}, "ok": true}\n{"epoch": 2')
    followed = FollowedFile(path, csv=False)
    assert followed.read() == [{"epoch": 1, "val.acc": 0.5}]
    with path.open("a") as f:
        f.write(', "val": {"acc": 0.6}}')
    assert followed.read() == []
    assert followed.read(final=True) == [{"epoch": 2, "val.acc": 0.6}]


def test_files_there_before_the_start_are_read_from_where_they_were(tmp_path: Path) -> None:
    (tmp_path / "v0").mkdir()
    (tmp_path / "v0" / "metrics.csv").write_text("epoch,acc\n0,0.1\n")
    source = FileSource(str(tmp_path / "*" / "metrics.csv"), None)
    source.start()
    with (tmp_path / "v0" / "metrics.csv").open("a") as f:
        f.write("1,0.2\n")
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "metrics.csv").write_text("epoch,acc\n2,0.3\n")
    assert source.read() == [{"epoch": 1, "acc": 0.2}, {"epoch": 2, "acc": 0.3}]


# --- tensorboard -------------------------------------------------------------------------------------------


def _summary_writer(folder: Path) -> Any:
    pytest.importorskip("tensorboard")
    tensorboard = pytest.importorskip("torch.utils.tensorboard")
    return tensorboard.SummaryWriter(log_dir=str(folder))


def test_tensorboard_scalars_by_step_and_a_resource_tag_written_after_the_metric(tmp_path: Path) -> None:
    writer = _summary_writer(tmp_path / "old")
    writer.add_scalar("acc", 0.1, 1)
    writer.flush()
    source = TensorBoardSource(str(tmp_path), "acc", None)
    source.prepare()  # the earlier run's file: skipped
    writer.add_scalar("acc", 0.25, 2)
    writer.add_scalar("loss", 0.5, 2)
    writer.flush()
    assert source.read() == [{"acc": 0.25, "loss": 0.5, "step": 2}]
    writer.close()
    # Lightning's TensorBoardLogger: the step is the global step and the epoch a scalar of its own,
    # logged after the metrics.
    lightning = _summary_writer(tmp_path / "new")
    source = TensorBoardSource(str(tmp_path / "new"), "val_acc", "epoch")
    lightning.add_scalar("val_acc", 0.75, 31)
    lightning.flush()
    assert source.read() == []  # its epoch is not there yet
    lightning.add_scalar("epoch", 0, 31)
    lightning.add_scalar("train_loss", 0.3, 40)
    lightning.flush()
    assert source.read() == [{"val_acc": 0.75, "epoch": 0}]
    lightning.close()


def test_tensorboard_scalars_written_as_tensors_as_tensorflow_2_does(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util.tensor_util import make_tensor_proto

    writer = EventFileWriter(str(tmp_path))
    for step, (acc, epoch) in enumerate([(0.25, 1), (0.5, 2)], start=10):
        values = [
            summary_pb2.Summary.Value(
                tag=tag,
                tensor=make_tensor_proto(value),
                metadata=summary_pb2.SummaryMetadata(
                    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
                ),
            )
            for tag, value in (("val/acc", acc), ("epoch", epoch), ("note", [1.0, 2.0]))
        ]
        writer.add_event(
            event_pb2.Event(step=step, wall_time=time.time(), summary=summary_pb2.Summary(value=values))
        )
    writer.flush()
    source = TensorBoardSource(str(tmp_path), "val/acc", "epoch")
    assert source.read() == [{"val/acc": 0.25, "epoch": 1}, {"val/acc": 0.5, "epoch": 2}]  # not a vector
    writer.close()


# --- the command -----------------------------------------------------------------------------------------
