"""A plugin host for plugin authors' tests: pytest's ``advinf_host`` fixture gives one (installed with advinf,
through the ``pytest11`` entry point, module ``pytest_advinf``).

:func:`fresh_host` is a :class:`advinf.PluginHost` with no plugins loaded, so a test can add exactly the plugins
it is about (a factory that sizes its network from the data gets a ``BuildContext``)::

    def test_my_critic(advinf_host):
        advinf_host.add_plugin(my_plugin_module, name="mine")
        ctx = advinf.BuildContext(dataset=advinf.create("dataset", "mixture25", None, samples=10, heldout=0),
                                  prior=advinf.create("prior", "gaussian", None, dim=2))
        critic = advinf_host.create("critic", "my_critic", ctx, hidden=32)

Nothing is registered in it but what the test adds, divergences included: a test of a game that takes one adds
the built-in ones too, ``advinf_host.add_plugin(advinf_plugins.games, name="games")``.
"""

from __future__ import annotations

from advinf.plugins import PluginHost


def fresh_host() -> PluginHost:
    """A plugin host with nothing loaded and nothing disabled (the ``advinf_host`` fixture's)."""
    return PluginHost(strict=False, disabled=set())
