"""Documents: the permanent record of each finished upload, and deleting one with its chunks."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import delete

from api.deps import ChangesTasks, OwnerDep, SessionDep, SessionmakerDep
from api.ownership import owned_row, parse_id
from api.schemas import DocumentPublic, ErrorBody, TaskError
from core.errors import NotFound
from core.models import Document

router = APIRouter(
    prefix="/documents",
    tags=["documents"],
    responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)


def document_public(document: Document) -> DocumentPublic:
    return DocumentPublic(
        id=document.id,
        agent_id=document.agent_id,
        filename=document.filename,
        content_type=document.content_type,
        size_bytes=document.size_bytes,
        sha256=document.sha256,
        page_count=document.page_count,
        chunk_count=document.chunk_count,
        status=document.status,
        error=TaskError.recorded(document.error_type, document.error_message),
        task_id=document.task_id,
        created_at=document.created_at,
        updated_at=document.updated_at,
    )


def _not_found(document_id: str) -> NotFound:
    return NotFound(f"Document {document_id[:100]!r} not found")


@router.get("/{document_id}")
async def get_document(document_id: str, owner: OwnerDep, session: SessionDep) -> DocumentPublic:
    """One of the caller's documents: file, counts, status and the task that made it."""
    return document_public(await owned_row(session, Document, owner, document_id, "Document"))


@router.delete("/{document_id}", status_code=204, dependencies=[ChangesTasks])
async def delete_document(document_id: str, owner: OwnerDep, sessionmaker: SessionmakerDep) -> None:
    """Delete one of the caller's documents with all its chunks."""
    parsed = parse_id(document_id)
    deleted = None
    # Its own transaction, committed before the 204 is sent: a search made once the caller
    # has the answer never finds the chunks. The chunks go in the same statement (ON DELETE
    # CASCADE).
    async with sessionmaker.begin() as session:
        if parsed is not None:
            deleted = await session.scalar(
                delete(Document)
                .where(Document.id == parsed, Document.owner_id == owner)
                .returning(Document.id)
            )
    if deleted is None:
        raise _not_found(document_id)
