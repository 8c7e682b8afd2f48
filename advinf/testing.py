"""A pytest helper for plugin authors (loaded automatically through the ``pytest11`` entry point).

Fixture ``advinf_host``: a fresh :class:`advinf.PluginHost` with no plugins loaded, so a test can add
exactly the plugins it is about (a factory that sizes its network from the data gets a ``BuildContext``)::

    def test_my_critic(advinf_host):
        advinf_host.add_plugin(my_plugin_module, name="mine")
        ctx = advinf.BuildContext(dataset=advinf.create("dataset", "mixture25", None, samples=10, heldout=0),
                                  prior=advinf.create("prior", "gaussian", None, dim=2))
        critic = advinf_host.create("critic", "my_critic", ctx, hidden=32)

Nothing is registered in it but what the test adds, divergences included: a test of a game that takes one adds
the built-in ones too, ``advinf_host.add_plugin(advinf_plugins.games, name="games")``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from advinf.plugins import PluginHost


@pytest.fixture
def advinf_host() -> Iterator[PluginHost]:
    yield PluginHost(strict=False, disabled=set())
