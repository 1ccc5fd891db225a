"""The embed activity heartbeats within its heartbeat timeout even while one encode call runs
longer than that (a large DOCINGEST_EMBEDDING_BATCH_SIZE, two batches sharing the lanes, a
slow CPU): else the server times the attempt out and retries it, and it times out again."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
from temporalio.testing import ActivityEnvironment

from activities.embed import EmbedActivities
from activities.vectors import Vectors
from core.staging import StagingStore

WIDTH = 384


class SlowEmbedder:
    """10 ms a text, all in one call: 200 texts take 2 s."""

    dimension = WIDTH
    precision = "float32"
    model_name = "slow"

    def encode(self, texts: list[str]) -> Vectors:
        time.sleep(0.01 * len(texts))
        return np.full((len(texts), WIDTH), WIDTH**-0.5, dtype=np.float32)


def test_embed_heartbeats_within_its_timeout_during_one_long_encode_call(tmp_path: Path) -> None:
    timeout = 0.6
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=timeout))
    beats: list[float] = []
    env.on_heartbeat = lambda *details: beats.append(time.monotonic())
    embed = EmbedActivities(StagingStore(str(tmp_path)), SlowEmbedder(), sub_batch=1024)
    started = time.monotonic()
    vectors = env.run(embed.encode, ["a chunk"] * 200)
    ended = time.monotonic()
    assert vectors.shape == (200, WIDTH) and vectors.dtype == np.float32
    gaps = np.diff([started, *beats, ended])
    assert gaps.max() < timeout, f"{gaps.max():.2f} s without a heartbeat"
