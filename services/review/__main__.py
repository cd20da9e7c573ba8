"""``python -m services.review``: run the ReviewService gRPC server."""

from services.common.server import run
from services.review.app import ReviewApp, ReviewSettings

if __name__ == "__main__":
    run(ReviewApp, ReviewSettings)
