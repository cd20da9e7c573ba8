"""How infrastructure failures seen while Postgres goes away reach clients: UNAVAILABLE (retryable), not INTERNAL."""

from __future__ import annotations

import asyncpg
import grpc

from services.common.grpc_errors import to_status_proto


def test_a_connection_that_lost_step_with_a_dying_server_is_unavailable():
    exc = asyncpg.exceptions.InternalClientError("cannot switch to state 12; another operation (2) is in progress")
    status = to_status_proto(exc)
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "another operation" not in status.message  # nothing of asyncpg's text reaches the client
