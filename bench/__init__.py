"""Benchmarks of jetsaga: `python -m bench.ladder` (the saga engine under a ladder of rates)
and `python -m bench.sender` (what the load runner itself can send). See bench/README.md."""
