"""A pytest helper for plugin authors (loaded automatically through the ``pytest11`` entry point).

Fixture ``advinf_host``: a fresh :class:`advinf.PluginHost` with no plugins loaded, so a test can add
exactly the plugins it is about::

    def test_my_critic(advinf_host):
        advinf_host.add_plugin(my_plugin_module, name="mine")
        critic = advinf_host.create("critic", "my_critic", None, hidden=32)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from advinf.plugins import PluginHost


@pytest.fixture
def advinf_host() -> Iterator[PluginHost]:
    yield PluginHost(strict=False, disabled=set())
