from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from api.deps import OwnerDep, SessionDep
from api.schemas import AgentCreate, AgentPublic, AgentsPublic, ErrorBody
from core.models import Agent

router = APIRouter(prefix="/agents", tags=["agents"], responses={401: {"model": ErrorBody}})


@router.post("", status_code=201)
async def create_agent(body: AgentCreate, owner: OwnerDep, session: SessionDep) -> AgentPublic:
    """Create an agent owned by the caller."""
    agent = Agent(owner_id=owner, name=body.name)
    session.add(agent)
    await session.flush()
    await session.refresh(agent)
    return AgentPublic.model_validate(agent, from_attributes=True)


@router.get("")
async def list_agents(owner: OwnerDep, session: SessionDep) -> AgentsPublic:
    """List the caller's agents, oldest first."""
    rows = await session.scalars(
        select(Agent).where(Agent.owner_id == owner).order_by(Agent.created_at, Agent.id)
    )
    return AgentsPublic(
        agents=[AgentPublic.model_validate(agent, from_attributes=True) for agent in rows]
    )
