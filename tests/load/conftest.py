# The load test and its upstream run as scripts (python tests/load/run.py), never in the default
# suite; --doctest-modules would import them, and the upstream needs aiohttp (LiteLLM's own dependency).
collect_ignore = ["run.py", "upstream.py", "proxy.py"]
