"""The abstract pieces of an adversarial-inference model: networks, prior, conditions, game, evaluator.

Names follow the ALI paper: the encoder Gz(x) gives q(z|x), the decoder Gx(z) gives p(x|z), the critic
D(x, z) tells data pairs (x, Gz(x)) from model pairs (Gx(z), z). A game declares its *players* (who trains
which networks), the networks it needs, whether it needs labels, and how a trained model is used (sampling,
encoding, reconstruction); the engine knows players, optimisers and gradients, never which game it plays.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from advinf.conditions import Condition
from advinf.errors import UserError, described

if TYPE_CHECKING:
    from advinf.data import Dataset, Split


# -- posteriors ------------------------------------------------------------------------------------------

class Posterior:
    """What an encoder returns for a batch: q(z|x) with a reparameterised ``sample()``.

    ``features`` holds hidden activations a probe (e.g. the paper's linear SVM) may read.
    """

    def __init__(self, mean: Tensor, features: Sequence[Tensor] = ()):
        self.mean = mean
        self.features = list(features)

    def sample(self) -> Tensor:
        """A draw from q(z|x) through which gradients flow."""
        raise NotImplementedError


class GaussianPosterior(Posterior):
    """N(mu, sigma^2) parameterised by mu and log sigma (not log sigma^2), as in the original ALI code."""

    def __init__(self, mean: Tensor, log_sigma: Tensor, features: Sequence[Tensor] = ()):
        super().__init__(mean, features)
        self.log_sigma = log_sigma

    def sample(self) -> Tensor:
        # One independent noise value per latent dimension and example.
        return self.mean + self.log_sigma.exp() * torch.randn_like(self.mean)


class DeterministicPosterior(Posterior):
    """A point mass (BiGAN's encoder): its sample is its mean."""

    def sample(self) -> Tensor:
        return self.mean


class ImplicitPosterior(Posterior):
    """A posterior known only through one reparameterised draw z = f(x, eps) (change of variables).

    ``mean`` is that same draw; it is the best point estimate such an encoder offers without
    extra forward passes.
    """

    def __init__(self, draw: Tensor, features: Sequence[Tensor] = ()):
        super().__init__(draw, features)

    def sample(self) -> Tensor:
        return self.mean


# -- networks --------------------------------------------------------------------------------------------

class Encoder(nn.Module, abc.ABC):
    """Gz: maps data x (and a condition y, if ``conditional``) to a posterior over z."""

    #: Whether this network was built to take a condition y (set by conditional networks).
    conditional: bool = False

    @abc.abstractmethod
    def forward(self, x: Tensor, y: Tensor | None = None) -> Posterior:
        """q(z | x) for a batch of examples (and their labels y, for a conditional encoder)."""
        ...


class Decoder(nn.Module, abc.ABC):
    """Gx: maps a latent z (and a condition y, if ``conditional``) to data x."""

    conditional: bool = False

    @abc.abstractmethod
    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Gx(z): examples in the data's range for a batch of latent codes (and labels y, if conditional)."""
        ...


class JointCritic(nn.Module, abc.ABC):
    """D(x, z): logits of shape (B,) (or (B, K+1) for a semi-supervised critic).

    A marginal critic (plain GAN) sets ``uses_z = False`` and ignores z.
    """

    uses_z: bool = True
    conditional: bool = False

    @abc.abstractmethod
    def forward(self, x: Tensor, z: Tensor | None, y: Tensor | None = None) -> Tensor:
        """D(x, z): one logit per pair, shape (B,) (z is None for a critic of x alone, a GAN's)."""
        ...


class Prior(abc.ABC):
    """p(z): what the decoder is fed. ``latent_shape`` is the shape of one z (without the batch)."""

    latent_shape: tuple[int, ...]

    @abc.abstractmethod
    def sample(self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
               ) -> Tensor:
        """n draws from p(z) on ``device`` (from ``generator`` when given, for reproducible pictures)."""
        ...


#: The network names every game knows, and the component kind each is built from.
WELL_KNOWN: dict[str, str] = {"encoder": "encoder", "decoder": "decoder", "critic": "critic"}


class Networks(MutableMapping[str, nn.Module]):
    """The networks a game plays with, by name, plus the prior.

    ``encoder``, ``decoder`` and ``critic`` are the well-known names (also attributes, None when absent); a
    game may use others (``nets["cycle_critic"]``). A frozen network (``freeze``) has no trainable parameters
    and stays in eval mode.
    """

    def __init__(self, prior: Prior, modules: Mapping[str, nn.Module] | None = None, **named: nn.Module | None):
        self.prior = prior
        self._modules: dict[str, nn.Module] = {}
        self.frozen: set[str] = set()
        for name, module in {**(modules or {}), **named}.items():
            if module is not None:
                self[name] = module

    # mapping
    def __getitem__(self, name: str) -> nn.Module:
        return self._modules[name]

    def __setitem__(self, name: str, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"network '{name}' must be a torch.nn.Module, got {type(module).__name__}")
        self._modules[name] = module

    def __delitem__(self, name: str) -> None:
        del self._modules[name]
        self.frozen.discard(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def __repr__(self) -> str:
        return f"Networks({', '.join(self._modules)}; frozen: {sorted(self.frozen) or 'none'})"

    # the well-known names
    encoder = property(lambda self: self._modules.get("encoder"), lambda self, m: self.__setitem__("encoder", m))
    decoder = property(lambda self: self._modules.get("decoder"), lambda self, m: self.__setitem__("decoder", m))
    critic = property(lambda self: self._modules.get("critic"), lambda self, m: self.__setitem__("critic", m))

    def freeze(self, name: str) -> None:
        """No gradients and eval mode for network ``name``, for the whole run."""
        self._modules[name].requires_grad_(False).eval()
        self.frozen.add(name)

    def parameters(self, names: Sequence[str]) -> list[nn.Parameter]:
        """The trainable parameters of the named networks (those present), in a fixed order."""
        return [p for _, p in self.named_parameters(names)]

    def named_parameters(self, names: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
        """``("network.param", parameter)`` for the trainable parameters of the named networks, each once (a
        parameter two of them share under its first name: an optimiser must step it once)."""
        seen: set[int] = set()
        out = []
        for n in names:
            if n not in self._modules:
                continue
            for k, p in self._modules[n].named_parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append((f"{n}.{k}", p))
        return out

    def train(self, mode: bool = True) -> None:
        """Train or eval mode for every network; frozen networks always stay in eval mode."""
        for name, m in self._modules.items():
            m.train(mode and name not in self.frozen)

    def to(self, device: torch.device, channels_last: bool = False) -> Networks:
        """Every network on ``device`` (convolutions' tensors in NHWC with ``channels_last``)."""
        for m in self._modules.values():
            m.to(device)
            if channels_last:
                m.to(memory_format=torch.channels_last)
        return self


# -- games -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Player:
    """One player of a game: a name, the networks it trains, and its side.

    ``role`` matters for the ``alternating`` scheme: ``critic`` players take ``train.critic_steps`` steps per
    step of the ``generator`` players.
    """

    name: str
    networks: tuple[str, ...]
    role: Literal["critic", "generator"] = "generator"

    def __post_init__(self) -> None:
        if isinstance(self.networks, list):  # Player("c", ["critic"]): the same networks
            object.__setattr__(self, "networks", tuple(self.networks))
        if not self.name or not isinstance(self.networks, tuple) or not self.networks:
            raise ValueError(f"player {self.name!r}: give a name and a non-empty tuple of network names")
        if self.role not in ("critic", "generator"):
            raise ValueError(f"player {self.name!r}: role must be 'critic' or 'generator', not {self.role!r}")


@dataclass(frozen=True)
class Stream:
    """A data stream a game reads beside the main one (``batch.streams[name]``).

    ``batch_size`` None takes ``train.batch_size``. ``labelled`` requires labels. ``select(split, seed)``
    returns the indices of the training examples the stream draws from (e.g. a class-balanced labelled subset);
    None draws from all of them. ``seed`` is the run's seed, the same for every stream, so that two streams can
    select complementary subsets. A stream named ``"data"`` configures the main stream (``batch.x``) instead of
    adding one: e.g. ``Stream("data", select=...)`` makes the main stream draw from the examples a labelled
    stream leaves out.
    """

    name: str
    batch_size: int | None = None
    labelled: bool = False
    select: Callable[[Split, int], Tensor] | None = None


@dataclass
class Batch:
    """One minibatch, already on the training device, as floats in the model's data range.

    ``x``: the examples (B, ...); ``y``: their labels (class indices (B,) or attributes (B, K) in {0, 1}) when the
    dataset has them, else None; ``streams`` holds the batches of the game's extra streams, by name.
    """

    x: Tensor
    y: Tensor | None = None
    streams: dict[str, Batch] = field(default_factory=dict)
    #: How many batches of this stream were drawn before this one, from the start of training (resumes
    #: included; 0 in the trial step): a host-side count.
    index: int = 0
    #: The training step this batch is drawn for (0-based, resumes included; 0 in the trial step): every forward
    #: pass of one step has the same, also under ``update = "alternating"``, where a step draws ``critic_steps +
    #: 1`` batches. A host-side count for what a game decides step by step (a regulariser applied every k steps,
    #: an annealed noise level) without reading a device value.
    step: int = 0
    #: The names of the players this forward pass updates; None (a batch made outside the trainer): all of them.
    #: Under ``update = "simultaneous"`` (and in the trial step) every pass updates every player; under
    #: ``alternating`` a critic pass updates the critic-side players and the last pass the others. A game may
    #: skip what only other players' losses read (``updates``): the generator's graph on a critic pass, a
    #: critic regulariser on a generator pass; the trainer reads only the updated players' losses.
    players: frozenset[str] | None = None
    #: Every player of the game (set by the trainer with ``players``): ``updates`` refuses any other name, so that
    #: a misspelt one is an error, not a player taken for one this pass does not update.
    all_players: frozenset[str] | None = None

    def updates(self, player: str) -> bool:
        """Whether this pass updates ``player``: its loss is used, and what only it reads must be computed."""
        if isinstance(self.players, str):
            raise TypeError(f"Batch.players must be a set of player names, not the string {self.players!r}")
        if self.all_players is not None and player not in self.all_players:
            raise ValueError(f"batch.updates({player!r}): the game has no player {player!r} (its players: "
                             f"{', '.join(sorted(self.all_players))})")
        return self.players is None or player in self.players

    def grad_for(self, player: str) -> contextlib.AbstractContextManager[Any]:
        """A context that records autograd's graph only if this pass updates ``player``: wrap the forward passes
        of its networks in it, and a pass that updates others builds no graph through them (the same values)."""
        return contextlib.nullcontext() if self.updates(player) else torch.no_grad()


@dataclass
class GameLosses:
    """One loss per player (by player name) and detached scalars to log, from one forward pass.

    The losses of players the pass does not update (``Batch.updates``) may be left out, and so may scalars
    that pass does not compute: the trainer logs each player's loss from the pass that updated it, and each
    scalar from the last pass of the step that returned it."""

    losses: dict[str, Tensor]
    scalars: dict[str, Tensor] = field(default_factory=dict)


#: ALI's players: the critic against the encoder and decoder.
CRITIC = Player("critic", ("critic",), role="critic")
GENERATOR = Player("generator", ("encoder", "decoder"))


class Game(abc.ABC):
    """The one place that knows the game: players, networks, labels, streams, losses, and use.

    Subclasses set the class attributes (or instance attributes in ``__init__``) and implement ``losses``.
    """

    #: Who trains which networks.
    players: tuple[Player, ...] = (CRITIC, GENERATOR)
    #: The networks the game needs: name -> component kind (the recipe section that builds it).
    networks: dict[str, str] = dict(WELL_KNOWN)
    #: Whether the training data must have labels (y).
    labels: bool = False
    #: The networks that take the condition y (a conditional game); empty: y never reaches a network.
    conditioned: tuple[str, ...] = ()
    #: Embedding of y in conditional networks: width and whether it is trained.
    embedding_dim: int = 256
    train_embedding: bool = True
    #: Extra data streams read each step, beside the main one.
    streams: tuple[Stream, ...] = ()

    @property
    def reads_labels(self) -> bool:
        """Whether training reads labels y: the game's own (``labels``), a conditioned network's, or an extra
        stream's."""
        return self.labels or bool(self.conditioned) or any(s.labelled for s in self.streams)

    def check(self, nets: Networks) -> None:
        """Raise a UserError if the networks cannot play this game (called once before training)."""

    def host_decisions(self) -> str | None:
        """What this game's step decides on the host from step to step (e.g. from ``batch.step``), naming the
        recipe key, or None. A step recorded once as a CUDA graph (``train.cuda_graph``) would replay the
        recorded step's choice forever, so the trainer refuses the two together."""
        return None

    @abc.abstractmethod
    def losses(self, nets: Networks, batch: Batch) -> GameLosses:
        """Every player's loss on one batch (and scalars to log): the engine takes each player's gradient."""
        ...

    # -- using a trained model (pictures, commands, evaluators, load_run users) ----------------------------
    def condition_for(self, name: str, y: Tensor | None) -> Tensor | None:
        """The y network ``name`` gets: the condition for conditioned networks, None for the others."""
        if name not in self.conditioned:
            return None
        if y is None:
            raise UserError(f"this model is conditional ({name} takes labels): give conditions")
        return y

    def sample(self, nets: Networks, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Decoder samples x ~ p(x|z) (for conditions y, in a conditional game)."""
        return nets["decoder"](z, self.condition_for("decoder", y))

    def encode(self, nets: Networks, x: Tensor, y: Tensor | None = None) -> Posterior:
        """q(z|x) (given y, in a conditional game)."""
        if "encoder" not in nets:
            raise UserError("this model has no encoder (a plain GAN), so it cannot encode or reconstruct")
        return nets["encoder"](x, self.condition_for("encoder", y))

    def reconstruct(self, nets: Networks, x: Tensor, y: Tensor | None = None, use_mean: bool = False) -> Tensor:
        """Gx(Gz(x)): decode a draw from q(z|x) (or its mean)."""
        post = self.encode(nets, x, y)
        return self.sample(nets, post.mean if use_mean else post.sample(), y)


#: The attribute a component made by name (a recipe, ``advinf.create``) keeps its origin in (advinf.provenance).
ORIGIN_ATTRIBUTE = "_advinf_origin"


def game_label(game: Game) -> str:
    """How messages name a game: by its registered name where it was made by one (``game 'ali'``), which is what
    a recipe says; else by its class."""
    origin = getattr(game, ORIGIN_ATTRIBUTE, None)
    name = getattr(origin, "name", None)
    return f"game '{name}'" if name else f"game {type(game).__name__}"


def check_networks(game: Game, nets: Networks) -> None:
    """Raise a UserError unless ``nets`` are exactly the networks ``game`` plays with, conditioned where it
    feeds them labels and unconditioned elsewhere (labels never reach a network silently), and the game's own
    ``check`` accepts them. Called once, where networks meet their game (training, load_run)."""
    if not game.players:
        raise UserError(f"{game_label(game)} declares no players: nothing would be trained")
    missing = [n for n in game.networks if n not in nets]
    unused = [n for n in nets if n not in game.networks]
    if missing or unused:
        parts = ([f"needs {', '.join(missing)}"] if missing else []) + \
                ([f"does not use {', '.join(unused)}"] if unused else [])
        raise UserError(f"the game {' and '.join(parts)} (its networks: {', '.join(game.networks)})")
    for name, module in nets.items():
        takes_y = bool(getattr(module, "conditional", False))
        if name in game.conditioned and not takes_y:
            raise UserError(f"the game feeds labels to the {name}, but this {name} cannot take them "
                            f"({type(module).__name__} is not conditional)")
        if name not in game.conditioned and takes_y:
            raise UserError(f"the {name} was built to take labels, but the game does not feed it any")
    trained: dict[str, str] = {}
    for player in game.players:
        for name in player.networks:
            if name not in game.networks:
                raise UserError(f"{game_label(game)}: player '{player.name}' trains '{name}', which is not "
                                f"one of the game's networks ({', '.join(game.networks)}); correct the name in its "
                                "Player, or add the network to the game's `networks`")
            if name in trained and name in nets:
                raise UserError(f"network '{name}' is trained by two players, '{trained[name]}' and "
                                f"'{player.name}'")
            trained[name] = player.name
    try:  # first: a game's own words for what it needs (e.g. a frozen decoder) say it best
        game.check(nets)
    except UserError:
        raise
    except Exception as exc:  # its code failing is its bug: said as the game's, not a traceback
        raise UserError(f"{game_label(game)}: its check of the networks raised {described(exc)} (a bug in the "
                        "game, or networks it cannot take)") from exc
    untrained = [n for n in nets if n not in trained and n not in nets.frozen and nets.parameters([n])]
    if untrained:
        raise UserError(f"{game_label(game)}: no player trains the {', '.join(untrained)}, and "
                        f"{'it is' if len(untrained) == 1 else 'they are'} not frozen: its weights would stay as "
                        "they start. Freeze it if that is meant (a recipe: `trainable = false` in its section; "
                        "Python: nets.freeze(NAME)), or add it to a player's networks")
    owner: dict[int, tuple[str, str]] = {}  # a parameter shared by two players' networks: who steps it?
    for player in game.players:
        for key, p in nets.named_parameters(player.networks):
            if id(p) in owner and owner[id(p)][0] != player.name:
                other_player, other_key = owner[id(p)]
                raise UserError(f"the parameter {key} is also {other_key}: players '{other_player}' and "
                                f"'{player.name}' would both step it. Share parameters only within one player's "
                                "networks (or freeze one side)")
            owner[id(p)] = (player.name, key)


# -- using a trained model -------------------------------------------------------------------------------

@contextlib.contextmanager
def evaluating(nets: Networks) -> Iterator[None]:
    """Eval mode and no gradients for ``nets``; restores each network's mode afterwards."""
    modes = {name: m.training for name, m in nets.items()}
    for m in nets.values():
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for name, m in nets.items():
            m.train(modes[name])


@dataclass
class TrainedModel:
    """A trained prior and networks on ``device``, with the game that says how to use them.

    ``sample``, ``encode`` and ``reconstruct`` always run the networks in eval mode and without gradients
    (whatever mode they are in, e.g. a trainer's networks mid-training), and leave their modes as they were.
    """

    nets: Networks
    game: Game
    device: torch.device
    condition: Condition | None = None

    @property
    def prior(self) -> Prior:
        return self.nets.prior

    @property
    def encoder(self) -> Encoder | None:
        return self.nets.get("encoder")  # type: ignore[return-value]

    @property
    def decoder(self) -> Decoder | None:
        return self.nets.get("decoder")  # type: ignore[return-value]

    @property
    def critic(self) -> JointCritic | None:
        return self.nets.get("critic")  # type: ignore[return-value]

    @property
    def conditional(self) -> bool:
        return bool(self.game.conditioned)

    def prior_sample(self, n: int, seed: int = 0) -> Tensor:
        """``n`` prior draws, the same for the same seed on any device."""
        return self.prior.sample(n, "cpu", generator=torch.Generator().manual_seed(seed)).to(self.device)

    def sample(self, n: int | None = None, *, z: Tensor | None = None, y: Tensor | None = None, seed: int = 0
               ) -> Tensor:
        """Decoder samples of ``z`` (or of ``n`` prior draws from ``seed``), for conditions ``y`` if conditional."""
        if z is None:
            if n is None:
                raise ValueError("give n or z")
            z = self.prior_sample(n, seed)
        elif n is not None and n != len(z):
            raise ValueError(f"n = {n} but z holds {len(z)} draws: give one of them (n is z's count)")
        with evaluating(self.nets):
            return self.game.sample(self.nets, z.to(self.device), _to(y, self.device))

    def encode(self, x: Tensor, y: Tensor | None = None) -> Posterior:
        """q(z | x) of examples (moved to the model's device), networks in eval mode."""
        with evaluating(self.nets):
            return self.game.encode(self.nets, x.to(self.device), _to(y, self.device))

    def reconstruct(self, x: Tensor, y: Tensor | None = None, use_mean: bool = False) -> Tensor:
        """Gx(Gz(x)) of examples (from the posterior mean with ``use_mean``), networks in eval mode."""
        with evaluating(self.nets):
            return self.game.reconstruct(self.nets, x.to(self.device), _to(y, self.device), use_mean)


def _to(y: Tensor | None, device: torch.device) -> Tensor | None:
    return None if y is None else y.to(device)


class Evaluator(abc.ABC):
    """Reads a trained model (through its game) and its data, returns named metrics; may write pictures."""

    #: Options that change only the pictures an evaluator draws, not its numbers (e.g. ``plot``): left out of the
    #: options eval.json records with each entry, so changing them neither makes a finished run evaluate again
    #: nor makes runs' numbers look unlike to ``compare``.
    pictures_only: ClassVar[frozenset[str]] = frozenset()

    @abc.abstractmethod
    def evaluate(self, model: TrainedModel, data: Dataset, out_dir: Path) -> dict[str, Any]:
        """The metrics of a trained model on ``data`` (JSON-able; pictures may go to ``out_dir``)."""
        ...

    def skip_reason(self, data: Dataset) -> str | None:
        """Why evaluating on ``data`` will report ``{"skipped": reason}`` instead of numbers, where that is known
        before training (too few labelled examples for the configured sizes, say); None if it is not. ``advinf
        run`` warns of it when training starts, and ``advinf validate --build`` prints it. Keep it cheap."""
        return None


class Logger(abc.ABC):
    """A metric sink. The trainer calls ``open`` when training starts (rank 0 only), then ``log_metrics`` every
    log interval, ``log_evaluation`` after each evaluation, ``log_image`` after each sample picture, and
    ``close`` when training ends (also when it stops early or fails).

    A logger is built when a recipe is validated too (to check it can work, e.g. that its package is
    installed): its constructor must be cheap and touch no file; ``open`` creates what it writes.
    """

    def open(self, run_dir: Path, start_step: int) -> None:
        """Start writing into ``run_dir``. ``start_step`` is the step training starts from: 0 for a new run,
        the checkpoint's step when resumed (records of later steps belong to steps about to be redone)."""

    @abc.abstractmethod
    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        """One record of a log interval: ``step``, ``epoch``, ``loss_PLAYER``, the game's scalars, ``samples_per_s``,
        ``time``, ... (numbers; the same keys every interval of a run)."""

    def log_evaluation(self, step: int, results: Mapping[str, Mapping[str, Any]], final: bool) -> None:
        """The evaluators' results at ``step`` (evaluator name -> metric name -> value, values JSON-like);
        ``final`` for the evaluation at the end of training (which the run directory keeps in eval.json)."""

    def log_image(self, step: int, name: str, path: Path) -> None:
        """A picture made at ``step``: ``name`` (``samples``) and the PNG file the trainer wrote."""

    def close(self) -> None:
        """Flush and release what ``open`` acquired."""



# -- building components ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RegisteredName:
    """Marks an option that names another registered component, checked against the registry when a recipe is
    validated (the error names the key and the available names), e.g. a game's divergence::

        divergence: Annotated[str, RegisteredName("divergence")] = "original"

    ``options`` names the sibling option (a table) that holds the named component's own options; validation checks
    it against that component's options model too, e.g. an evaluator's feature network::

        network: Annotated[str, RegisteredName("feature_network", options="network_options")] = "inception"
        network_options: dict[str, Any] = {}
    """

    kind: str
    options: str | None = None


#: The pydantic validation-context key that says whether options validators check this machine too.
_MACHINE = "environment"


def validation_context(machine: bool) -> dict[str, bool]:
    """The context recipe validation passes to every options model (``validate_recipe(environment=...)``)."""
    return {_MACHINE: machine}


def checks_machine(context: Mapping[str, Any] | None) -> bool:
    """In an options model's validator (``info.context``): whether to check this machine too, a file the options
    name or a package. False while a trained run's recipe is read back to sample or evaluate, whose training-only
    needs must not stop that; the component checks again when it is built."""
    return bool((context or {}).get(_MACHINE, True))


@dataclass
class BuildContext:
    """What a component factory may read: the pieces built before it, the device, the seed and the plugin host.

    ``condition`` is set while a network that a conditional game feeds labels to is built: such a network
    must take y (embedding it with :class:`ConditionEmbedding`) and set ``conditional = True``.
    """

    dataset: Dataset | None = None
    prior: Prior | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    condition: Condition | None = None
    network: str | None = None
    #: The recipe's game, once built (None before, and for the game's own factory): an evaluator's factory may
    #: refuse a game it cannot evaluate, before training rather than after it.
    game: Game | None = None
    #: The registered divergences by name (filled in by the plugin host for a game's factory).
    divergences: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    #: The plugin host building the recipe (an ``advinf.PluginHost``; None outside ``advinf.build``): lets a
    #: component build registered sub-components by name, e.g. an evaluator's feature network.
    host: Any = None

    def divergence(self, name: str) -> Callable[..., Any]:
        """The registered divergence ``name`` (see ``register_divergences``); a UserError naming the others."""
        try:
            return self.divergences[name]
        except KeyError:
            raise UserError(f"unknown divergence '{name}'. Available: "
                            f"{', '.join(sorted(self.divergences)) or '(none registered)'}") from None

    @property
    def latent_shape(self) -> tuple[int, ...] | None:
        return None if self.prior is None else tuple(self.prior.latent_shape)

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        return None if self.dataset is None else self.dataset.sample_shape


def flat_latent_dim(ctx: BuildContext | None, z_dim: int | None, what: str) -> int:
    """The latent dimensions of a network that takes z of shape (dim,) or (dim, 1, 1): ``z_dim`` when given
    (checked against the prior's), else the prior's. A UserError naming the network (``what``) when the prior's
    latent is not flat, disagrees, or neither gives one."""
    latent = getattr(ctx, "latent_shape", None)
    if latent is not None and math.prod(latent) != latent[0]:
        raise UserError(f"{what} needs a latent of shape (dim,) or (dim, 1, 1), but the prior gives {tuple(latent)}")
    dim = z_dim or (latent[0] if latent is not None else None)
    if dim is None:
        raise UserError(f"{what}: give z_dim, or build it from a recipe with a prior")
    if latent is not None and latent[0] != dim:
        raise UserError(f"{what}: z_dim = {dim}, but the prior has dim = {latent[0]}")
    return dim
