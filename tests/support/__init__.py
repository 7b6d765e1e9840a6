"""Helpers shared by several test modules (fixtures stay in tests/conftest.py).

    waiting     until: wait on a real condition, with a generous ceiling, never a guessed sleep
    net         free_port, get_json
    pool        a `podium serve --workers N` process group, started and stopped
    metrics     scrape /metrics, and sum its samples
    asking      which deployment answered, and the gateway's explanation of why
    provision   tools some tests drive (Phoenix, Chromium), installed once, cached, in the
                background
    cdp         a headless Chromium driven over the DevTools protocol
    scripted    a fake upstream whose next answers a test scripts
"""
