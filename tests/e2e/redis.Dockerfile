# Redis for the kind end-to-end run (kind-redis.yaml): Debian's redis-server, built here (nothing is
# pulled). Protected mode off, as in the official image: the pod is reached through its Service.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
USER 999:999
ENTRYPOINT ["redis-server", "--protected-mode", "no"]
