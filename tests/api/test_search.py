"""`POST /agents/{id}/search` over HTTP with the real model, and the lazy query embedder."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select, text

from activities.embed import TextEmbedder
from activities.vectors import Vectors
from api.query_embedder import QueryEmbedder
from api.routes.search import (
    HNSW_SCAN_TUPLES,
    SearchPlan,
    choose_plan,
    nearest_chunks,
    plan_search,
)
from core.errors import ConfigurationError
from core.models import EMBEDDING_DIMENSION, Chunk, Document
from tests.support import (
    FakeEmbedder,
    Stack,
    Tenant,
    new_tenant,
    plan_from_indexes,
    serve,
    stack_settings,
    statements_run,
    wait_for_status,
)
from workflows.types import Status

HIT_KEYS = {
    "score",
    "text",
    "document_id",
    "filename",
    "page",
    "start_char",
    "end_char",
    "chunk_id",
}

# One topic per paragraph of 101-199 characters: with chunk_size 200 each is one chunk.
HANDBOOK = "\n\n".join(
    [
        "To bake sourdough bread, feed the starter the night before, mix flour, water and "
        "salt, and let the dough rise slowly for eight to twelve hours before baking it.",
        "Jupiter is the largest planet of the solar system, a gas giant whose great red spot "
        "is a storm wider than the Earth that has raged for centuries.",
        "To fix a flat bicycle tyre, take the wheel off, lever the tyre from the rim, find "
        "the puncture in the inner tube, patch it and pump it back up.",
        "Quarterly tax returns are due at the end of the month after each quarter; late "
        "filings pay a penalty plus interest on the unpaid amount.",
    ]
).encode()
GARDEN = "\n\n".join(
    [
        "Tomatoes need six to eight hours of direct sun a day, deep watering twice a week and "
        "a stake or cage to climb.",
        "Prune roses in late winter, cutting just above an outward facing bud, and remove any "
        "dead, crossing or diseased canes.",
        "Compost turns kitchen scraps, grass clippings and fallen leaves into rich dark soil "
        "within a few months if kept moist.",
    ]
).encode()
SMALL_CHUNKS = {"chunk_size": 200, "chunk_overlap": 0}


async def ingest(
    http: httpx.AsyncClient, tenant: Tenant, name: str, data: bytes, agent_id: str | None = None
) -> str:
    """Upload a file, wait until it is stored; returns its document id."""
    response = await http.post(
        "/upload/agent",
        params={"agent_id": agent_id or tenant.agent_id, **SMALL_CHUNKS},
        headers=tenant.headers,
        files={"file": (name, data)},
    )
    assert response.status_code == 202, response.text
    status = await wait_for_status(http, tenant, response.json()["task_id"], Status.TERMINAL)
    assert status["status"] == "complete", status
    document_id: str = status["document_id"]
    return document_id


async def search(
    http: httpx.AsyncClient, tenant: Tenant, query: str, agent_id: str | None = None, **extra: Any
) -> list[dict[str, Any]]:
    response = await http.post(
        f"/agents/{agent_id or tenant.agent_id}/search",
        json={"query": query, **extra},
        headers=tenant.headers,
    )
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


@pytest.mark.usefixtures("worker")
async def test_search_ranks_the_relevant_chunk_first(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    handbook, garden = await asyncio.gather(
        ingest(http, tenant, "handbook.txt", HANDBOOK),
        ingest(http, tenant, "garden.md", GARDEN),
    )

    results = await search(http, tenant, "my bike has a puncture, how do I repair the tire?")
    assert len(results) == 5  # the default top_k, of 7 chunks
    best = results[0]
    assert set(best) == HIT_KEYS
    assert "bicycle tyre" in best["text"]
    assert (best["document_id"], best["filename"], best["page"]) == (handbook, "handbook.txt", None)
    assert HANDBOOK.decode()[best["start_char"] : best["end_char"]] == best["text"]
    scores = [hit["score"] for hit in results]
    assert scores == sorted(scores, reverse=True)
    assert scores[-1] > 0
    assert scores[0] <= 1
    assert scores[0] > scores[1] + 0.1

    roses = await search(http, tenant, "when should I cut back rose bushes", top_k=1)
    assert len(roses) == 1
    assert roses[0]["document_id"] == garden
    assert "Prune roses" in roses[0]["text"]
    everything = await search(http, tenant, "anything at all", top_k=50)
    assert len(everything) == 7
    assert len({hit["chunk_id"] for hit in everything}) == 7


async def test_search_rejects_bad_bodies(http: httpx.AsyncClient, tenant: Tenant) -> None:
    url = f"/agents/{tenant.agent_id}/search"
    for body in (
        {"query": "bread", "top_k": 0},
        {"query": "bread", "top_k": 51},
        {"query": ""},
        {"query": " "},
        {"query": "\n\t  "},
        {"query": "x" * 2001},
        {"top_k": 3},
    ):
        response = await http.post(url, json=body, headers=tenant.headers)
        assert response.status_code == 422, body
        assert response.json()["code"] == "invalid_request"
    not_json = await http.post(url, content=b"query=bread", headers=tenant.headers)
    assert not_json.status_code == 422


async def test_search_refuses_a_query_past_the_models_window(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    """The model reads 256 tokens of a query and drops the rest: a 1,544-character question
    after a long preamble was answered as the preamble alone (the same results and scores,
    whatever the question). Such a query is 422, one within the window is searched."""
    url = f"/agents/{tenant.agent_id}/search"
    for preamble in (PREAMBLES["en"][:1500], PREAMBLES["zh"][:300]):
        long = await http.post(
            url, json={"query": f"{preamble} {ENDINGS['en'][2]}"}, headers=tenant.headers
        )
        assert long.status_code == 422, long.text
        assert long.json()["code"] == "invalid_request"
        assert "the embedding model reads 256" in long.json()["detail"]
    within = await http.post(
        url, json={"query": f"{PREAMBLES['en'][:800]} {ENDINGS['en'][2]}"}, headers=tenant.headers
    )
    assert within.status_code == 200, within.text


async def test_search_refuses_a_query_of_no_word_the_model_reads(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    """A query of invisible or control characters alone is not blank to the trim, but the
    model reads no token of it: it was answered 200 with the agent's chunks scored against an
    empty text, the same results whatever those characters were. It is 422 now; such
    characters beside a word are searched."""
    url = f"/agents/{tenant.agent_id}/search"
    for query in ("\u200b", "\ufeff\u200c", "\x00", "\x01\x02", "\ufe0f", "\u00ad"):
        response = await http.post(url, json={"query": query}, headers=tenant.headers)
        assert response.status_code == 422, (query, response.text)
        assert response.json()["code"] == "invalid_request"
        assert "no word the embedding model reads" in response.json()["detail"]
    worded = await http.post(url, json={"query": "\u200bbread\x00"}, headers=tenant.headers)
    assert worded.status_code == 200, worded.text


async def test_search_answers_404_for_unknown_and_foreign_agents(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    other = await new_tenant(stack, "other")
    for agent_id in (str(uuid.uuid4()), "not-a-uuid", other.agent_id):
        response = await http.post(
            f"/agents/{agent_id}/search", json={"query": "bread"}, headers=tenant.headers
        )
        assert response.status_code == 404, agent_id
        assert response.json()["code"] == "not_found"
    anonymous = await http.post(f"/agents/{tenant.agent_id}/search", json={"query": "bread"})
    assert anonymous.status_code == 401


@pytest.mark.usefixtures("worker")
async def test_search_covers_only_that_agents_complete_documents(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    created = await http.post("/agents", json={"name": "second"}, headers=tenant.headers)
    second_agent = created.json()["id"]
    first_doc, second_doc = await asyncio.gather(
        ingest(http, tenant, "handbook.txt", HANDBOOK),
        ingest(http, tenant, "handbook-copy.txt", HANDBOOK + b"\n\nSecond edition.", second_agent),
    )
    query = "how long does sourdough dough rise"

    first = await search(http, tenant, query, top_k=50)
    second = await search(http, tenant, query, agent_id=second_agent, top_k=50)
    assert {hit["document_id"] for hit in first} == {first_doc}
    assert {hit["document_id"] for hit in second} == {second_doc}
    assert "sourdough" in first[0]["text"]

    # A row that is not `complete` is never searched, whatever chunks it still has.
    async with stack.sessionmaker.begin() as session:
        await session.execute(
            text("UPDATE documents SET status = 'error' WHERE id = :id"),
            {"id": uuid.UUID(first_doc)},
        )
    assert await search(http, tenant, query) == []


@pytest.mark.usefixtures("worker")
async def test_search_while_a_document_is_deleted_answers_every_request(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    doomed, kept = await asyncio.gather(
        ingest(http, tenant, "handbook.txt", HANDBOOK),
        ingest(http, tenant, "garden.md", GARDEN),
    )
    query = "fixing a flat bicycle tyre"
    assert doomed in {hit["document_id"] for hit in await search(http, tenant, query)}

    async def search_status(n: int) -> tuple[int, set[str]]:
        response = await http.post(
            f"/agents/{tenant.agent_id}/search",
            json={"query": f"{query} {n}", "top_k": 50},
            headers=tenant.headers,
        )
        hits = response.json()["results"] if response.status_code == 200 else []
        return response.status_code, {hit["document_id"] for hit in hits}

    async def delete() -> tuple[int, set[str]]:
        response = await http.delete(f"/documents/{doomed}", headers=tenant.headers)
        return response.status_code, set()

    searches = [search_status(n) for n in range(24)]
    outcomes = await asyncio.gather(*searches[:12], delete(), *searches[12:])
    assert outcomes.pop(12) == (204, set())
    for status_code, documents in outcomes:
        assert status_code == 200
        assert documents <= {doomed, kept}
    for n in range(5):
        assert await search_status(n) == (200, {kept})


async def test_query_embedder_loads_the_model_once_off_the_event_loop() -> None:
    loaded_in: list[threading.Thread] = []

    def load() -> TextEmbedder:
        loaded_in.append(threading.current_thread())
        return FakeEmbedder()

    embedder = QueryEmbedder(load)
    vectors = await asyncio.gather(*(embedder.embed(f"query {n}") for n in range(10)))
    assert len(loaded_in) == 1
    assert loaded_in[0] is not threading.current_thread()
    np.testing.assert_allclose(vectors[3], FakeEmbedder().encode(["query 3"])[0])


async def test_query_embedder_refuses_a_model_of_another_width() -> None:
    class NarrowEmbedder(FakeEmbedder):
        dimension = 8

    embedder = QueryEmbedder(NarrowEmbedder)
    with pytest.raises(ConfigurationError, match="8-wide"):
        await embedder.embed("anything")


async def test_search_on_an_api_that_cannot_load_its_model_says_why_to_client_and_log(
    stack: Stack, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    """A 500 of the deployment's own (configuration_error): the operator's log said only
    "500 Internal Server Error" while the client read the reason."""
    settings = stack_settings(stack, embedding_device="cuda:99")
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        answer = await http.post(
            f"/agents/{tenant.agent_id}/search", json={"query": "tyre"}, headers=tenant.headers
        )
    assert (answer.status_code, answer.json()["code"]) == (500, "configuration_error")
    assert answer.json()["detail"].startswith("DOCINGEST_EMBEDDING_DEVICE=cuda:99, but torch")
    assert [record.getMessage() for record in caplog.records if record.levelname == "ERROR"] == [
        f"configuration_error on POST /agents/{tenant.agent_id}/search: " + answer.json()["detail"]
    ]


# --- a small agent among many chunks -------------------------------------------------------


def test_plan_search_is_exact_up_to_the_limit_then_budgets_the_index_by_share() -> None:
    assert plan_search(0, 10**6, 100, 10_000) == SearchPlan(exact=True)
    assert plan_search(10_000, 10**9, 100, 10_000).exact
    half = plan_search(40_000, 80_000, 100, 10_000)
    assert not half.exact
    assert half.max_scan_tuples == HNSW_SCAN_TUPLES  # pgvector's default is plenty at 1/2
    assert half.scan_mem_multiplier == 1
    thousandth = plan_search(10**6, 10**9, 100, 10_000)
    assert not thousandth.exact
    assert thousandth.max_scan_tuples == 4 * 100 * 1000
    assert thousandth.scan_mem_multiplier == 20  # pgvector's 20,000 tuples per work_mem
    assert plan_search(10**7, 10**11, 100, 10_000).scan_mem_multiplier == 32  # at most
    # When the index would visit more tuples than the agent has chunks, comparing is cheaper.
    assert plan_search(10_001, 10**15, 100, 10_000).exact
    assert plan_search(20_000, 2 * 10**8, 100, 10_000).exact
    # A stale table estimate below the agent's own count reads as "the agent is the table".
    assert plan_search(50_000, 0, 100, 10_000).max_scan_tuples == HNSW_SCAN_TUPLES


async def store_vectors(
    stack: Stack, owner: uuid.UUID, agent_id: uuid.UUID, name: str, vectors: np.ndarray
) -> None:
    """A complete document of one chunk per vector, written as the store activity would."""
    async with stack.sessionmaker.begin() as session:
        document = Document(
            owner_id=owner, agent_id=agent_id, task_id=f"{name}-{uuid.uuid4()}",
            filename=name, content_type="text/plain", size_bytes=1,
            sha256=uuid.uuid4().hex * 2, chunk_count=len(vectors), status=Status.COMPLETE,
        )  # fmt: skip
        session.add(document)
        await session.flush()
        session.add_all(
            Chunk(
                document_id=document.id,
                ordinal=index,
                text=f"{name} {index}",
                start_char=0,
                end_char=1,
                embedding=vector,
            )
            for index, vector in enumerate(vectors)
        )


async def crowd_the_agent(
    stack: Stack, tenant: Tenant, *, seed: int, crowd: int, own: int
) -> tuple[Vectors, Vectors]:
    """A random unit query, `crowd` chunks near it for another owner's agent, and `own` random
    unit chunks for the tenant's agent ("own 0", ...): the query and the agent's vectors."""
    rng = np.random.default_rng(seed)
    query = rng.standard_normal(EMBEDDING_DIMENSION).astype(np.float32)
    query /= np.linalg.norm(query)
    nearer = query + 0.02 * rng.standard_normal((crowd, EMBEDDING_DIMENSION)).astype(np.float32)
    mine = rng.standard_normal((own, EMBEDDING_DIMENSION)).astype(np.float32)
    mine /= np.linalg.norm(mine, axis=1, keepdims=True)
    other = await new_tenant(stack, "crowd")
    await store_vectors(stack, other.owner_id, uuid.UUID(other.agent_id), "crowd", nearer)
    await store_vectors(stack, tenant.owner_id, uuid.UUID(tenant.agent_id), "own", mine)
    return query, mine


async def test_search_of_a_small_agent_behind_many_nearer_chunks_finds_all_of_its_own(
    stack: Stack, tenant: Tenant
) -> None:
    """pgvector's iterative scan stops after hnsw.max_scan_tuples tuples of every agent (20,000
    by default). An agent whose chunks lie behind more nearer chunks of other agents than that
    got fewer results than asked, or none. Here 400 nearer chunks of another owner's agent come
    first, the session's budget is 10 (as if the table held millions of chunks) and sorting is
    off (the planner prefers the index on a big table): the plain iterative scan misses some
    of the agent's 3 chunks; search compares them exactly and finds all 3, in order; and when
    it does take the index, it runs with its plan's budget, not the session's."""
    query, own = await crowd_the_agent(stack, tenant, seed=7, crowd=400, own=3)
    agent_id = uuid.UUID(tenant.agent_id)
    expected = [f"own {index}" for index in sorted(range(3), key=lambda i: -float(own[i] @ query))]

    async def search_with(plan: SearchPlan | None) -> tuple[list[str], str]:
        """Search under a budget of 10 with sorting off; `plan` replaces the computed one."""
        async with stack.sessionmaker.begin() as session:
            await session.execute(text("SET LOCAL hnsw.max_scan_tuples = 10"))
            await session.execute(text("SET LOCAL enable_sort = off"))  # as a big table would
            rows = await nearest_chunks(
                session, stack.settings, tenant.owner_id, agent_id, query, 5, plan
            )
            budget = (await session.execute(text("SHOW hnsw.max_scan_tuples"))).scalar_one()
        return [row.text for row in rows], str(budget)

    async with stack.sessionmaker.begin() as session:  # the plain iterative scan: not all 3
        await session.execute(text("SET LOCAL hnsw.max_scan_tuples = 10"))
        await session.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
        await session.execute(text("SET LOCAL enable_sort = off"))
        old = await session.execute(
            select(Chunk.id)
            .join(Document, Document.id == Chunk.document_id)
            .where(Document.agent_id == agent_id)
            .order_by(Chunk.embedding.cosine_distance(query))
            .limit(5)
        )
        assert len(old.all()) < 3
    assert await search_with(None) == (expected, "10")  # exact: the budget plays no part
    index_plan = SearchPlan(exact=False, max_scan_tuples=20_000, scan_mem_multiplier=1)
    assert await search_with(index_plan) == (expected, "20000")


@pytest.mark.parametrize("plan", [None, SearchPlan(exact=False)], ids=["chosen", "index"])
async def test_search_orders_tied_chunks_by_chunk_id(
    stack: Stack, tenant: Tenant, plan: SearchPlan | None
) -> None:
    """Chunks of equal score (the same paragraph in several documents) come in chunk order,
    not in whatever order PostgreSQL's top-N sort left them (it gave 2, 3, 4, 5, 1), nor in
    the order the index walked them (a top 5 of 26-30 beside a top 40 of 1-40). Sorting is
    off for the index plan, so that it walks the index on this small table."""
    vector = np.random.default_rng(3).standard_normal(EMBEDDING_DIMENSION).astype(np.float32)
    vector /= np.linalg.norm(vector)
    agent_id = uuid.UUID(tenant.agent_id)
    await store_vectors(stack, tenant.owner_id, agent_id, "tie", np.tile(vector, (40, 1)))

    async def top(k: int) -> list[int]:
        async with stack.sessionmaker.begin() as session:
            if plan is not None:
                await session.execute(text("SET LOCAL enable_sort = off"))
            rows = await nearest_chunks(
                session, stack.settings, tenant.owner_id, agent_id, vector, k, plan
            )
        return [row.id for row in rows]

    everything = await top(40)
    assert everything == sorted(everything)
    assert await top(5) == everything[:5]


async def test_search_of_a_large_agent_behind_more_nearer_chunks_than_its_budget_finds_top_k(
    stack: Stack, tenant: Tenant
) -> None:
    """An agent large enough for the index (above the exact threshold and its budget) whose
    query is crowded by more nearer chunks of other agents than the scan's budget: the scan
    ended with 2 of 5 results (at full scale: an agent of 25,000 chunks beside 25,000 nearer
    ones gets a 20,000-tuple budget, and none). Scaled down: an index plan with a budget of
    10 tuples and `ef_search` 10, 1,500 nearer chunks, and sorting off (else the planner may
    sort a small table itself). The plan is given, not chosen: the choice depends on the
    whole table's size, which the other tests of the session change."""
    query, own = await crowd_the_agent(stack, tenant, seed=11, crowd=1500, own=300)
    agent_id = uuid.UUID(tenant.agent_id)
    nearest = sorted(range(300), key=lambda i: -float(own[i] @ query))[:5]
    index_plan = SearchPlan(exact=False, max_scan_tuples=10)
    settings = stack_settings(stack, search_ef_search=10)
    async with stack.sessionmaker.begin() as session:
        await session.execute(text("SET LOCAL enable_sort = off"))
        rows = await nearest_chunks(
            session, settings, tenant.owner_id, agent_id, query, 5, index_plan
        )
    assert [row.text for row in rows] == [f"own {index}" for index in nearest]


