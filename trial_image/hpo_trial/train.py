"""The reference trainer: ``python -m hpo_trial.train``.

Image classification with a MobileNetV3-style model on an image folder or the built-in digits. The
learning rate, batch size and weight decay come from the study's hyper-parameters (OTX names or
plain ones) over the command line's defaults; one report per epoch of the validation metric.

Exit status: 0 when trained to ``--epochs`` (or ``--stop-after``); 2 for a configuration error (bad
hyper-parameters, unknown metric, unreadable data, missing checkpoint); 128 + the signal number
when stopped by SIGTERM or SIGINT during training, which takes effect after the current batch,
keeps the last epoch's checkpoint and sends no report for the unfinished epoch. During start-up
(imports, data loading) they end the process at once, with the same status: through a handler
installed before the first slow import, since as PID 1 of a container (the trainer is the
container's command) a signal left to its default action is not delivered at all, and a trial
stopped while it starts would train on until the kubelet's SIGKILL.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn


def _end_now(signum: int, frame: FrameType | None) -> None:
    os._exit(128 + signum)


if __name__ == "__main__":
    for _signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(_signum, _end_now)

import torch  # noqa: E402 - after the start-up signal handlers
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import hpo_trial  # noqa: E402
from hpo_trial import checkpoints, data, env, hparams, models  # noqa: E402

log = logging.getLogger("hpo_trial.train")

METRICS = ("accuracy", "loss")
DEFAULT_EPOCHS = 10
FOLDER_IMAGE_SIZE = 128
EVAL_BATCH = 512


class ConfigError(Exception):
    """A configuration the trainer cannot run; exit status 2."""


class StopSignal:
    """Remembers the first SIGTERM/SIGINT so training stops at the next batch boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            log.warning("got %s: stopping after the current batch", signal.Signals(signum).name)
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hpo_trial.train",
        description="Image classification trial: reports the validation metric after every epoch.",
    )
    add = parser.add_argument
    add("--dataset", default="digits", help="'digits' (built in) or a folder of class sub-folders")
    add("--model", default="mobilenetv3_small", choices=sorted(models.SPECS))
    add("--epochs", type=int, help=f"epochs of a full training (HPO_MAX_RESOURCE, else {DEFAULT_EPOCHS})")
    add(
        "--stop-after",
        type=int,
        help="exit after this epoch (HPO_STOP_RESOURCE); the schedule still spans --epochs",
    )
    add("--lr", type=float, default=0.01, help="learning rate unless the study gives one")
    add("--batch-size", type=int, default=32, help="batch size unless the study gives one")
    add("--weight-decay", type=float, default=1e-4, help="weight decay unless the study gives one")
    add("--momentum", type=float, default=0.9, help="SGD momentum (Nesterov)")
    add("--schedule", default="cosine", choices=["cosine", "constant"], help="learning rate over --epochs")
    add("--image-size", type=int, help="pixels per side (digits: 8, or the model's stride; folders: 128)")
    add("--val-fraction", type=float, default=0.2, help="share of each class held out for validation")
    add("--seed", type=int, default=0, help="seeds initialisation, order and augmentation")
    add("--threads", type=int, default=0, help="CPU threads; 0: torch's default (OMP_NUM_THREADS, else all)")
    add("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    add("--metric", help=f"reported value: {' or '.join(METRICS)} (HPO_METRIC, else accuracy)")
    add("--checkpoint-dir", type=Path, help="HPO_CHECKPOINT_DIR, else runs/checkpoints/<trial>")
    add("--keep-checkpoints", type=int, default=2, help="newest checkpoints kept; 0 keeps all")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Plan:
    """Everything the run depends on, resolved from flags and the environment."""

    dataset: str
    model: str
    epochs: int
    stop_after: int
    hp: hparams.HParams
    momentum: float
    schedule: str
    image_size: int
    val_fraction: float
    seed: int
    device: torch.device
    threads: int
    metric: str
    checkpoint_dir: Path
    keep_checkpoints: int
    start: int | None


def make_plan(args: argparse.Namespace) -> Plan:
    defaults = hparams.HParams(args.lr, args.batch_size, args.weight_decay)
    try:
        hp = hparams.resolve(hpo_trial.hyperparameters(), defaults)
        start = env.start_resource()
        stop = env.stop_resource()
        max_resource = env.max_resource()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    epochs = args.epochs if args.epochs is not None else (max_resource or DEFAULT_EPOCHS)
    if epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    metric = args.metric or env.metric_name() or "accuracy"
    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r} is not one this trainer reports: use {' or '.join(METRICS)}")
    if not 0 < args.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    image_size = args.image_size
    if image_size is None:
        # Digits are 8x8: upsample just enough that the model's strides leave some spatial extent.
        stride = models.SPECS[args.model].total_stride
        image_size = max(8, stride) if args.dataset == "digits" else FOLDER_IMAGE_SIZE
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    folder = args.checkpoint_dir or hpo_trial.checkpoint_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return Plan(
        dataset=args.dataset,
        model=args.model,
        epochs=epochs,
        stop_after=min(epochs, args.stop_after or stop or epochs),
        hp=hp,
        momentum=args.momentum,
        schedule=args.schedule,
        image_size=image_size,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device=device,
        threads=args.threads,
        metric=metric,
        checkpoint_dir=folder,
        keep_checkpoints=args.keep_checkpoints,
        start=start,
    )


