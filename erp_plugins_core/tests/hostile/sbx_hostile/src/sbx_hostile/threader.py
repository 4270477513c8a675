"""A module that starts a thread when imported (bounded: it ends after 30 s): a template must not fork after it."""

import threading
import time

threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
