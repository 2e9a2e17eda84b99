"""Run the standard suites' ``async def`` tests with pytest-asyncio.

langchain-tests writes its async tests without an ``asyncio`` mark (partner packages set
``asyncio_mode = "auto"``); this project runs pytest-asyncio in strict mode, so the mark
is added here, to coroutine tests only, before pytest-asyncio looks at them.
"""

from __future__ import annotations

import inspect
from collections.abc import Generator
from typing import Any

import pytest


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_pycollect_makeitem(collector: Any, name: str, obj: object) -> Generator[Any]:
    outcome = yield
    result = outcome.get_result()
    items = result if isinstance(result, list) else [result] if result is not None else []
    for item in items:
        if (
            isinstance(item, pytest.Function)
            and inspect.iscoroutinefunction(item.obj)
            and item.get_closest_marker("asyncio") is None
        ):
            item.add_marker(pytest.mark.asyncio)
