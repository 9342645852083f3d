"""The one training loop every learned network of featbench goes through.

Fine-tuned CNNs (``featbench finetune``), the LSTM over code sequences (``--clf lstm``) and the
two-stage expression -> AU transfer (``featbench transfer``) differ in their data and their
loss, not in how they train. :func:`fit` owns what they share:

- **epochs and the choice of epoch on validation**: after every epoch ``evaluate(model)`` scores
  the validation subjects (never test); the best epoch by ``monitor`` is kept and restored at
  the end, and training stops after ``patience`` epochs without improvement;
- **a checkpoint per epoch** (``<checkpoint_dir>/last.pt``, written through a temporary file and
  renamed): a rerun after a crash or ``kill -9`` resumes after the last finished epoch. Every
  epoch draws its batch order and its dropout / noise from ``(seed, epoch)``, not from a stream
  carried across epochs, so a resumed run ends with the same weights as an uninterrupted one on
  CPU. A checkpoint made with other settings (``identity``) is refused, never continued;
- **speed**: on CUDA, mixed precision (bf16 where the device supports it, else fp16 with a
  gradient scaler) and channels-last images; ``zero_grad(set_to_none=True)``; the loss is summed
  on the device and read once per epoch (no per-step host sync);
- **Gaussian weight noise** (``weight_noise``, the paper's LSTM rule): before each batch's
  forward pass noise of that std is added to every trained weight and taken away again before
  the optimiser step, so the gradient is that of the noisy network and the kept weights are not
  noisy; never applied in evaluation;
- **a per-epoch log**: ``history`` rows ``epoch, train_loss, val_loss, val_score, seconds, lr``
  written to ``log_path`` (CSV) after every epoch; :func:`plot_history` draws the curves.

What a caller provides
----------------------
``train_batches(epoch, rng) -> iterable of batches``
    The epoch's batches (balanced batches from training subjects, augmentation...). ``rng`` is
    a ``numpy.random.Generator`` seeded by ``(seed, epoch)``. A batch is a tensor, a tuple /
    list / dict of them, or any object with ``.to(device)`` (a ``PackedSequence``): the loop
    moves it to the device (4-d float tensors channels-last when asked).
``step_loss(model, batch) -> scalar tensor``
    Forward pass and loss of one batch (in training mode, under autocast on CUDA).
``evaluate(model) -> dict``
    Validation metrics, called in ``eval`` mode under ``torch.inference_mode``; must hold the
    ``monitor`` key (default ``"val_score"``, higher is better; ``"val_loss"`` is minimised) and
    may hold ``val_loss`` / ``val_score`` for the log. A nan score never counts as a best.
"""

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from featbench.core import interrupt
from featbench.core.errors import UsageError
from featbench.core.threads import reader_threads, use_torch_threads
from featbench.core.workspace import atomic_path, temp_sibling

from extract.encoders import autocast_dtype, resolve_device, to_device

LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "val_score", "seconds", "lr")
CHECKPOINT = "last.pt"


@dataclass(frozen=True)
class TrainConfig:
    """How to train: the settings every learned network shares (saved with its checkpoints).

    Attributes
    ----------
    epochs : int
        At most this many epochs.
    lr, momentum, weight_decay : float
        SGD (``optimizer="sgd"``) or Adam(W) (``"adam"``) settings.
    optimizer : {"sgd", "adam"}
    patience : int or None
        Stop after this many epochs without a better ``monitor`` (None: run every epoch).
    monitor : {"val_score", "val_loss"}
        What chooses the epoch: the validation score (maximised) or loss (minimised).
    weight_noise : float
        Std of the Gaussian noise put on the trained weights for each training batch (0: none).
    grad_clip : float or None
        Clip the gradients' global norm to this.
    seed : int
    device : {"auto", "cpu", "cuda"} or "cuda:N"
    amp : bool
        Mixed precision on CUDA (ignored on CPU, where it is slower).
    channels_last : bool
        Channels-last memory format for 4-d inputs and the model.
    """

    epochs: int = 10
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    patience: object = 3
    monitor: str = "val_score"
    weight_noise: float = 0.0
    grad_clip: object = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True

    def __post_init__(self):
        if int(self.epochs) < 1:
            raise UsageError(f"--epochs must be at least 1, got {self.epochs}")
        if not float(self.lr) > 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        if self.optimizer not in ("sgd", "adam"):
            raise UsageError(f"optimizer must be sgd or adam, got {self.optimizer!r}")
        if self.monitor not in ("val_score", "val_loss"):
            raise UsageError(f"monitor must be val_score or val_loss, got {self.monitor!r}")
        if float(self.weight_noise) < 0:
            raise UsageError(f"--weight-noise must be >= 0, got {self.weight_noise}")
        if self.patience is not None and int(self.patience) < 1:
            raise UsageError(f"--patience must be at least 1, got {self.patience}")


