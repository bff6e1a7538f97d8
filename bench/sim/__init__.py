"""A trace-replay simulator of Tide and of KEDA plus the HPA (make bench-sim; bench/README.md)."""
