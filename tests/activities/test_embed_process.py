"""The worker's model in a child process (activities/embed_process.py): the same vectors as in
the worker's own process, calls from several threads at once, a child that dies replaced at the
next call, a model that cannot load refused at start, and no child left behind by a worker that
is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest

from activities.embed import BUNDLED_MODEL, SentenceTransformerEmbedder
from activities.embed_process import EmbedderDied, EmbedderOptions, EmbedderProcess
from core.errors import ConfigurationError

TEXTS = [
    "",
    "short",
    "A much longer passage about harbour cranes and tides. " * 12,
    "Ein deutscher Satz über Apfelbäume im Frühling.",
    "短い日本語の文です。",
]


def options(tmp_path: Path, model_path: str | None = None) -> EmbedderOptions:
    return EmbedderOptions(model_path, 32, "cpu", "float32", tmp_path / "models")


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbedderProcess]:
    started = EmbedderProcess(options(tmp_path_factory.mktemp("embedder")))
    yield started
    started.close()


def test_child_gives_the_vectors_of_the_model_in_this_process(embedder: EmbedderProcess) -> None:
    here = SentenceTransformerEmbedder(precision="float32", device="cpu")
    assert (embedder.dimension, embedder.precision, embedder.model_name, embedder.device) == (
        here.dimension,
        "float32",
        BUNDLED_MODEL,
        "cpu",
    )
    vectors = embedder.encode(TEXTS * 3)
    assert vectors.dtype == np.float32 and vectors.shape == (15, here.dimension)
    assert np.allclose(vectors, here.encode(TEXTS * 3), atol=1e-5)


def test_calls_from_several_threads_get_their_own_texts_vectors(
    embedder: EmbedderProcess,
) -> None:
    """Two embed activities call at once, as the worker's do; each gets its rows, in order."""
    alone = {text: embedder.encode([text])[0] for text in TEXTS}
    calls = [TEXTS[number % 5 :] + TEXTS[: number % 5] for number in range(12)]
    with ThreadPoolExecutor(4) as threads:
        answers = list(threads.map(embedder.encode, calls))
    for texts, vectors in zip(calls, answers, strict=True):
        assert np.allclose(vectors, [alone[text] for text in texts], atol=1e-5)


def test_child_ignores_ctrl_c_and_sigterm_the_worker_decides_when_it_stops(
    embedder: EmbedderProcess,
) -> None:
    """Ctrl-C reaches the terminal's whole process group, and a service manager may SIGTERM
    every process of the service: the worker lets its running activities finish meanwhile."""
    child = embedder._child
    assert child.pid is not None
    os.kill(child.pid, signal.SIGINT)
    os.kill(child.pid, signal.SIGTERM)
    assert embedder.encode(["still here"]).shape == (1, embedder.dimension)
    assert embedder._child is child and child.is_alive()


def test_a_child_that_died_fails_the_call_in_flight_and_the_next_call_starts_another(
    tmp_path: Path,
) -> None:
    embedder = EmbedderProcess(options(tmp_path))
    try:
        first = embedder._child
        assert first.pid is not None
        failures: list[BaseException] = []

        def long_call() -> None:
            try:
                embedder.encode(["A passage long enough to take a while. " * 40] * 400)
            except BaseException as exc:  # what the activity would see
                failures.append(exc)

        call = threading.Thread(target=long_call)
        call.start()
        time.sleep(1.0)  # the call is in the child's hands
        os.kill(first.pid, signal.SIGKILL)  # as the OOM killer would
        call.join(60)
        assert len(failures) == 1 and isinstance(failures[0], EmbedderDied), failures
        assert "ended (exit code -9)" in str(failures[0])
        vectors = embedder.encode(["after the restart"])
        assert vectors.shape == (1, embedder.dimension)
        assert embedder._child is not first and embedder._child.is_alive()
    finally:
        embedder.close()
    assert not embedder._child.is_alive()


def test_a_model_that_cannot_load_is_refused_at_start_with_the_childs_reason(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "no-model"
    empty.mkdir()
    with pytest.raises(ConfigurationError, match="cannot be loaded"):
        EmbedderProcess(options(tmp_path, str(empty)))


def test_closed_embedder_refuses_calls(tmp_path: Path) -> None:
    embedder = EmbedderProcess(options(tmp_path))
    embedder.close()
    assert not embedder._child.is_alive()
    with pytest.raises(EmbedderDied, match="stopping"):
        embedder.encode(["too late"])


_WORKER = """
import sys, time
from pathlib import Path
from activities.embed_process import EmbedderOptions, EmbedderProcess

if __name__ == "__main__":
    embedder = EmbedderProcess(EmbedderOptions(None, 32, "cpu", "float32", Path(sys.argv[1])))
    print(embedder._child.pid, flush=True)
    time.sleep(600)
"""


def test_child_ends_when_the_worker_is_killed(tmp_path: Path) -> None:
    """A worker killed with SIGKILL runs no cleanup: its model's child must not stay behind,
    holding the model's memory."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    worker = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "models")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        assert worker.stdout is not None
        child = psutil.Process(int(worker.stdout.readline()))
        assert child.is_running()
        worker.kill()
        worker.wait(30)
        gone, _ = psutil.wait_procs([child], timeout=30)
        assert gone, "the model's child outlived its worker"
    finally:
        worker.kill()
