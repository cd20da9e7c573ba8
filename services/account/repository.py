"""Old name of :mod:`services.account.users`, kept only for the benchmark scenarios that import it; services
import ``services.account.users``."""

from services.account.users import UPSERT_USER, remember

__all__ = ["UPSERT_USER", "remember"]
