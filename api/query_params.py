"""A query parameter given more than once is refused, not read as its last value.

Every parameter of the API takes one value, and FastAPI keeps the last of several:
`?status=failed&status=error` listed the `error` documents alone, as if filtered on both, and
`/upload/agent?agent_id=A&agent_id=B` stored the file for agent B. Each is now a 422 that
names the parameter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.requests import HTTPConnection

from api.deps import authenticate_first
from core.errors import InvalidRequest


async def one_value_per_query_parameter(connection: HTTPConnection) -> None:
    """422 when a query parameter the route reads is given more than once (HTTP routes; a
    WebSocket reads its one parameter, `token`, itself)."""
    route = connection.scope.get("route")
    if connection.scope["type"] != "http" or not isinstance(route, APIRoute):
        return
    given = Counter(name for name, _ in connection.query_params.multi_items())
    repeated = [name for name in dict.fromkeys(_query_names(route.dependant)) if given[name] > 1]
    if repeated:
        # This dependency of the app comes before the route's own, its key check among them.
        await authenticate_first(connection)
        raise InvalidRequest(
            "; ".join(
                f"query.{name}: given {given[name]} times; it takes one value" for name in repeated
            )
        )


def _query_names(dependant: Dependant) -> Iterator[str]:
    yield from (param.alias for param in dependant.query_params)
    for dependency in dependant.dependencies:
        yield from _query_names(dependency)
