"""mex-bench: latency, throughput and accuracy benchmarks. Results go to benchmarks/results/<machine>/."""
