"""DOCINGEST_EMBEDDING_PRECISION=int8: the ONNX export is built from the bundled model (never
downloaded), once, and agrees closely with float32; a worker and an API on int8 ingest and
search end to end."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from activities.embed import BUNDLED_MODEL, bundled_model_path, make_embedder, resolve_precision
from activities.onnx_int8 import OnnxInt8Embedder, int8_model_file, model_key
from core.errors import ConfigurationError
from tests.activities.test_embed_precision import TOP_K, corpus, top_k
from tests.support import (
    FIGURES,
    Stack,
    Tenant,
    WorkerProcess,
    serve,
    stack_settings,
    wait_for_status,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models_dir(stack: Stack) -> Path:
    """The session stack's models folder, with the export built once for this module."""
    int8_model_file(bundled_model_path(), stack.settings.models_dir)
    return stack.settings.models_dir


def test_int8_export_is_built_once_even_when_asked_at_once(tmp_path: Path) -> None:
    found: list[Path] = []
    askers = [
        threading.Thread(
            target=lambda: found.append(int8_model_file(bundled_model_path(), tmp_path))
        )
        for _ in range(2)
    ]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join()
    assert len(set(found)) == 1
    built = found[0]
    assert built.is_file() and built.parent.parent == tmp_path
    assert sorted(path.name for path in built.parent.iterdir()) == [".build.lock", built.name]
    modified = built.stat().st_mtime_ns
    assert int8_model_file(bundled_model_path(), tmp_path) == built
    assert built.stat().st_mtime_ns == modified  # reused, not rebuilt


def test_a_damaged_int8_export_is_built_again(tmp_path: Path) -> None:
    """An export left empty or cut short (a crash right after it was renamed into place) is
    rebuilt at the next start, not loaded by every start and refused by ONNX Runtime."""
    target = tmp_path / model_key(bundled_model_path()) / "model-int8.onnx"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"")
    killed_build = target.parent / ".build-abc123"  # the scratch of a build killed midway
    killed_build.mkdir()
    (killed_build / "model-float32.onnx").write_bytes(b"\0" * 1000)
    embedder = OnnxInt8Embedder(bundled_model_path(), 32, tmp_path, BUNDLED_MODEL)
    assert embedder.file == target and target.stat().st_size > 1_000_000
    assert sorted(path.name for path in target.parent.iterdir()) == [
        ".build.lock", "model-int8.onnx"
    ]  # fmt: skip
    assert embedder.encode(["a chunk", "another"]).shape == (2, 384)


