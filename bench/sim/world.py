"""The world both control loops act on: one Redis list, a Deployment's pods, Tide workers in them.

Pure and deterministic (a seeded ``random.Random`` for the ReplicaSet's tie-break). Time advances in steps of
``dt``; messages are kept in cohorts ``[arrival, count, duration, first]`` in FIFO order, so a flash of 20,000
messages is one entry and a week of traffic a few entries per step.

What a worker pod does, as ``tide_worker.runtime`` does it:

- it takes messages only once Ready (``startup`` seconds after the pod is created);
- it holds up to ``concurrency`` running plus ``batch`` fetched-but-not-started messages (``_fetcher``:
  room = batch - queued): those are out of the list (``LLEN``, what KEDA's redis scaler reads) but in
  Tide's backlog as in flight;
- removed (the ReplicaSet deletes it on a scale-down), it stops fetching, hands its unstarted messages back to
  the head of the list at once, gives running handlers ``grace`` seconds (``--shutdown-grace`` 25 s), and
  hands back what still runs then: those runs are *interrupted* (started, never finished by that pod).

Two ways to run jobs:

- ``fluid`` (every job takes ``job_seconds``, at most the grace period): Ready pods start jobs at
  ``concurrency / job_seconds`` each (capped by ``machine_rate`` for all pods together, when given: the
  shared 2-core machine of the real runs). No job outlives a grace period, so none is ever interrupted.
- ``discrete`` (each message carries its duration): every pod's lanes and prefetch are simulated one message
  at a time, and which pods a scale-down removes decides what is interrupted.

Which pods go (pkg/controller/controller_utils.go ``ActivePodsWithRanks.Less``, Kubernetes v1.36): not
Ready first, then lower ``controller.kubernetes.io/pod-deletion-cost``, then (LogarithmicScaleDown, GA) the
more recently Ready by powers of two of the time Ready, then at random (by UID). Tide writes the cost
before a scale-down from each pod's heartbeat (``tide_operator.deletion_cost.pod_costs``, called here
unchanged); KEDA and the HPA write none. Not modelled: rank 5 (pods doubled up on a node; the real runs
had one node), restart counts, heartbeat lag (costs are computed from the pods' state at that instant), the
ReplicaSet controller's own latency (inside ``startup``), retries and failures of handlers.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from tide_operator import deletion_cost
from tide_worker.records import Heartbeat

NAMESPACE = "sim"


@dataclass(frozen=True)
class WorldConfig:
    concurrency: int = 16
    batch: int = 32  # the worker's --batch-size: fetched ahead of the running lanes
    job_seconds: float = 0.02  # fluid mode: every job's duration
    startup: float = 1.0  # pod created -> Ready
    grace: float = 25.0  # the worker's --shutdown-grace
    discrete: bool = False  # each message carries its own duration
    machine_rate: float | None = None  # fluid: all pods together start at most this many jobs/s

    def __post_init__(self) -> None:
        if self.batch < 1 or self.concurrency < 1:
            raise ValueError("a worker fetches at least one message (--batch-size) into at least one lane")
        if not self.discrete and self.job_seconds > self.grace:
            raise ValueError(
                f"fluid jobs of {self.job_seconds}s outlast the {self.grace}s grace period: use discrete=True"
            )


@dataclass
class Pod:
    uid: int
    created: float
    ready_at: float
    removed: float | None = None  # when the ReplicaSet deleted it (then terminating)
    cost: int = deletion_cost.IDLE  # the pod-deletion-cost annotation as last written
    # discrete mode only
    running: list[list] = field(default_factory=list)  # [end, start, arrival, duration, first]
    local: deque = field(default_factory=deque)  # fetched, not started: [arrival, 1, duration, first]

    def ready(self, now: float) -> bool:
        return self.removed is None and self.ready_at <= now


@dataclass
class Stats:
    created: int = 0
    done: int = 0
    interrupted: int = 0
    pod_seconds: float = 0.0  # pods from creation until gone, terminating ones too (as bench/vs_keda.py)
    scale_changes: int = 0
    # (wait, count) of each first start: enqueue to handler start
    waits: list[tuple[float, int]] = field(default_factory=list)
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (t, spec replicas, ready pods)


class World:
    def __init__(self, cfg: WorldConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.queue: deque[list] = deque()  # [arrival, count, duration, first]
        self.queued = 0  # messages in self.queue (the list plus, in fluid mode, what pods fetched ahead)
        self.pods: list[Pod] = []  # not terminating, creation order
        self.ready_times: list[float] = []  # their ready_at, in the same order
        self.terminating: list[Pod] = []
        self.spec = 0
        self.next_uid = 0
        self.stats = Stats()
        # fluid mode
        self.running: deque[list] = deque()  # [first start, last start, count], starts spread evenly
        self.n_running = 0
        self.carry = 0.0
        self.recent_done: deque[tuple[float, int]] = deque()  # (t, finished) for the heartbeats' rate

    # --- what the scalers read --------------------------------------------------------------------------

    def ready_pods(self, now: float) -> int:
        # pods are created in order and all take ``startup``: their ready times are sorted
        return bisect.bisect_right(self.ready_times, now)

    def prefetched(self, now: float) -> int:
        if self.cfg.discrete:
            return sum(len(p.local) for p in self.pods)
        return min(self.queued, self.ready_pods(now) * self.cfg.batch)

    def in_list(self, now: float) -> int:
        """``LLEN`` of the ready list."""
        if self.cfg.discrete:
            return self.queued
        return self.queued - self.prefetched(now)

    def running_count(self) -> int:
        if self.cfg.discrete:
            return sum(len(p.running) for p in self.pods) + sum(len(p.running) for p in self.terminating)
        return self.n_running

    def running_now(self, now: float) -> int:
        """Handlers running at ``now`` (fluid: a chunk's starts are spread over [first, last], each runs
        ``job_seconds``)."""
        if self.cfg.discrete:
            return self.running_count()
        d, n = self.cfg.job_seconds, 0.0
        for s0, s1, k in self.running:
            if s1 > s0:
                n += k * max(0.0, min(s1, now) - max(s0, now - d)) / (s1 - s0)
            elif now - d < s0 <= now:
                n += k
        return round(n)

    def held(self, now: float) -> int:
        """In flight as Tide reads it: in the workers' processing lists (fetched or running)."""
        return self.running_now(now) + self.prefetched(now)

    def oldest_age(self, now: float) -> float | None:
        """Age of the message at the consuming end of the list (None when the list is empty)."""
        skip = 0 if self.cfg.discrete else self.prefetched(now)
        for arrival, count, *_ in self.queue:
            if skip < count:
                return max(0.0, now - arrival)
            skip -= count
        return None

    def rates(self, now: float, window: float = 10.0) -> tuple[float, ...]:
        """Each Ready pod's messages/s over the last ``window`` seconds (the heartbeats' ``rate``)."""
        while self.recent_done and self.recent_done[0][0] < now - window:
            self.recent_done.popleft()
        n = self.ready_pods(now)
        if n == 0:
            return ()
        total = sum(c for _, c in self.recent_done)
        return (total / window / n,) * n

    def idle(self) -> bool:
        return self.queued == 0 and self.running_count() == 0 and not self.pods and not self.terminating

    def unfinished(self) -> int:
        return self.queued + self.running_count() + (self.prefetched(0.0) if self.cfg.discrete else 0)

    # --- what the trace does ----------------------------------------------------------------------------

    def arrive(self, at: float, count: int, duration: float | None = None, spread: float = 0.0) -> None:
        """``count`` messages arriving evenly over [at, at + spread] (fluid mode; discrete: at ``at``)."""
        if count <= 0:
            return
        if self.cfg.discrete:  # one entry per message: each goes to one lane
            if duration is None:
                raise ValueError("discrete mode: each message needs its duration")
            self.queue.extend([at, 1, duration, True, 0.0] for _ in range(count))
        else:
            self.queue.append([at, count, duration, True, spread])
        self.queued += count
        self.stats.created += count

    # --- what the scalers do ----------------------------------------------------------------------------

    def scale(self, now: float, replicas: int, idle_first: bool) -> None:
        """``/scale`` set to ``replicas``: pods created at once, or deleted in the ReplicaSet's order;
        ``idle_first``: Tide wrote each pod's deletion cost from its heartbeat just before."""
        if replicas == self.spec:
            return
        self.stats.scale_changes += 1
        self.spec = replicas
        self.stats.timeline.append((now, replicas, self.ready_pods(now)))
        while len(self.pods) < replicas:
            self.pods.append(Pod(self.next_uid, now, now + self.cfg.startup))
            self.next_uid += 1
        excess = len(self.pods) - replicas
        if excess <= 0:
            self.ready_times = [p.ready_at for p in self.pods]
            return
        if idle_first:
            self._write_costs(now)
        for pod in sorted(self.pods, key=lambda p: self._rank(p, now))[:excess]:
            self._remove(pod, now)
        self.pods = [p for p in self.pods if p.removed is None]
        self.ready_times = [p.ready_at for p in self.pods]

    def _write_costs(self, now: float) -> None:
        """consumer.Consumer.set_deletion_costs: each reporting (Ready) pod's cost from its heartbeat."""
        beats = []
        for p in self.pods:
            if not p.ready(now):
                continue  # not started: its worker does not report yet
            if self.cfg.discrete:
                running = len(p.running)
                oldest = min((j[1] for j in p.running), default=0.0)
            else:  # fluid: jobs shorter than a poll; busy pods are those holding one (one each first)
                running = 1 if self._fluid_busy_rank(p, now) else 0
                oldest = now if running else 0.0
            beats.append(
                Heartbeat(
                    id=f"w{p.uid}",
                    host="sim",
                    pid=p.uid,
                    started=p.created,
                    ts=now,
                    concurrency=self.cfg.concurrency,
                    inflight=running,
                    pod=f"pod-{p.uid}",
                    namespace=NAMESPACE,
                    oldest_started=oldest,
                )
            )
        costs = deletion_cost.pod_costs(beats, NAMESPACE, now)
        for p in self.pods:
            if f"pod-{p.uid}" in costs:
                p.cost = costs[f"pod-{p.uid}"]

    def _fluid_busy_rank(self, pod: Pod, now: float) -> bool:
        """Fluid mode: with ``n`` messages held and ``m`` Ready pods, the first ``min(n, m)`` pods (in the
        order they became Ready) each hold at least one (blocked fetches are served in turn)."""
        ready = [p for p in self.pods if p.ready(now)]
        busy = min(len(ready), self.held(now))
        return pod in ready[:busy]

    def _rank(self, pod: Pod, now: float) -> tuple[int, int, float, float]:
        """ActivePodsWithRanks.Less as a sort key (smaller goes first)."""
        ready = pod.ready(now)
        bucket = -1
        if ready and now > pod.ready_at:
            # logarithmicRankDiff: int(log2(nanoseconds Ready)); the more recently Ready go first
            bucket = int(math.log2((now - pod.ready_at) * 1e9))
        return (1 if ready else 0, pod.cost, bucket, self.rng.random())

    def _remove(self, pod: Pod, now: float) -> None:
        pod.removed = now
        if self.cfg.discrete:
            for m in reversed(pod.local):  # unstarted: back to the head, in fetch order
                self.queue.appendleft(m)
                self.queued += 1
            pod.local.clear()
            if pod.running:
                self.terminating.append(pod)
        # fluid: the fetched-ahead messages are still counted in self.queue; running ones finish in the grace

    # --- one step of the world -------------------------------------------------------------------------

    def step(self, t: float, dt: float) -> None:
        """Advance from ``t`` to ``t + dt``."""
        # a pod finishing its job in the grace still holds its node: counted, as the real runs' pod watches do
        self.stats.pod_seconds += (len(self.pods) + len(self.terminating)) * dt
        if self.cfg.discrete:
            self._step_discrete(t, dt)
        else:
            self._step_fluid(t, dt)

    def _record_done(self, t: float, n: int) -> None:
        self.stats.done += n
        self.recent_done.append((t, n))

    def _take(self, n: int) -> Iterator[tuple[float, float, bool, int, int]]:
        """Take ``n`` messages off the head: (first arrival, arrival spread, first run?, how many, position of
        the first taken); a cohort taken in part keeps its later arrivals."""
        pos = 0
        while n > 0 and self.queue:
            head = self.queue[0]
            k = min(n, head[1])
            part = head[4] * k / head[1]
            yield head[0], part, head[3], k, pos
            head[0] += part
            head[4] -= part
            head[1] -= k
            if head[1] == 0:
                self.queue.popleft()
            self.queued -= k
            n -= k
            pos += k

    def _step_fluid(self, t: float, dt: float) -> None:
        cfg = self.cfg
        end = t + dt
        ready = self.ready_pods(t)
        if ready and self.queued:
            # lanes cycle at concurrency / job_seconds each: messages start that fast from the step's start,
            # none before it arrives
            rate = ready * cfg.concurrency / cfg.job_seconds
            if cfg.machine_rate is not None:
                rate = min(rate, cfg.machine_rate)
            cap = rate * dt + self.carry
            n = min(self.queued, int(cap))
            self.carry = cap - n if n == int(cap) else 0.0
            for arrival, spread, first, k, pos in self._take(n):
                s0 = max(arrival, t + pos / rate)
                s1 = max(arrival + spread, t + (pos + k) / rate)
                if first:
                    self.stats.waits.append((max(0.0, (s0 + s1) / 2 - (arrival + spread / 2)), k))
                self.running.append([s0, s1, k])
                self.n_running += k
        else:
            self.carry = 0.0
        while self.running and self.running[0][1] + cfg.job_seconds <= end:
            s0, s1, k = self.running.popleft()
            self.n_running -= k
            self._record_done(s1 + cfg.job_seconds, k)

    def _step_discrete(self, t: float, dt: float) -> None:
        end = t + dt
        for pod in self.terminating:
            keep = []
            for job in pod.running:
                if job[0] <= end and job[0] <= pod.removed + self.cfg.grace:
                    self._record_done(job[0], 1)
                elif pod.removed + self.cfg.grace <= end:
                    # the grace is over: handed back to the head of the list, the run interrupted
                    self.stats.interrupted += 1
                    self.queue.appendleft([job[2], 1, job[3], False, 0.0])
                    self.queued += 1
                else:
                    keep.append(job)
            pod.running = keep
        self.terminating = [p for p in self.terminating if p.running]
        ready = [p for p in self.pods if p.ready_at <= end]
        # blocked fetches are served in turn: the pods holding least first
        ready.sort(key=lambda p: (len(p.running) + len(p.local), p.uid))
        for pod in ready:
            self._run_pod(pod, max(t, pod.ready_at), end)

    def _refill(self, pod: Pod) -> None:
        """The fetcher: up to ``batch`` messages held ahead of the lanes (discrete cohorts are single)."""
        while len(pod.local) < self.cfg.batch and self.queue:
            pod.local.append(self.queue.popleft())
            self.queued -= 1

    def _run_pod(self, pod: Pod, now: float, end: float) -> None:
        """One pod from ``now`` to ``end``: lanes start what the fetcher holds; a job that ends frees its
        lane at that instant."""
        while True:
            self._refill(pod)
            while len(pod.running) < self.cfg.concurrency and pod.local:
                m = pod.local[0]
                start = max(now, m[0])
                if start >= end:
                    break
                pod.local.popleft()
                if m[3]:
                    self.stats.waits.append((start - m[0], 1))
                pod.running.append([start + m[2], start, m[0], m[2], m[3]])
                self._refill(pod)
            if not pod.running:
                return
            i = min(range(len(pod.running)), key=lambda k: pod.running[k][0])
            if pod.running[i][0] > end:
                return
            now = pod.running.pop(i)[0]
            self._record_done(now, 1)


def conserved(w: World) -> bool:
    """Every message created is waiting (in the list or fetched by a pod), running or done (an interrupted
    one waits again)."""
    fetched = sum(len(p.local) for p in w.pods) + sum(len(p.local) for p in w.terminating)
    return w.stats.created == w.queued + fetched + w.running_count() + w.stats.done


def percentiles(waits: Iterable[tuple[float, int]], qs: Iterable[float]) -> list[float | None]:
    """Weighted percentiles as the bench computes them: the value at rank ceil(q x n)."""
    pairs = sorted(waits)
    total = sum(c for _, c in pairs)
    if total == 0:
        return [None for _ in qs]
    cum, acc = [], 0
    for _, c in pairs:
        acc += c
        cum.append(acc)
    out: list[float | None] = []
    for q in qs:
        k = max(1, math.ceil(q * total))
        out.append(pairs[bisect.bisect_left(cum, k)][0])
    return out
