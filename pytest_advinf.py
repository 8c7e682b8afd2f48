"""advinf's pytest plugin (the ``pytest11`` entry point): the ``advinf_host`` fixture for plugin authors.

A module of its own, outside the ``advinf`` package, so that pytest loading it imports nothing more: importing
advinf imports torch (about 2 s), which a test run of another project in the same environment should not pay.
The fixture imports advinf when a test asks for it. What it gives: :func:`advinf.testing.fresh_host`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from advinf.plugins import PluginHost


@pytest.fixture
def advinf_host() -> Iterator[PluginHost]:
    from advinf.testing import fresh_host

    yield fresh_host()
