"""The advinf hook specifications: what a plugin may implement.

Every registration hook is called once per plugin with a ``register`` callback::

    register(name: str, factory: Callable[[Options, BuildContext], Component],
             options: type[pydantic.BaseModel] | None = None, summary: str | None = None, *,
             conditional: bool = False, labels: str | None | Callable[[Options], str | None] = "unknown")

``factory`` receives the validated options (an instance of ``options``, or an empty model when
``options`` is None) and a :class:`advinf.BuildContext` (the dataset and prior already built, the device),
and returns the component. ``summary`` defaults to the first line of the factory's docstring.
The ``name`` is what recipes use (``[critic] name = "..."``); names are unique per kind across all plugins.

Two facts ``advinf validate`` reads without building anything: ``conditional`` (networks) says the factory
builds a network that takes labels y when ``ctx.condition`` is set (it then embeds y with
:class:`advinf.ConditionEmbedding` and sets ``conditional = True`` on the module); ``labels`` (datasets) says
what labels the dataset has: None, ``"classes"``, ``"attributes"``, ``"unknown"`` (checked once built), or a
function of the options returning one of these.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("advinf")
hookimpl = pluggy.HookimplMarker("advinf")

Register = Any  # the register(name, factory, options=None, summary=None) callback


@hookspec
def register_games(register: Register) -> None:
    """Register games: factories returning an :class:`advinf.Game`: its players, the networks it needs, whether it
    needs labels, its losses (one per player) and how a trained model is sampled, encoded and reconstructed.

    A game factory is also called when a recipe is validated, with a BuildContext that holds no dataset or prior
    (to read the game's declarations): keep it cheap and independent of the data.
    """


@hookspec
def register_encoders(register: Register) -> None:
    """Register encoders: factories returning an :class:`advinf.Encoder` (x -> posterior over z)."""


@hookspec
def register_decoders(register: Register) -> None:
    """Register decoders: factories returning an :class:`advinf.Decoder` (z -> x)."""


@hookspec
def register_critics(register: Register) -> None:
    """Register critics: factories returning an :class:`advinf.JointCritic` (x, z -> logits)."""


@hookspec
def register_priors(register: Register) -> None:
    """Register priors: factories returning an :class:`advinf.Prior` (draws z)."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets: factories returning an :class:`advinf.Dataset` (train and held-out splits)."""


@hookspec
def register_evaluators(register: Register) -> None:
    """Register evaluators: factories returning an :class:`advinf.Evaluator` (metrics of a trained model)."""


@hookspec
def register_divergences(register: Register) -> None:
    """Register divergences: ``register(name, function, summary=None)``. Unlike the other kinds, the second
    argument is the divergence itself, not a factory, and a divergence takes no options.

    ``function(d_data, d_model) -> (critic_loss, generator_loss)``: ``d_data`` are the critic's logits on data
    pairs (x, Gz(x)), ``d_model`` on model pairs (Gx(z), z), both of shape (B,); it returns two 0-dim tensors,
    the loss the critic minimises and the loss the generator (encoder and decoder) minimises. It may accept a
    keyword ``smoothing`` (a float in [0, 1)) for one-sided label smoothing: the critic's loss then counts each
    data pair as data with weight 1 - smoothing and as model with weight smoothing. Games with a ``divergence``
    option (the built-in ``ali``, ``bigan``, ``gan``, ``conditional_ali``, ``alice``) take any registered name;
    the game's factory gets the function from ``ctx.divergence(name)``.
    """


@hookspec
def register_feature_networks(register: Register) -> None:
    """Register feature networks: what sample-quality evaluators (``fid``, ``kid``) compare samples and data in.

    A recipe names one in an evaluator's options (``[evaluators.fid] network = "NAME"``, its options as
    ``network_options = {...}``). The factory is called at the evaluator's first evaluation (not when the recipe is
    built), with the run's :class:`advinf.BuildContext` (``ctx.dataset``: the run's dataset, e.g. to train on its
    training split; ``ctx.device``; ``ctx.seed``), and returns a ``torch.nn.Module`` whose ``forward(x)`` takes
    images as uint8 (N, C, H, W) with values 0..255 (the dataset's own channels and size; evaluators quantise
    decoder samples to uint8 first) and returns float features (N, D), with an int attribute ``num_features`` = D
    and optionally ``about``, a JSON-ready dict copied into the evaluator's report. The evaluator puts it in eval
    mode and calls it without gradients. It must give the same network for the same options, data and seed, so
    that evaluations every N steps and later ``advinf evaluate`` runs compare.
    """


@hookspec
def register_loggers(register: Register) -> None:
    """Register loggers: factories returning an :class:`advinf.Logger`, a sink for a run's metrics (scalars every
    log interval, evaluator results, sample pictures), chosen by name with ``[train] loggers = [...]`` or
    ``advinf run --logger NAME``.

    A logger factory is also called when a recipe is validated (with a BuildContext that holds no dataset or prior),
    so that a logger that cannot work fails there: raise :class:`advinf.UserError` saying what to install. Keep the
    factory cheap and let it touch no file; the logger creates its files in ``open(run_dir, start_step)``.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``advinf`` command line: ``cli`` is the root :class:`click.Group`.

    Use ``@cli.command()`` inside the hook. Raise :class:`advinf.UserError` for problems the user can fix.
    """


#: Registration hook name -> component kind (the recipe section it fills).
COMPONENT_HOOKS: dict[str, str] = {
    "register_games": "game",
    "register_encoders": "encoder",
    "register_decoders": "decoder",
    "register_critics": "critic",
    "register_priors": "prior",
    "register_datasets": "dataset",
    "register_evaluators": "evaluator",
    "register_divergences": "divergence",
    "register_feature_networks": "feature_network",
    "register_loggers": "logger",
}
KINDS: tuple[str, ...] = tuple(COMPONENT_HOOKS.values())
