"""A module that runs work in threads and joins them when imported, as an SDK that shuts its executor down: no
thread is left running, so a template may still fork after it (a joined thread can linger a moment in /proc)."""

from concurrent.futures import ThreadPoolExecutor

for _ in range(20):
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(sum, range(10)).result()
