"""Grid trainer: one pass over a site's training activations (stored or streamed) trains every
(architecture × λ × width) SAE of the sweep, and the sites of a layer step in lockstep.

Each sweep group is one batched module (its SAEs stacked on dim 0) with its own Adam; every batch of
activations is read once and fed to all groups. Training follows the paper's App. D: Adam with
β1 = 0, linear lr warm-up, unit-norm decoder rows (gradient projected, rows renormalised each step),
and dead-feature resampling with an lr drop and cosine recovery.

The whole training state (parameters, optimiser, step and so data position, feature activity) is
saved atomically every `checkpoint_every_steps`; a killed run resumes from it and ends with the same
parameters as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from gatedsae.activations.store import ShardedActivations
from gatedsae.core.allocator import retain_freed_memory
from gatedsae.core.atomic import atomic_path
from gatedsae.core.errors import PipelineError
from gatedsae.core.progress import progress_bar
from gatedsae.plan.architectures import architecture
from gatedsae.plan.config import Config, TrainConfig
from gatedsae.plan.identity import training_precision, training_state_identity
from gatedsae.plan.grid import SAESpec, grid_specs, regrouped, sae_seed
from gatedsae.saes.base import BatchedSAE, make_sae
from gatedsae.training.curve_log import CurveLog, IntervalMeans
from gatedsae.training.optimizer import adam_step, clip_grad_norm_per_sae_, make_adam, reset_adam_state
from gatedsae.training.sparse_step import dense_step_, sparse_step_

STATE_FILE = "training_state.pt"


class NonFiniteLossError(PipelineError):
    """A loss became NaN or inf; the message names the SAE and the step, the last good state is kept."""


def build_grid(config: Config, d: int, site: str, scale: float = 1.0, mean_sq_norm: float = 1.0,
               specs: Optional[list[SAESpec]] = None) -> tuple[list[BatchedSAE], list[SAESpec], list[float]]:
    """Batched modules for `specs` (by default every SAE of the sweep at `site`, every seed), one per sweep
    group they come from, with each module's lr; the specs placed in those modules. An SAE's init depends
    only on (its training seed, its spec). λ is converted from the group's `l1_units` with the activation
    scale and E||x||² of the data."""
    groups = config.sweep.groups_at(site)
    specs = grid_specs(config, d, site) if specs is None else specs
    modules, lrs = [], []
    for g in dict.fromkeys(spec.group for spec in specs):
        group, members = groups[g], [spec for spec in specs if spec.group == g]
        width = group.width(d)
        seeds = [sae_seed(spec.training_seed(config.train.seed), group.arch, width, spec.value) for spec in members]
        knob = (torch.tensor([group.internal_l1(spec.value, d, scale, mean_sq_norm) for spec in members])
                if group.knob == "l1" else torch.tensor([spec.value for spec in members], dtype=torch.float32))
        module = make_sae(group.arch, len(members), d, width, knob, config.train.seed, seeds=seeds)
        module.use_training_settings(config.train)
        modules.append(module)
        lrs.append(group.lr)
    return modules, regrouped(specs), lrs


class TrainingBatches:
    """Full batches forever, epoch after epoch (each epoch reshuffled with seed + epoch); short ones
    are dropped so every step has the same size. Its position is a `state_dict`."""

    def __init__(self, split: ShardedActivations, train: TrainConfig, max_norm: Optional[float] = None):
        self.split, self.train, self.max_norm = split, train, max_norm
        self.epoch, self.produced = 0, 0
        self._epoch = self._open(0)

    def _open(self, epoch: int):
        return self.split.batches(self.train.batch_size, seed=self.train.seed + epoch,
                                  buffer_rows=self.train.buffer_rows, max_norm=self.max_norm)

    def __iter__(self) -> "TrainingBatches":
        return self

    def __next__(self) -> torch.Tensor:
        while True:
            for batch in self._epoch:
                if len(batch) == self.train.batch_size:
                    self.produced += 1
                    return batch
            self.epoch += 1
            self._epoch = self._open(self.epoch)

    def skip(self, batches: int) -> None:
        for _ in range(batches):
            next(self)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "produced": self.produced,
                "shuffle": self._epoch.state_dict(storage=self.split.storage_dtype)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.produced = state["epoch"], state["produced"]
        self._epoch = self._open(self.epoch)
        self._epoch.load_state_dict(state["shuffle"])


def lr_factor(step: int, train: TrainConfig, resample_steps: list[int]) -> float:
    """Linear warm-up, then after each resample a drop to `resample_lr_factor` and a cosine back to 1."""
    factor = min(1.0, (step + 1) / max(1, train.lr_warmup_steps))
    for at in resample_steps:
        since = step - at
        if 0 <= since < train.resample_recovery_steps:
            progress = since / train.resample_recovery_steps
            low = train.resample_lr_factor
            factor *= low + (1 - low) * (1 - math.cos(math.pi * progress)) / 2
    return factor


class GridTrainer:
    """Trains the sweep of `config` (or only its SAEs `specs`, or the given `grid`: modules, specs and one
    lr per module)."""

    def __init__(self, config: Config, store: ShardedActivations, out_dir: Path,
                 grid: Optional[tuple[list[BatchedSAE], list[SAESpec], list[float]]] = None, identity_extra: str = "",
                 specs: Optional[list[SAESpec]] = None):
        config = replace(config, train=config.train.at_site(store.site))  # the site's own budget (train.site_tokens)
        self.config, self.train, self.store, self.out_dir = config, config.train, store, Path(out_dir)
        self.device = torch.device(self.train.device)
        self.data_statistics = store.statistics(self.train.max_norm_ratio, self.train.statistics_tokens)
        # Rows above this norm (raw units) are massive activations: never trained on (see `statistics`).
        self.massive_norm_threshold = self.data_statistics["massive_norm_threshold"]
        self.scale = self._activation_scale()
        if grid is None:
            modules, self.specs, self.base_lrs = build_grid(config, store.d, store.site, self.scale,
                                                            self.data_statistics["mean_sq_norm"], specs)
        else:
            modules, self.specs, self.base_lrs = grid
        self.identity_extra = identity_extra
        self.modules = [m.to(self.device) for m in modules]
        # The encoder's product in bf16 where precision.train resolves to it on this device (master weights,
        # Adam's moments and everything else float32): part of the state's identity and the checkpoints' keys.
        self.precision = training_precision(config)
        for module in self.modules:
            module.encoder_bf16 = self.precision.bf16
        betas = (self.train.adam_beta1, self.train.adam_beta2)
        self.optimizers = [make_adam(m, lr, betas, self.device) for m, lr in zip(self.modules, self.base_lrs)]
        self.steps = self.train.steps
        self.resample_steps = sorted({int(f * self.steps) for f in self.train.resample_at})
        self.step = 0
        # Steps since each feature last fired, per group: [n, width].
        self.idle_steps = [torch.zeros(m.n, m.width, dtype=torch.long) for m in self.modules]
        self.fired_ever = [torch.zeros(m.n, m.width, dtype=torch.bool) for m in self.modules]
        self.last_losses: dict[str, dict[str, float]] = {}
        self.since_last_row = IntervalMeans()  # what the next row of the curves averages
        self.sparse_steps = [0] * len(self.modules)  # steps each group took on the support (this session)
        self.resampled: list[dict] = []
        self._batches: Optional[TrainingBatches] = None
        self._data_state: Optional[dict] = None

    # --- set-up ---------------------------------------------------------------------------------------

    def _activation_scale(self) -> float:
        if self.train.normalize == "none":
            return 1.0
        return 1.0 / math.sqrt(self.data_statistics["mean_sq_norm"])

    def _init_decoder_bias(self) -> None:
        """b_dec starts at the data mean (as in Bricken et al. / the paper's codebase), scaled."""
        mean = self.data_statistics["mean"].float() * self.scale
        for module in self.modules:
            if module.decoder_trainable:  # a frozen decoder (rescale-and-shift) keeps its trained b_dec
                with torch.no_grad():
                    module.b_dec.copy_(mean.expand_as(module.b_dec))

    # --- state ----------------------------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "step": self.step,
            "modules": [m.state_dict() for m in self.modules],
            "optimizers": [o.state_dict() for o in self.optimizers],
            "idle_steps": self.idle_steps,
            "fired_ever": self.fired_ever,
            "last_losses": self.last_losses,
            "since_last_row": self.since_last_row.state_dict(),
            "resampled": self.resampled,
            "identity": self.identity(),
            # Where the data stands, when reading it again would mean recomputing it (stream mode).
            "data": None if self.store.replay_is_cheap or self._batches is None else self._batches.state_dict(),
        }

    def identity(self) -> str:
        """Settings a saved state must share to be resumed (settings at their neutral default left out, so
        adding one does not discard states)."""
        members = ";".join(spec.name for spec in self.specs)  # which SAEs (and seeds) this trainer holds
        return training_state_identity(self.config.sweep.groups_at(self.store.site), self.train,
                                       self.store.identity, self.store.d, f"{self.identity_extra}|{members}",
                                       self.precision.dtype)

    def save_state(self) -> None:
        with atomic_path(self.out_dir / STATE_FILE) as tmp:
            torch.save(self.state(), tmp)

    def try_resume(self) -> bool:
        path = self.out_dir / STATE_FILE
        if not path.exists():
            return False
        try:
            state = torch.load(path, weights_only=False)
        except Exception as error:  # a truncated or corrupt state only costs the progress it held
            print(f"ignoring the unreadable training state {path} ({type(error).__name__}); starting over", flush=True)
            return False
        if not isinstance(state, dict) or state.get("identity") != self.identity():
            return False
        for module, saved in zip(self.modules, state["modules"]):
            module.load_state_dict(saved)
        for optimizer, saved in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)
        self.step, self.idle_steps, self.fired_ever = state["step"], state["idle_steps"], state["fired_ever"]
        self.last_losses, self.resampled = state["last_losses"], state["resampled"]
        self.since_last_row = IntervalMeans(state.get("since_last_row"))  # a state from before: a fresh interval
        self._data_state = state.get("data")
        return True

    # --- training -------------------------------------------------------------------------------------

    def run(self, progress: bool = True, stop_after: Optional[int] = None) -> None:
        """Train to `train.steps` (or stop after `stop_after` more steps: used by tests)."""
        train_lockstep([self], progress, stop_after)

    def start(self) -> None:
        """Resume from the saved state if there is one (else initialise), and position the data."""
        if self.train.threads > 0:
            torch.set_num_threads(self.train.threads)
        retain_freed_memory(self.config.resources.retain_freed_mib)
        print(f"train {self.store.site} with the encoder product in {self.precision.dtype}: {self.precision.reason}",
              flush=True)
        if not self.try_resume():
            self._init_decoder_bias()
        self.curves = CurveLog(self.out_dir, self.train.log_every_steps, [s.name for s in self.specs], self.step,
                               self._tracker())
        self._batches = TrainingBatches(self.store, self.train, self.massive_norm_threshold)
        if self._data_state is not None:
            self._batches.load_state_dict(self._data_state)
        else:
            self._batches.skip(self.step)  # re-reads the batches before the resume point

    def _tracker(self):
        """The experiment tracker's run for this grid (train.tracker; None when off or not logging curves)."""
        from dataclasses import asdict

        from gatedsae.training.trackers import open_tracker

        if self.train.tracker == "none" or self.train.log_every_steps <= 0:
            return None
        try:
            run = str(self.out_dir.relative_to(self.config.paths.root / "checkpoints"))
        except ValueError:
            run = self.out_dir.name
        settings = {"experiment": self.config.experiment.name, "sweep": asdict(self.config.sweep),
                    "train": asdict(self.train)}
        return open_tracker(self.train.tracker, run, Path("logs") / self.config.experiment.name, settings)

    @property
    def done(self) -> bool:
        return self.step >= self.steps

    def advance(self) -> None:
        """One training step on the next batch (with resampling and state saving on schedule)."""
        x = next(self._batches).to(self.device, torch.float32) * self.scale
        self._train_step(x)
        self.step += 1
        self.curves.record(self)
        if self.step in self.resample_steps:
            self._resample_dead(x)
        if self.step % self.train.checkpoint_every_steps == 0 or self.step == self.steps:
            self.save_state()

    def _train_step(self, x: torch.Tensor) -> None:
        factor = lr_factor(self.step, self.train, self.resample_steps)
        for g, (module, optimizer) in enumerate(zip(self.modules, self.optimizers)):
            for param_group in optimizer.param_groups:
                param_group["lr"] = self.base_lrs[g] * factor
            optimizer.zero_grad(set_to_none=True)
            if self._sparse_now(g, module):
                outcome = sparse_step_(module, x)
                self.sparse_steps[g] += 1
            else:
                outcome = dense_step_(module, x, autocast=self.train.autocast_bf16)
            total = outcome.total
            if not torch.isfinite(total).all():  # raised before the optimiser moves anything
                bad = int((~torch.isfinite(total)).nonzero()[0])
                spec = next(s for s in self.specs if s.group == g and s.index == bad)
                saved = self.step - self.step % self.train.checkpoint_every_steps
                kept = (f"the last good state (step {saved}) is kept in {self.out_dir / STATE_FILE}" if saved
                        else "no state had been saved yet")
                raise NonFiniteLossError(f"loss of SAE {spec.name} became {total[bad].item()} at step {self.step}; "
                                         f"{kept}. Lower its lr or check the activations.")
            module.remove_parallel_decoder_grad_()
            if self.train.max_grad_norm is not None:
                clip_grad_norm_per_sae_(module, self.train.max_grad_norm)
            adam_step(optimizer)
            module.constrain_()
            fired = outcome.fired.cpu()
            self.idle_steps[g] = torch.where(fired, 0, self.idle_steps[g] + 1)
            self.fired_ever[g] |= fired
            for spec in (s for s in self.specs if s.group == g):
                self.last_losses[spec.name] = {
                    name: float(getattr(outcome, name)[spec.index])
                    for name in ("total", "reconstruction", "sparsity", "auxiliary", "l0")
                }
                self.since_last_row.add(spec.name, self.last_losses[spec.name])
        self.since_last_row.step_done()

    def _sparse_now(self, g: int, module: BatchedSAE) -> bool:
        """Whether group g steps on the support (sparse_step.py) rather than densely: `train.sparse`, and
        under `auto` the group's mean L0 at the previous step against `train.sparse_max_density` × its
        width. Only on a CPU without train.autocast_bf16 (where the threshold was measured); the first step
        is dense. The L0s are part of the saved state, so a resumed run makes the same choices. Architectures without
        steps on the support (the registry's `sparse_steps`) always step densely."""
        if not architecture(module.arch).sparse_steps:
            return False
        if self.train.sparse != "auto":
            return self.train.sparse == "always"
        if self.device.type != "cpu" or self.train.autocast_bf16:
            return False
        l0 = [self.last_losses.get(spec.name, {}).get("l0") for spec in self.specs if spec.group == g]
        if not l0 or None in l0:
            return False
        return sum(l0) / len(l0) <= self.train.sparse_max_density * module.width

    @torch.no_grad()
    def _resample_dead(self, x: torch.Tensor) -> None:
        """Bricken et al.: re-initialise dead features towards inputs the SAE reconstructs badly."""
        for g, (module, optimizer) in enumerate(zip(self.modules, self.optimizers)):
            dead = self.idle_steps[g] >= self.train.resample_window_steps  # [n, width]
            if not architecture(module.arch).resamples or not dead.any():
                continue
            terms = module(x)
            errors = ((x.unsqueeze(0) - terms.x_hat) ** 2).sum(-1)  # [n, B]
            seeds = [seed * 7919 + self.step for seed in module.seeds]  # per SAE and per resampling
            counts = module.resample_(dead.to(x.device), x, errors, seeds)
            reset_adam_state(optimizer, module, dead.to(x.device))
            self.idle_steps[g][dead] = 0
            for spec in (s for s in self.specs if s.group == g):
                self.resampled.append({"step": self.step, "sae": spec.name, "features": int(counts[spec.index])})

    def _postfix(self, started: float, start_step: int) -> dict:
        elapsed = max(time.time() - started, 1e-9)
        tokens_per_s = (self.step - start_step) * self.train.batch_size / elapsed
        first = self.specs[0].name
        return {"tok/s": f"{tokens_per_s:,.0f}", "loss": f"{self.last_losses[first]['total']:.3f}",
                "L0": f"{self.last_losses[first]['l0']:.0f}"}


def train_lockstep(trainers: list[GridTrainer], progress: bool = True, stop_after: Optional[int] = None) -> None:
    """Step the trainers in turn, one batch each, until all are done (or `stop_after` rounds): the
    trainers of a layer's sites then read the same streamed shards at about the same time."""
    for trainer in trainers:
        trainer.start()
    first = max(trainers, key=lambda t: t.steps)  # sites may train for different budgets (train.site_tokens)
    bar = progress_bar("train grid", "step", total=first.steps, initial=first.step, enabled=progress)
    started, start_step, rounds = time.time(), first.step, 0
    try:
        while not all(t.done for t in trainers) and (stop_after is None or rounds < stop_after):
            for trainer in trainers:
                if not trainer.done:
                    trainer.advance()
            rounds += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(first._postfix(started, start_step), refresh=False)
    finally:
        for trainer in trainers:
            trainer.curves.close()
    if bar is not None:
        bar.close()
