"""``python -m services.event``: run the EventService gRPC server."""

from services.common.server import run
from services.event.app import EventApp, EventSettings

if __name__ == "__main__":
    run(EventApp, EventSettings)