@dataclass
class FitResult:
    """What :func:`fit` returns: the chosen epoch, its metrics and the per-epoch history."""

    best_epoch: int
    best: dict
    history: list = field(default_factory=list)
    resumed_from: int = 0
    stopped_early: bool = False
    device: str = "cpu"
    precision: str = "float32"


# --- device, precision, batches --------------------------------------------------------------
def _epoch_seed(seed, epoch):
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def _make_optimizer(params, config):
    import torch

    if config.optimizer == "adam":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


# --- checkpoints -----------------------------------------------------------------------------
def _save(path, state):
    """Write a checkpoint: tensors and plain JSON values only, so that it loads with
    ``torch.load(weights_only=True)`` (a checkpoint is a file a user may be sent)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    plain = {k: v for k, v in state.items() if k in _JSON_PARTS}
    state = {**state, **json.loads(json.dumps(plain, default=_json_value))}
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


#: the parts of a checkpoint that are not tensors: saved as their JSON values
_JSON_PARTS = ("identity", "history", "best", "best_value")


def _json_value(v):
    """JSON form of numpy scalars (and anything else: its string)."""
    return v.item() if hasattr(v, "item") else str(v)


def _same_identity(a, b):
    return json.loads(json.dumps(a, default=_json_value)) == json.loads(json.dumps(b, default=_json_value))


def load_checkpoint(checkpoint_dir, identity):
    """Return the saved state of ``checkpoint_dir`` or None; refuse one made with other settings."""
    import torch

    path = Path(checkpoint_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged checkpoint: say which file, never resume from it
        raise UsageError(f"{path}: cannot read this checkpoint ({type(exc).__name__}); delete it "
                         "to train from the start") from None
    if not _same_identity(state.get("identity"), identity):
        raise UsageError(f"{path} was made with other settings; delete {Path(checkpoint_dir)} to "
                         "train again, or rerun with the settings it was made with")
    return state


# --- the loop --------------------------------------------------------------------------------
class _Noise:
    """Gaussian weight noise: added before a batch's forward pass, removed before the step.

    A network may scale it per parameter (``model.noise_scales``: ``{parameter name: factor}``;
    the LSTM's input weights, so that a wide code gets the noise per gate that a layer of the
    paper's width gets).
    """

    def __init__(self, params, std, generator, model=None):
        scales = getattr(model, "noise_scales", None) or {}
        by_id = {id(p): float(scales.get(name, 1.0)) for name, p in
                 (model.named_parameters() if model is not None else ())}
        self.params, self.gen, self.noise = params, generator, []
        self.std = [std * by_id.get(id(p), 1.0) for p in params]

    def add(self):
        import torch

        self.noise = []
        with torch.no_grad():
            for p, std in zip(self.params, self.std):
                n = torch.randn(p.shape, generator=self.gen, device="cpu").to(p.device, p.dtype) * std
                p.add_(n)
                self.noise.append(n)

    def remove(self):
        import torch

        with torch.no_grad():
            for p, n in zip(self.params, self.noise):
                p.sub_(n)
        self.noise = []


@dataclass
class _Training:
    """One :func:`fit`'s moving parts, as every epoch uses them: the network, the loss of a
    batch, the optimiser, the fp16 gradient scaler (or None), the config, the device and the
    autocast dtype (None: full precision)."""

    model: object
    step_loss: object
    optimizer: object
    scaler: object
    config: object
    device: object
    dtype: object

    @classmethod
    def start(cls, model, step_loss, config):
        """Put ``model`` on the config's device (channels-last if asked) and make its optimiser
        (over the parameters that train, seeded) and scaler; return ``(training, those params)``."""
        import torch

        device = resolve_device(config.device)
        dtype = autocast_dtype(device, config.amp)
        model.to(device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise UsageError("nothing to train: every parameter of the network is frozen")
        torch.manual_seed(config.seed)
        optimizer = _make_optimizer(params, config)
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        return cls(model, step_loss, optimizer, scaler, config, device, dtype), params

    def state(self):
        """What a checkpoint keeps of it: the network's, optimiser's and scaler's states."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None}


def _train_epoch(t, batches, noise):
    import torch

    model, optimizer, scaler, config, device, dtype = (t.model, t.optimizer, t.scaler, t.config,
                                                       t.device, t.dtype)
    model.train()
    total, count = None, 0
    for batch in interrupt.between(batches):  # Ctrl-C: stop here; the last epoch's checkpoint stays
        batch = to_device(batch, device, channels_last=config.channels_last)
        if noise is not None:
            noise.add()
        with torch.autocast(device_type=str(device).split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss = t.step_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        if noise is not None:
            noise.remove()
        if config.grad_clip:
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(config.grad_clip))
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        total = loss.detach().float() if total is None else total + loss.detach().float()
        count += 1
    return float(total) / count if count else float("nan")


def _better(config, value, best):
    if value is None or not np.isfinite(value):
        return False
    if best is None or not np.isfinite(best):
        return True
    return value > best if config.monitor == "val_score" else value < best


def _resume(checkpoint_dir, identity, t, result):
    """Load ``last.pt`` into the model, optimiser and result; return where training goes on."""
    state = load_checkpoint(checkpoint_dir, identity) if checkpoint_dir else None
    if state is None:
        return 1, None, None, None
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    if t.scaler is not None and state.get("scaler"):
        t.scaler.load_state_dict(state["scaler"])
    result.history, result.best_epoch, result.best = state["history"], state["best_epoch"], state["best"]
    result.resumed_from = state["epoch"]
    start = t.config.epochs + 1 if state.get("stopped") else state["epoch"] + 1  # stopped: done
    return start, state["best_value"], state["best_state"], state


def _run_epoch(epoch, t, params, train_batches, evaluate):
    """Train one epoch of ``t`` (:class:`_Training`) and score validation; every draw seeded by
    ``(seed, epoch)``."""
    import torch

    model, config = t.model, t.config
    t0 = time.time()
    if str(t.device) == "cpu":  # the machine changes while a run trains: chosen again per epoch
        use_torch_threads(helpers=reader_threads())
    seed = _epoch_seed(config.seed, epoch)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    noise = _Noise(params, float(config.weight_noise), gen, model) if config.weight_noise else None
    train_loss = _train_epoch(t, train_batches(epoch, np.random.default_rng(seed)), noise)
    model.eval()
    with torch.inference_mode():
        metrics = dict(evaluate(model))
    row = {"epoch": epoch, "train_loss": train_loss, "val_loss": metrics.get("val_loss", float("nan")),
           "val_score": metrics.get("val_score", float("nan")), "seconds": round(time.time() - t0, 2),
           "lr": t.optimizer.param_groups[0]["lr"]}
    return row, metrics


def fit(model, *, train_batches, step_loss, evaluate, config=TrainConfig(), checkpoint_dir=None,
        identity=None, log_path=None, progress=True):
    """Train ``model`` in place; return a :class:`FitResult` with the best epoch restored.

    Parameters
    ----------
    model : torch.nn.Module
        Its parameters with ``requires_grad`` are trained; frozen ones are left bit-identical.
    train_batches, step_loss, evaluate : callables
        See the module docstring.
    config : TrainConfig
    checkpoint_dir : path, optional
        Where ``last.pt`` is written after every epoch and resumed from.
    identity : dict, optional
        JSON-like settings that make the run what it is (the caller's arguments, data
        fingerprint); a checkpoint with another identity is refused. Default: the config.
    log_path : path, optional
        The per-epoch CSV log.
    progress : bool
        A tqdm bar over epochs on stderr.
    """
    import sys

    from tqdm import tqdm

    identity = identity if identity is not None else asdict(config)
    t, params = _Training.start(model, step_loss, config)
    result = FitResult(best_epoch=0, best={}, device=t.device,
                       precision=str(t.dtype).replace("torch.", "") if t.dtype else "float32")
    start, best_value, best_state, state = _resume(checkpoint_dir, identity, t, result)
    bar = tqdm(range(start, config.epochs + 1), desc="train", unit="epoch", file=sys.stderr,
               disable=not progress, leave=False, initial=start - 1, total=config.epochs)
    stopped = False
    for epoch in bar:
        row, metrics = _run_epoch(epoch, t, params, train_batches, evaluate)
        result.history.append(row)
        value = metrics.get(config.monitor)
        if _better(config, value, best_value):
            best_value, result.best_epoch, result.best = float(value), epoch, metrics
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        since = epoch - (result.best_epoch or 0)
        stopped = config.patience is not None and result.best_epoch and since >= int(config.patience)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{row['val_score']:.3f}")
        if log_path:
            write_log(log_path, result.history)
        if checkpoint_dir:
            _save(Path(checkpoint_dir) / CHECKPOINT, {
                "identity": identity, "epoch": epoch, **t.state(), "history": result.history,
                "best_epoch": result.best_epoch, "best": result.best, "best_value": best_value,
                "best_state": best_state, "stopped": bool(stopped)})
        if stopped:
            break
    bar.close()
    result.stopped_early = bool(stopped) or bool(state and state.get("stopped"))
    if best_state is not None:  # the epoch chosen on validation, not the last one
        model.load_state_dict(best_state)
    else:
        result.best_epoch = result.history[-1]["epoch"] if result.history else 0
    return result


# --- logs and curves -------------------------------------------------------------------------
def write_log(path, history):
    """Write the per-epoch log (:data:`LOG_COLUMNS`) as CSV, through a temporary file."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def plot_history(history, path, *, title=""):
    """Draw training / validation loss and the validation score per epoch into a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(7, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss")
    ax1.plot(epochs, [r["val_loss"] for r in history], "s-", label="validation loss")
    ax1.set_xlabel("epoch")
    ax1.legend(fontsize=8)
    ax2.plot(epochs, [r["val_score"] for r in history], "o-", color="tab:green")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation score (mean F1)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
