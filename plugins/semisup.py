"""Semi-supervised ALI: the (K+1)-class joint critic (ali-reference §5.2; docs/semisupervised.md).

The paper's best classification numbers come from an ALI whose critic D(x, z) outputs K+1 logits, K classes and
"model pair", following Salimans et al. (2016); the code was never released. Game ``ali_semisup`` plays it:

* a labelled stream (``labels`` training examples, class-balanced, seeded) of its own batch size: labelled data
  pairs (x, Gz(x)) get cross-entropy on their class;
* the main stream (the rest of the training data, or all of it): unlabelled data pairs (x, Gz(x)) are pushed
  towards "some real class", model pairs (Gx(z), z) towards the fake class;
* the encoder and decoder play ALI's swapped-label game against the real/fake split (or match the critic's
  features).

With logits l(x, z) the real/fake logit is d = logsumexp_{k<=K} l_k - l_fake, so the unsupervised part is ALI's
loss on d. Every choice the paper leaves open is an option; docs/semisupervised.md gives the losses as equations.

Evaluator ``critic_classifier``: the test error of the critic's K-class prediction on (x, E[z|x]) for the
held-out split, next to the same critic architecture trained on the same labels alone (same steps, labelled
batch size, optimiser and seed), rebuilt from the run's recipe.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from advinf import (
    CRITIC,
    GENERATOR,
    MAIN,
    Batch,
    Dataset,
    Evaluator,
    Game,
    GameLosses,
    Networks,
    OptionError,
    Split,
    Stream,
    StreamingSplit,
    StreamSource,
    TrainedModel,
    UserError,
    evaluating,
    hookimpl,
    origin_of,
    saved_recipe,
    stream_seed,
)
from advinf_plugins.probes import balanced_subset

#: The name of the labelled stream (``batch.streams["labelled"]``).
LABELLED = "labelled"


class SemisupOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: int = Field(1000, ge=1, le=100_000_000, description="labelled training examples, class-balanced "
                                                                "(labels // K a class, the rest to random classes)")
    labels_seed: int | None = Field(None, ge=0, lt=2**32, description="seed of the labelled subset; default: the "
                                                                      "run's seed")
    labelled_batch_size: int = Field(100, ge=1, le=1_000_000, description="labelled examples per step (at most "
                                                                          "`labels`)")
    unlabelled: Literal["rest", "all"] = Field(
        "rest", description="the main (unlabelled) stream: the training examples outside the labelled subset, or "
                            "all of them (Salimans et al.'s code)")
    classes: int | None = Field(None, ge=2, le=100_000, description="K; default: the dataset's classes")
    fake_logit: Literal["learned", "zero"] = Field(
        "learned", description="learned: the critic outputs K+1 logits; zero: it outputs K and the fake logit is "
                               "fixed at 0 (Salimans et al.'s code)")
    supervised: Literal["real_classes", "all_classes"] = Field(
        "real_classes", description="cross-entropy of labelled pairs over the K real logits, -log p(y|x,z,real) "
                                    "(Salimans et al.'s code), or over all K+1, -log p(y|x,z)")
    supervised_weight: float = Field(1.0, ge=0, le=1e6, description="weight of the supervised term in the critic "
                                                                    "loss")
    unsupervised_weight: float = Field(1.0, ge=0, le=1e6, description="weight of the real/fake term in the "
                                                                      "critic loss (Salimans et al.: 0.5)")
    labelled_z: Literal["sample", "mean"] = Field(
        "sample", description="z of labelled pairs: a draw from q(z|x) (as unlabelled pairs) or its mean")
    generator: Literal["swapped_labels", "feature_matching"] = Field(
        "swapped_labels", description="the encoder's and decoder's loss: ALI's non-saturating swapped-label loss "
                                      "on the real/fake logit (the paper: no feature matching), or feature "
                                      "matching on the input of the critic's last layer")
    encoder_supervised_weight: float = Field(
        0.0, ge=0, le=1e6, description="weight of the supervised cross-entropy in the generator loss (trains the "
                                       "encoder to make labelled pairs classifiable); 0: the paper's game")
    joint_batch: bool = Field(True, description="labelled, unlabelled and model pairs through the critic as one "
                                                "batch (shared BN statistics, as ALI); false: three passes")

    @model_validator(mode="after")
    def _batch(self) -> SemisupOptions:
        if self.labelled_batch_size > self.labels:
            raise OptionError(f"labelled_batch_size ({self.labelled_batch_size}) is larger than labels "
                              f"({self.labels})", option="labelled_batch_size")
        return self


def split_labels(split: Split | StreamingSplit) -> Tensor:
    """The class labels of a training split, on the host."""
    y = split.labels()
    if y is None or y.dim() != 1:
        raise UserError("game 'ali_semisup' needs class labels (one class index per example) on the training split")
    return y


def labelled_subset(y: Tensor, labels: int, classes: int, seed: int) -> Tensor:
    """``labels`` training indices, class-balanced (``labels // classes`` a class, the remainder one each to
    randomly chosen classes), drawn by a generator seeded with ``seed``; ascending."""
    if labels > len(y):
        raise UserError(f"game 'ali_semisup': labels = {labels}, but the training split holds {len(y)} examples")
    if int(y.max()) >= classes or int(y.min()) < 0:
        raise UserError(f"game 'ali_semisup': the labels must be class indices 0..{classes - 1}")
    have = torch.bincount(y, minlength=classes)
    if int(have.min()) < -(-labels // classes):
        raise UserError(f"game 'ali_semisup': {labels} class-balanced labels need up to {-(-labels // classes)} "
                        f"examples of each of the {classes} classes, but class {int(have.argmin())} has "
                        f"{int(have.min())} in the training split; lower `labels`")
    g = torch.Generator().manual_seed(seed)
    return balanced_subset(y, torch.arange(len(y)), labels, classes, g)


class SemisupAli(Game):
    """ALI with a (K+1)-class critic, a labelled stream and the unlabelled rest (see the module docstring)."""

    players = (CRITIC, GENERATOR)
    networks = {"encoder": "encoder", "decoder": "decoder", "critic": "critic"}

    def __init__(self, o: SemisupOptions, classes: int | None = None):
        self.o = o
        self.classes = o.classes or classes
        if o.classes is not None and classes is not None and o.classes != classes:
            raise UserError(f"game 'ali_semisup': classes = {o.classes}, but the dataset has {classes} classes")
        streams = [Stream(LABELLED, batch_size=o.labelled_batch_size, labelled=True, select=self.select_labelled)]
        if o.unlabelled == "rest":
            streams.insert(0, Stream(MAIN, select=self.select_unlabelled))
        self.streams = tuple(streams)

    # -- the data ----------------------------------------------------------------------------------------------
    def _classes(self, y: Tensor) -> int:
        return self.classes or int(y.max()) + 1

    def select_labelled(self, split: Split, seed: int) -> Tensor:
        """The labelled subset: class-balanced, from ``labels_seed`` (default: the run's seed)."""
        y = split_labels(split)
        return labelled_subset(y, self.o.labels, self._classes(y), self.o.labels_seed
                               if self.o.labels_seed is not None else seed)

    def select_unlabelled(self, split: Split, seed: int) -> Tensor:
        """Every training example outside the labelled subset."""
        keep = torch.ones(len(split), dtype=torch.bool)
        keep[self.select_labelled(split, seed)] = False
        if not keep.any():
            raise UserError("game 'ali_semisup': every training example is labelled, none is left unlabelled; "
                            "lower `labels` or set unlabelled = \"all\"")
        return keep.nonzero().flatten()

    # -- the critic ----------------------------------------------------------------------------------------
    @property
    def outputs(self) -> int | None:
        """The critic's output width this game needs: K+1 (learned fake logit) or K (fixed at 0)."""
        if self.classes is None:
            return None
        return self.classes + (1 if self.o.fake_logit == "learned" else 0)

    def _width_error(self, got: int) -> UserError:
        return UserError(f"game 'ali_semisup' needs a critic with {self.outputs} outputs per example ({self.classes} "
                         f"classes{' + 1 for model pairs' if self.o.fake_logit == 'learned' else ', fake logit 0'}"
                         f"), but the critic gives {got}; set `outputs = {self.outputs}` in [critic]")

    def check(self, nets: Networks) -> None:
        critic = nets["critic"]
        if not getattr(critic, "uses_z", True):
            raise UserError("game 'ali_semisup' needs a joint critic D(x, z), but the critic ignores z")
        if self.classes is None:
            raise UserError("game 'ali_semisup' does not know K: give `classes` in [game] (or a dataset with "
                            "class labels)")
        width = getattr(critic, "outputs", None)
        if width is not None and width != self.outputs:
            raise self._width_error(width)
        origin = origin_of(critic)
        if width is None and origin is not None and "outputs" not in origin.options:
            # a registered critic without K+1 outputs (the toy critic): said now, not as "set outputs = K+1",
            # an option it does not have (a critic of one's own is judged by the logits it returns)
            raise UserError(f"game 'ali_semisup' needs a critic with {self.outputs} outputs per example, and "
                            f"{type(critic).__name__} has no `outputs` option: use one of the paper's critics or "
                            "digits_critic (with `outputs`), or a critic of your own returning (B, "
                            f"{self.outputs}) logits")
        if self.o.generator == "feature_matching" and not isinstance(getattr(critic, "head", None), nn.Module):
            raise UserError("generator = \"feature_matching\" compares the input of the critic's last layer, but "
                            f"{type(critic).__name__} has no `head` (its last layer); use \"swapped_labels\"")

    def split_logits(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """(the K real-class logits (B, K), the fake logit (B,)) of critic outputs, checking their width."""
        if logits.dim() != 2 or logits.shape[1] != self.outputs:
            raise self._width_error(1 if logits.dim() == 1 else int(logits.shape[1]))
        k = self.classes
        fake = logits[:, k] if self.o.fake_logit == "learned" else logits.new_zeros(logits.shape[0])
        return logits[:, :k], fake

    def real_fake(self, logits: Tensor) -> Tensor:
        """d = logsumexp_k l_k - l_fake: the logit of "a real pair" (any class) against "a model pair"."""
        real, fake = self.split_logits(logits)
        return torch.logsumexp(real, dim=1) - fake

    def supervised_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy of labelled pairs: over the K real logits, or over all K+1 (``supervised``)."""
        real, fake = self.split_logits(logits)
        if self.o.supervised == "all_classes":
            return F.cross_entropy(torch.cat([real, fake[:, None]], dim=1), y)
        return F.cross_entropy(real, y)

    def class_logits(self, nets: Networks, x: Tensor, z: Tensor | None = None) -> Tensor:
        """The critic's K real-class logits on (x, E[z|x]) (or on (x, z))."""
        if z is None:
            z = nets["encoder"](x).mean
        return self.split_logits(nets["critic"](x, z))[0]

    # -- the losses ----------------------------------------------------------------------------------------
    def losses(self, nets: Networks, batch: Batch) -> GameLosses:
        o = self.o
        lab = batch.streams[LABELLED]
        x_u, x_l, y_l = batch.x, lab.x, lab.y
        assert y_l is not None
        with batch.grad_for(GENERATOR.name):  # a critic pass builds no graph through the encoder and decoder
            z_u = nets["encoder"](x_u).sample()
            post_l = nets["encoder"](x_l)
            z_l = post_l.sample() if o.labelled_z == "sample" else post_l.mean
            z = nets.prior.sample(x_u.shape[0], x_u.device)
            x_m = nets["decoder"](z)
        features: list[Tensor] = []
        hook = (nets["critic"].head.register_forward_pre_hook(lambda m, args: features.append(args[0]))
                if o.generator == "feature_matching" else None)
        try:
            l_lab, l_unl, l_mod = critic_groups(nets["critic"], [(x_l, z_l), (x_u, z_u), (x_m, z)], o.joint_batch)
        finally:
            if hook is not None:
                hook.remove()
        y_l = y_l.long().reshape(-1)
        sup = self.supervised_loss(l_lab, y_l)
        d_unl, d_mod = self.real_fake(l_unl), self.real_fake(l_mod)
        unsup = F.softplus(-d_unl).mean() + F.softplus(d_mod).mean()
        critic = o.supervised_weight * sup + o.unsupervised_weight * unsup
        if o.generator == "feature_matching":
            f = torch.cat(features).flatten(1)
            n_l, n_u = x_l.shape[0], x_u.shape[0]
            f_unl, f_mod = f[n_l:n_l + n_u], f[n_l + n_u:]
            generator = (f_unl.mean(0) - f_mod.mean(0)).pow(2).mean()
        else:
            generator = F.softplus(d_unl).mean() + F.softplus(-d_mod).mean()
        if o.encoder_supervised_weight:
            generator = generator + o.encoder_supervised_weight * sup
        accuracy = (l_lab.detach()[:, :self.classes].argmax(1) == y_l).float().mean()
        return GameLosses({"critic": critic, "generator": generator},
                          {"supervised": sup.detach(), "unsupervised": unsup.detach(), "labelled_accuracy": accuracy,
                           "critic_data": torch.sigmoid(d_unl.detach()).mean(),
                           "critic_model": torch.sigmoid(d_mod.detach()).mean()})


def critic_groups(critic: nn.Module, groups: list[tuple[Tensor, Tensor]], joint: bool) -> list[Tensor]:
    """The critic's logits on each group of (x, z) pairs: one batch (shared BN statistics) or one pass each.
    A hook on the critic sees the groups' inputs in this order either way."""
    if not joint:
        return [critic(x, z) for x, z in groups]
    logits = critic(torch.cat([x for x, _ in groups]), torch.cat([z for _, z in groups]))
    return list(logits.split([x.shape[0] for x, _ in groups]))


def semisup_ali(options: SemisupOptions, ctx) -> Game:
    """Semi-supervised ALI: a (K+1)-class joint critic, a labelled stream and the unlabelled rest (§5.2)."""
    data: Dataset | None = getattr(ctx, "dataset", None)
    classes = None
    if data is not None:
        info = data.label_info()
        if info is None or info[0] != "classes":
            raise UserError("game 'ali_semisup' needs a dataset with class labels")
        classes = info[2]
    return SemisupAli(options, classes)


# -- the evaluator -----------------------------------------------------------------------------------------


class CriticClassifierOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    baseline: bool = Field(True, description="also train the same critic architecture on the same labels alone "
                                             "(the labelled-only classifier) and report its test error")
    baseline_steps: int | None = Field(None, ge=1, le=100_000_000, description="its updates; default: the run's "
                                                                               "(same budget)")
    baseline_z: Literal["untrained_encoder", "zeros"] = Field(
        "untrained_encoder", description="the z it sees: the posterior mean of the untrained encoder (rebuilt from "
                                         "the recipe and seed, fixed), or zeros")
    batch_size: int = Field(500, ge=1, le=1_000_000, description="examples per forward pass when testing")


class CriticClassifier(Evaluator):
    """Test error of the critic's K-class prediction on (x, E[z|x]), and of the labelled-only baseline."""

    def __init__(self, o: CriticClassifierOptions):
        self.o = o
        self._baseline: dict[tuple, dict[str, Any]] = {}  # computed once per run and dataset

    def evaluate(self, model: TrainedModel, data: Dataset, out_dir: Path) -> dict[str, Any]:
        game = model.game
        if not isinstance(game, SemisupAli):
            raise UserError("evaluator 'critic_classifier' reads a K-class critic: it needs game 'ali_semisup'")
        if data.heldout is None or len(data.heldout) == 0:
            raise UserError("evaluator 'critic_classifier' tests on the held-out split, but the dataset has none")
        start = time.perf_counter()
        with evaluating(model.nets):
            err = test_error(lambda x: game.class_logits(model.nets, x), data.heldout, model.device,
                             self.o.batch_size)
        result: dict[str, Any] = {"test_error": err, "test_examples": len(data.heldout), "classes": game.classes,
                                  "labels": game.o.labels}
        if self.o.baseline:
            key = (id(data), len(data.train), str(out_dir))
            if key not in self._baseline:
                self._baseline = {key: labelled_only(model, data, out_dir, self.o)}
            base = copy.deepcopy(self._baseline[key])
            result["labelled_only_test_error"] = base.pop("test_error")
            result["labelled_only"] = base
        result["seconds"] = round(time.perf_counter() - start, 3)
        return result


def test_error(class_logits, split, device: torch.device, batch_size: int) -> float:
    """The fraction of ``split`` whose argmax of ``class_logits(x)`` is not its label."""
    wrong = total = 0
    with torch.no_grad():
        for i in range(0, len(split), batch_size):
            x, y = split.take(torch.arange(i, min(i + batch_size, len(split))))
            if y is None:
                raise UserError("evaluator 'critic_classifier' needs labels on the held-out split")
            pred = class_logits(Dataset.decode(x).to(device)).argmax(1)
            wrong += int((pred.cpu() != y.cpu().long().reshape(-1)).sum())
            total += len(y)
    return wrong / total if total else math.nan


def run_recipe_of(model: TrainedModel, out_dir: Path | None):
    """The recipe ``model`` was trained with: the loaded run's, else RUN_DIR/recipe.toml (during training)."""
    recipe = getattr(model, "recipe", None)
    if recipe is None and out_dir is not None:
        recipe = saved_recipe(out_dir)
    if recipe is None:
        raise UserError("evaluator 'critic_classifier': the labelled-only baseline is rebuilt from the run's "
                        "recipe, and none was found (evaluate a run directory, or set baseline = false)")
    return recipe


def labelled_only(model: TrainedModel, data: Dataset, out_dir: Path | None, o: CriticClassifierOptions
                  ) -> dict[str, Any]:
    """The same critic architecture, built fresh from the run's recipe and seed, trained on the run's labelled
    subset alone (same labelled batches in the same order, same number of steps, the critic's optimiser); its
    test error on (x, z) with z from ``baseline_z``."""
    from advinf import build

    recipe = run_recipe_of(model, out_dir)
    game: SemisupAli = model.game  # type: ignore[assignment]
    seed, spec = recipe.spec.seed, recipe.spec
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        built = build(recipe, device=model.device, init=False, dataset=data, evaluators=False, loggers=False)
        critic, encoder = built.nets["critic"].to(model.device), built.nets["encoder"].to(model.device).eval()
        subset = game.select_labelled(data.train, seed)  # type: ignore[arg-type]
        source = StreamSource(data.train, game.o.labelled_batch_size, model.device, stream_seed(seed, LABELLED),
                              subset=subset, what="the labelled batch size")
        n = len(game.select_unlabelled(data.train, seed)) if game.o.unlabelled == "rest" else len(data.train)
        per_epoch = max(1, n // spec.train.batch_size)  # the run's epoch of steps (one process's batch)
        if o.baseline_steps is not None:
            steps = o.baseline_steps
        elif spec.train.steps is not None:
            steps = spec.train.steps
        else:
            steps = spec.train.epochs * per_epoch  # type: ignore[operator]
        critic_spec = recipe.optimizers.get("critic", spec.optimizer)
        optimizer = critic_spec.build(list(critic.parameters()))
        schedule = None  # the critic's learning-rate schedule, as the run's critic had it
        if critic_spec.schedule is not None and critic_spec.schedule.name != "constant":
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, critic_spec.schedule.factor(per_epoch))

        def z_of(x: Tensor) -> Tensor:
            with torch.no_grad():
                z = encoder(x).mean
            return torch.zeros_like(z) if o.baseline_z == "zeros" else z

        torch.manual_seed(seed)
        critic.train()
        with torch.enable_grad():  # evaluators run under no_grad
            loss = _train(critic, game, source, optimizer, steps, z_of, schedule)
        critic.eval()
        err = test_error(lambda x: game.split_logits(critic(x, z_of(x)))[0], data.heldout, model.device,
                         o.batch_size)
    return {"test_error": err, "steps": steps, "labelled_batch_size": game.o.labelled_batch_size,
            "z": o.baseline_z, "final_loss": float(loss), "init": f"rebuilt by advinf.build from the run's recipe "
                                                                  f"(seed {seed}): the run's initial critic"}


def _train(critic: nn.Module, game: SemisupAli, source: StreamSource, optimizer: torch.optim.Optimizer, steps: int,
           z_of, schedule: torch.optim.lr_scheduler.LRScheduler | None = None) -> Tensor:
    """``steps`` updates of ``critic`` on the supervised loss of labelled batches; the last loss."""
    loss = torch.zeros(())
    for _ in range(steps):
        batch = source.next()
        loss = game.supervised_loss(critic(batch.x, z_of(batch.x)), batch.y.long().reshape(-1))  # type: ignore
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
    return loss.detach()


def critic_classifier(options: CriticClassifierOptions, ctx) -> Evaluator:
    """Test error of the semi-supervised critic's K-class prediction, next to a labelled-only critic."""
    game, data = getattr(ctx, "game", None), getattr(ctx, "dataset", None)
    if game is not None and not isinstance(game, SemisupAli):  # refused when built, not after training
        raise UserError("evaluator 'critic_classifier' reads a K-class critic: it needs game 'ali_semisup'")
    if data is not None and (data.heldout is None or len(data.heldout) == 0):
        raise UserError("evaluator 'critic_classifier' tests on the held-out split, but the dataset has none")
    return CriticClassifier(options)


@hookimpl
def register_games(register) -> None:
    register("ali_semisup", semisup_ali, SemisupOptions)


@hookimpl
def register_evaluators(register) -> None:
    register("critic_classifier", critic_classifier, CriticClassifierOptions)