# The same long preamble, then one paragraph that differs: the bundled model reads 256 tokens
# of a chunk (~1000 characters of English, ~250 of Chinese) and drops the rest unseen.
PREAMBLES = {
    "en": (
        "The committee met on Tuesday to review the annual budget of the municipal library. "
        "Members discussed the cost of new shelving, the renovation of the reading room, the "
        "extension of opening hours on weekends and the purchase of electronic books. "
    )
    * 8,
    "zh": (
        "委员会于星期二开会审查市立图书馆的年度预算。成员们讨论了新书架的费用、阅览室的翻修、"
        "周末开放时间的延长以及为借阅服务购买电子书。"
    )
    * 6,
}
ENDINGS = {
    "en": (
        "To bake sourdough bread, feed the starter the night before and let the dough rise.",
        "To fix a flat bicycle tyre, lever the tyre off the rim and patch the inner tube.",
        "how do I repair a punctured bicycle tyre?",
    ),
    "zh": (
        "烤酸面包之前，前一天晚上要喂养酵头，然后让面团慢慢发酵。",  # noqa: RUF001
        "修理自行车爆胎时，先把轮胎从轮圈上撬下来，再修补内胎。",  # noqa: RUF001
        "自行车轮胎破了怎么修？",  # noqa: RUF001
    ),
}


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize(("language", "chunk_size"), [("en", 4000), ("zh", 1000)])
async def test_search_finds_text_past_the_models_window(
    http: httpx.AsyncClient, tenant: Tenant, language: str, chunk_size: int
) -> None:
    """Each file fits in one chunk of `chunk_size` characters, but not in the model's window:
    both were stored with the same vector, and searched with the same score, whatever the
    query. Chunks now end where the model stops reading."""
    bread, tyre, query = ENDINGS[language]

    async def ingest_whole(name: str, ending: str) -> str:
        response = await http.post(
            "/upload/agent",
            params={"agent_id": tenant.agent_id, "chunk_size": chunk_size, "chunk_overlap": 0},
            headers=tenant.headers,
            files={"file": (name, f"{PREAMBLES[language]}\n\n{ending}".encode())},
        )
        assert response.status_code == 202, response.text
        status = await wait_for_status(http, tenant, response.json()["task_id"], Status.TERMINAL)
        assert status["status"] == "complete", status
        document_id: str = status["document_id"]
        return document_id

    _, tyre_doc = await asyncio.gather(
        ingest_whole("bread.txt", bread), ingest_whole("tyre.txt", tyre)
    )
    hits = await search(http, tenant, query, top_k=50)
    assert hits[0]["document_id"] == tyre_doc
    assert tyre in hits[0]["text"]
    bread_scores = [hit["score"] for hit in hits if hit["filename"] == "bread.txt"]
    assert hits[0]["score"] > max(bread_scores) + 0.05, hits


async def test_search_plan_sums_the_agents_chunks_from_its_index_alone(
    stack: Stack, tenant: Tenant
) -> None:
    """Every search sums the chunk counts of the agent's documents to choose its plan: read
    from every row of them, ~220 ms a search for an agent of a million documents."""
    engine = stack.sessionmaker.kw["bind"]
    agent = uuid.UUID(tenant.agent_id)
    with statements_run(engine, "sum(chunk_count)") as sums:
        async with stack.sessionmaker() as session:
            await choose_plan(session, stack.settings, tenant.owner_id, agent, 5)
    [(statement, parameters)] = sums
    plan = await plan_from_indexes(engine, "documents", statement, parameters)
    assert "Index Only Scan using ix_documents_agent_status_chunks" in plan, plan
