"""``python -m services.notification``: the outbox/reminder worker (same as ``-m services.notification.worker``).

The local stand-in of the notification service is ``python -m services.notification.standin``.
"""

from services.notification.worker import main

if __name__ == "__main__":
    main()