def learning_rate(plan: Plan, epoch: int) -> float:
    """The rate for 0-based ``epoch``: a function of the epoch alone, so a resumed run matches."""
    if plan.schedule == "constant":
        return plan.hp.learning_rate
    return plan.hp.learning_rate * 0.5 * (1.0 + math.cos(math.pi * epoch / plan.epochs))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ds: data.Data,
    plan: Plan,
    epoch: int,
    stop: StopSignal,
) -> float | None:
    """One pass over the training images; the mean loss, or None when stopped part-way."""
    model.train()
    # The order depends on (seed, epoch) only, so a resumed run sees what an uninterrupted one would.
    generator = torch.Generator().manual_seed(plan.seed * 1_000_003 + epoch)
    n = len(ds.train_y)
    order = torch.randperm(n, generator=generator).to(ds.train_x.device)
    batch = min(plan.hp.batch_size, n)
    total, count = 0.0, 0
    for begin in range(0, n - batch + 1, batch):  # drops the ragged last batch: BatchNorm wants > 1
        if stop.requested:
            return None
        index = order[begin : begin + batch]
        x = data.as_input(ds.train_x[index])
        if ds.flip:
            flip = (torch.rand(len(index), generator=generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = F.cross_entropy(model(x), ds.train_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        total += float(loss.detach()) * len(index)
        count += len(index)
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: nn.Module, ds: data.Data) -> tuple[float, float]:
    """Validation (accuracy, mean loss)."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for begin in range(0, len(ds.val_y), EVAL_BATCH):
        x = data.as_input(ds.val_x[begin : begin + EVAL_BATCH])
        y = ds.val_y[begin : begin + EVAL_BATCH]
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    n = len(ds.val_y)
    return correct / n, loss_sum / n


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume(plan: Plan, model: nn.Module, optimizer: torch.optim.Optimizer, ds: data.Data) -> int:
    """Loads the checkpoint to resume from, if any; returns the number of epochs already done."""
    try:
        path = checkpoints.find(plan.checkpoint_dir, plan.start)
    except checkpoints.ResumeError as exc:
        raise ConfigError(str(exc)) from exc
    done = 0 if path is None else int(checkpoints.load(path)["epoch"])
    # Later checkpoints belong to a run that is being replaced (e.g. a promotion from an earlier rung).
    checkpoints.discard_after(plan.checkpoint_dir, done)
    if path is None:
        return 0
    state = checkpoints.load(path)
    if state["model_name"] != plan.model or tuple(state["classes"]) != ds.classes:
        raise ConfigError(f"{path} is a checkpoint of another model or data set: use another folder")
    now = dataclasses.asdict(plan.hp)
    if state["hparams"] != now:
        log.warning("resuming %s, trained with %s, now with %s", path.name, state["hparams"], now)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    _restore_rng(state["rng"])
    log.info("resumed from %s (%d epochs done)", path, done)
    return done


def run(plan: Plan, stop: StopSignal) -> int:
    seed_everything(plan.seed)
    if plan.threads > 0:
        torch.set_num_threads(plan.threads)
    try:
        ds = data.load(plan.dataset, plan.image_size, plan.val_fraction).to(plan.device)
    except data.DataError as exc:
        raise ConfigError(str(exc)) from exc
    model = models.build(plan.model, len(ds.classes), ds.channels).to(plan.device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=plan.hp.learning_rate,
        momentum=plan.momentum,
        weight_decay=plan.hp.weight_decay,
        nesterov=plan.momentum > 0,
    )
    done = resume(plan, model, optimizer, ds)
    # From here a signal stops at a batch boundary; before, the start-up handler ends the process at once.
    stop.install()
    log.info(
        "training %s on %s (%d train / %d val images, %d classes, %dpx) on %s: epochs %d..%d, %s",
        plan.model, plan.dataset, len(ds.train_y), len(ds.val_y), len(ds.classes), plan.image_size,
        plan.device, done + 1, plan.stop_after, plan.hp,
    )  # fmt: skip
    for epoch in range(done, plan.stop_after):
        started = time.monotonic()
        lr = learning_rate(plan, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        train_loss = train_epoch(model, optimizer, ds, plan, epoch, stop)
        if train_loss is None or stop.requested:
            break
        accuracy, val_loss = evaluate(model, ds)
        seconds = time.monotonic() - started
        state = {
            "epoch": epoch + 1,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": _rng_state(),
            "model_name": plan.model,
            "classes": list(ds.classes),
            "hparams": dataclasses.asdict(plan.hp),
        }
        checkpoints.save(plan.checkpoint_dir, epoch + 1, state, plan.keep_checkpoints)
        value = accuracy if plan.metric == "accuracy" else val_loss
        hpo_trial.report(
            epoch + 1,
            value,
            metric=plan.metric,
            val_accuracy=accuracy,
            val_loss=val_loss,
            train_loss=train_loss,
            learning_rate=lr,
            epoch_seconds=seconds,
        )
        log.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, val accuracy %.4f (%.2f s)",
            epoch + 1, plan.epochs, train_loss, val_loss, accuracy, seconds,
        )  # fmt: skip
    if stop.signum is not None:
        log.warning("stopped by %s", signal.Signals(stop.signum).name)
        return 128 + stop.signum
    return 0


#: Longest the trainer waits at exit for its queued reports (a stopped trial's grace is 30 s).
REPORT_FLUSH_SECONDS = 20.0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        return run(make_plan(args), StopSignal())
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    finally:
        hpo_trial.flush(REPORT_FLUSH_SECONDS)  # the reports still queued, before the exit status


def exit_now(code: int) -> NoReturn:
    """Ends the process without the interpreter's teardown, which spends about a second
    unloading torch: a slot waits for its trial's process to end before the next trial starts.
    Everything the trainer wrote is closed by now (checkpoints, and the reports main() flushed);
    only the logs are flushed."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
