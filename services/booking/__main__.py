"""``python -m services.booking``: run the BookingService gRPC server."""

from services.booking.app import BookingApp, BookingSettings
from services.common.server import run

if __name__ == "__main__":
    run(BookingApp, BookingSettings)
