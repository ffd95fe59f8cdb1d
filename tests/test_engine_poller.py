"""The engine poller in-process, against a server of the captured vLLM exposition."""

from __future__ import annotations

import dataclasses

from slo_sidecar.sidecar.config import SidecarConfig
from slo_sidecar.sidecar.engine_poller import EnginePoller
from slo_sidecar.sidecar.exposition import parse
from tests.conftest import run_async
from tests.fake_exposition_server import ExpositionServer
from tests.helpers import VLLM_EXPOSITION



def family_value(families, name: str) -> float:
    return next(family.samples[0].value for family in families if family.name == name)


@run_async
async def test_samples_over_the_cap_are_dropped_and_counted():
    wanted = len(parse(VLLM_EXPOSITION.read_text(), EnginePoller(SidecarConfig()).wanted))
    server = ExpositionServer(VLLM_EXPOSITION.read_text()).start()
    try:
        for cap, dropped in ((SidecarConfig.max_engine_series, 0), (50, wanted - 50)):
            engine = EnginePoller(dataclasses.replace(SidecarConfig(), engine_url=server.url,
                                                         max_engine_series=cap))
            families = await engine.poll()
            await engine.close()
            assert family_value(families, "sidecar_engine_samples_dropped") == dropped
            # vLLM lists its gauges before the histograms: the first 50 samples still hold them.
            assert family_value(families, "sidecar_engine_queue_depth") == 0
    finally:
        server.stop()
    assert wanted > 50


@run_async
async def test_the_engines_gpus_are_read_from_its_accelerator_info():
    extra = ('# TYPE slo_engine_accelerator_info gauge\n'
             'slo_engine_accelerator_info{model_name="m",uuid="GPU-aaa"} 1.0\n'
             'slo_engine_accelerator_info{model_name="m",uuid="GPU-bbb"} 1.0\n')
    server = ExpositionServer(VLLM_EXPOSITION.read_text() + extra).start()
    try:
        engine = EnginePoller(dataclasses.replace(SidecarConfig(), engine_url=server.url))
        assert engine.engine_gpus == frozenset()
        await engine.poll()
        await engine.close()
    finally:
        server.stop()
    assert engine.engine_gpus == {"GPU-aaa", "GPU-bbb"}
