"""LC / SC / Ladon measurements: latency, GMAC, peak memory, board power, reports and plots.

What `ladon-bench device` and `live` run on a Jetson (cli, device_bench, device_process, identity, power, memory, live,
gmac) is in the edge subset: Python 3.6-clean, never imports torch. The rest is torch-side.
"""
