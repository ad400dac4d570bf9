"""LC / SC / Ladon measurements: latency, GMAC, peak memory, board power, reports and plots.

What `ladon-bench device` and `live` run on a Jetson (cli, device_bench, device_process, identity, power, memory, live)
is in the edge subset: Python 3.6-clean, never imports torch. The rest is torch-side. GMAC counting is
ladon_deploy/gmac.py (export records the encoder's in the bundle).
"""
