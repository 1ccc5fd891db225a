"""Temporal client construction and the search attributes docingest filters on."""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

OWNER_ID = SearchAttributeKey.for_keyword("OwnerId")
AGENT_ID = SearchAttributeKey.for_keyword("AgentId")
INGEST_STATUS = SearchAttributeKey.for_keyword("IngestStatus")
BATCH_ID = SearchAttributeKey.for_keyword("BatchId")
SEARCH_ATTRIBUTES = (OWNER_ID, AGENT_ID, INGEST_STATUS, BATCH_ID)


async def connect(address: str, namespace: str) -> Client:
    return await Client.connect(address, namespace=namespace)


async def register_search_attributes(client: Client) -> None:
    """Add our search attributes where missing; safe to run on every start-up."""
    service = client.operator_service
    listed = await service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    missing = {
        key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        for key in SEARCH_ATTRIBUTES
        if key.name not in listed.custom_attributes
    }
    if missing:
        await service.add_search_attributes(
            AddSearchAttributesRequest(search_attributes=missing, namespace=client.namespace)
        )


def iso_utc(moment: datetime) -> str:
    """ISO-8601 in UTC with a `Z`, the form every timestamp of the API takes."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
