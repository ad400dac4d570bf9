"""LC / SC / Ladon measurements: latency, GMAC, peak memory, reports and plots."""
