"""Fixtures of the e2e tests: an HTTP client of the shared system."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.api import Api
from tests.support.services import System


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture(scope="session")
def api(system: System, http: aiohttp.ClientSession) -> Api:
    return Api(http, system.order_url, system.inventory_url, system.payment_url)


@pytest.fixture
def product() -> str:
    """A product id no other test uses."""
    return f"sku-{uuid.uuid4().hex[:12]}"