def test_int8_where_the_export_cannot_be_built_is_refused_naming_the_folder(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "models"
    blocked.write_text("a file where the folder should be")  # as a read-only home, for root
    with pytest.raises(ConfigurationError, match=r"cannot build the int8 export .* in .*models"):
        make_embedder(None, 32, "cpu", "int8", blocked)


@pytest.mark.parametrize("lfs_pointer", [False, True], ids=["no-weights", "git-lfs-pointer"])
def test_int8_of_a_model_folder_without_its_weights_names_the_model_not_the_export_folder(
    tmp_path: Path, lfs_pointer: bool
) -> None:
    """A model folder copied without its weights was "cannot build the int8 export …: make
    that folder writable", of a folder that was writable; one cloned without Git LFS (a
    pointer file where its weights go) was a SafetensorError traceback."""
    model = tmp_path / "model"
    shutil.copytree(bundled_model_path(), model, ignore=shutil.ignore_patterns("*.safetensors"))
    if lfs_pointer:
        (model / "model.safetensors").write_text(
            "version https://git-lfs.github.com/spec/v1\noid sha256:53aa5117\nsize 90868376\n"
        )
    with pytest.raises(ConfigurationError) as refused:
        make_embedder(str(model), 32, "cpu", "int8", tmp_path / "models")
    reason = (
        "model.safetensors holds a Git LFS pointer, not the file: run `git lfs pull` in that "
        "folder (the clone was made without Git LFS)"
        if lfs_pointer
        else "Error no file named model.safetensors"
    )
    assert str(refused.value).startswith(
        f"DOCINGEST_EMBEDDING_MODEL: the model in {model} cannot be loaded: {reason}"
    )


def test_int8_vectors_agree_closely_with_float32(models_dir: Path) -> None:
    chunks = corpus()
    queries = [chunk.split(". ")[0][:200] for chunk in chunks[::2]]
    full = make_embedder(None, 32, "cpu", "float32", models_dir)
    quantized = make_embedder(None, 32, "cpu", "int8", models_dir)
    assert isinstance(quantized, OnnxInt8Embedder)
    assert (quantized.precision, quantized.dimension) == ("int8", full.dimension)
    assert quantized.model_name == full.model_name == BUNDLED_MODEL

    full_chunks, int8_chunks = full.encode(chunks), quantized.encode(chunks)
    assert int8_chunks.dtype == np.float32
    assert np.allclose(np.linalg.norm(int8_chunks, axis=1), 1.0, atol=1e-5)
    cosine = (full_chunks * int8_chunks).sum(axis=1)
    assert cosine.min() >= 0.97
    assert cosine.mean() >= 0.99
    # Dynamic quantization scales activations per batch, so a chunk's vector depends a little
    # on its batch mates; order alone changes nothing.
    alone = quantized.encode(chunks[:3])
    assert ((alone * int8_chunks[:3]).sum(axis=1) >= 0.98).all()
    assert np.allclose(quantized.encode(chunks[:3][::-1])[::-1], alone, atol=1e-5)

    expected = top_k(full.encode(queries), full_chunks)
    found = top_k(quantized.encode(queries), int8_chunks)
    agreement = np.mean([len(a & b) / TOP_K for a, b in zip(expected, found, strict=True)])
    assert agreement >= 0.85, f"top-{TOP_K} agreement {agreement:.3f}"
    FIGURES.append(
        f"int8 (ONNX) vs float32 on the bundled model: {len(chunks)} chunks, cosine min "
        f"{cosine.min():.4f} mean {cosine.mean():.4f}, top-{TOP_K} agreement {agreement:.1%} "
        f"over {len(queries)} queries"
    )


def test_int8_is_asked_for_never_chosen_and_cpu_only(tmp_path: Path) -> None:
    assert resolve_precision("auto", "cpu") in {"float32", "bfloat16"}
    assert resolve_precision("int8", "cpu") == "int8"
    with pytest.raises(ConfigurationError, match="CPU only"):
        make_embedder(None, 32, "cuda", "int8", tmp_path)
    assert not any(tmp_path.iterdir())  # refused before building anything


async def test_worker_and_api_on_int8_ingest_and_search(
    stack: Stack, tenant: Tenant, models_dir: Path
) -> None:
    settings = stack_settings(stack, embedding_precision="int8")
    assert settings.models_dir == models_dir
    worker = WorkerProcess(settings)
    worker.start()
    text = (
        "To fix a flat bicycle tyre, remove the wheel, find the puncture and patch the tube.\n\n"
        "Prune roses in late winter, cutting just above an outward-facing bud.\n"
    )
    try:
        async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
            accepted = await http.post(
                "/upload/agent",
                params={"agent_id": tenant.agent_id, "chunk_size": 100, "chunk_overlap": 0},
                headers=tenant.headers,
                files={"file": ("guide.txt", text.encode())},
            )
            assert accepted.status_code == 202, accepted.text
            final = await wait_for_status(
                http, tenant, accepted.json()["task_id"], {"complete", "failed", "error"}, 180
            )
            assert final["status"] == "complete", final
            document = (
                await http.get(f"/documents/{final['document_id']}", headers=tenant.headers)
            ).json()
            assert (document["embedding_precision"], document["embedding_model"]) == (
                "int8", BUNDLED_MODEL,
            )  # fmt: skip
            found = await http.post(
                f"/agents/{tenant.agent_id}/search",
                json={"query": "how do I repair a punctured bike tire", "top_k": 1},
                headers=tenant.headers,
            )
        assert found.status_code == 200, found.text
        [best] = found.json()["results"]
        assert "bicycle tyre" in best["text"]
    finally:
        worker.stop()
