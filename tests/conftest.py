"""Fixtures for the real-service tests. Run the suite with `./stack test` (it starts the test
profile's Kafka, MariaDB and Redis on their own ports and exports their CRASH_* settings)."""
from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from harness import Pipeline
from streams.settings import Settings, get_settings

_open_pipelines: list[Pipeline] = []


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    if os.environ.get("CRASH_PROFILE") != "test":
        pytest.exit("run the tests with ./stack test (it starts the test services and sets CRASH_*)", 2)
    return get_settings()


@pytest.fixture(scope="module")
async def pipeline_factory(base_settings: Settings, tmp_path_factory) -> AsyncIterator:
    made: list[Pipeline] = []

    async def make(name: str, workers: int = 1, gateway: bool = True, env: dict[str, str] | None = None) -> Pipeline:
        pipeline = Pipeline(name, base_settings, tmp_path_factory.mktemp(name))
        pipeline.env.update(env or {})
        made.append(pipeline)
        _open_pipelines.append(pipeline)
        await pipeline.start(workers=workers, gateway=gateway)
        return pipeline

    yield make
    for pipeline in made:
        await pipeline.close()
        _open_pipelines.remove(pipeline)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _open_pipelines:
        report.sections.append(("pipeline logs", "\n".join(p.logs() for p in _open_pipelines)))
