#!/usr/bin/env python3
"""Samples a Flink job during the end-to-end run and turns the samples, the flink-rest backend's
journal and the trace into target/e2e/report.json, with the pass/fail checks of the run.

    report.py sample --rest URL --job NAME --out samples.jsonl --until-ms T [--every S]
    report.py report --samples samples.jsonl --journal journal.jsonl --trace FILE --offset S
                     --end S --speedup K --scale X --anchor-ms T --latency-bound-ms B
                     [--max-downtime-s 2] [--max-slot-ratio 0.7] --out report.json

`sample` polls Flink's REST API every few seconds until --until-ms (epoch ms) and then until the
pipeline has drained (events in = events out, no backlog, stable for two samples) or 90 s more
have passed. `report` exits 0 when every check passes and 1 otherwise.

Standard library only.
"""

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.request

SOURCE_PREFIX = "Source"
WORK_NAME = "work"
TALLY_PREFIX = "window-count"
TERMINAL = ("FINISHED", "CANCELED", "FAILED")


def get(rest, path, timeout=5):
    with urllib.request.urlopen(rest + path, timeout=timeout) as r:
        return json.loads(r.read().decode())


def metric(rest, jid, vid, name, agg):
    """Aggregate of a subtask metric over a vertex's subtasks, or None."""
    try:
        v = get(rest, f"/jobs/{jid}/vertices/{vid}/subtasks/metrics?get={name}&agg={agg}")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    for m in v:
        if m.get("id") == name and agg in m:
            return float(m[agg])
    return None


def vertex(details, prefix):
    for v in details.get("vertices", []):
        if v["name"].startswith(prefix):
            return v
    return None


def sample_once(rest, job):
    s = {"t_ms": int(time.time() * 1000)}
    try:
        jobs = get(rest, "/jobs/overview")["jobs"]
        ov = get(rest, "/overview")
    except (urllib.error.URLError, OSError, ValueError) as e:
        s["error"] = str(e)
        return s
    s["taskmanagers"] = ov.get("taskmanagers")
    s["slots_total"] = ov.get("slots-total")
    mine = [j for j in jobs if j["name"] == job]
    s["jobs"] = {j["jid"]: j["state"] for j in mine}
    live = [j for j in mine if j["state"] not in TERMINAL]
    if not live:
        return s
    jid = max(live, key=lambda j: j.get("start-time", 0))["jid"]
    s["jid"] = jid
    try:
        d = get(rest, f"/jobs/{jid}")
        s["exceptions"] = len(get(rest, f"/jobs/{jid}/exceptions")["exceptionHistory"]["entries"])
    except (urllib.error.URLError, OSError, ValueError) as e:
        s["error"] = str(e)
        return s
    s["state"] = d["state"]
    s["parallelism"] = max((v["parallelism"] for v in d["vertices"]), default=0)
    s["all_running"] = d["state"] == "RUNNING" and all(
        v["status"] == "RUNNING" and v.get("tasks", {}).get("RUNNING", 0) == v["parallelism"] for v in d["vertices"]
    )
    src, work, tally = vertex(d, SOURCE_PREFIX), vertex(d, WORK_NAME), vertex(d, TALLY_PREFIX)
    if src:
        s["events_in"] = metric(rest, jid, src["id"], "Source__rate-source.eventsIn", "sum")
        s["pending"] = metric(rest, jid, src["id"], "Source__rate-source.pendingRecords", "sum")
        s["source_rate"] = metric(rest, jid, src["id"], "numRecordsOutPerSecond", "sum")
    if work:
        s["p95_max_ms"] = metric(rest, jid, work["id"], "work.latencyHistogram_p95", "max")
        s["p95_avg_ms"] = metric(rest, jid, work["id"], "work.latencyHistogram_p95", "avg")
        s["busy_max"] = metric(rest, jid, work["id"], "busyTimeMsPerSecond", "max")
    if tally:
        s["events_out"] = metric(rest, jid, tally["id"], "tally.eventsOut", "sum")
    return s


def cmd_sample(a):
    drained_since = None
    hard_stop = a.until_ms + 90_000
    with open(a.out, "a", encoding="utf-8") as f:
        while True:
            t0 = time.time()
            s = sample_once(a.rest, a.job)
            f.write(json.dumps(s) + "\n")
            f.flush()
            now = s["t_ms"]
            if now >= a.until_ms:
                drained = (
                    s.get("events_in") is not None
                    and s.get("events_in") == s.get("events_out")
                    and s.get("pending") == 0
                    and s.get("all_running")
                )
                if drained:
                    drained_since = drained_since or now
                else:
                    drained_since = None
                # Two consecutive drained samples at least one metric refresh apart.
                if drained_since and now - drained_since >= 2 * a.every * 1000:
                    return 0
                if now >= hard_stop:
                    print("report.py sample: the pipeline did not drain within 90 s after the trace", file=sys.stderr)
                    return 0
            time.sleep(max(0.0, a.every - (time.time() - t0)))


def read_trace(path):
    values = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.strip().replace(",", "|").split("|")
            if len(parts) < 2:
                continue
            try:
                values.append(int(round(float(parts[1]))))
            except ValueError:
                pass
    return values


class Schedule:
    """The same schedule as tests/flink-job's TraceSchedule (without wrap-around)."""

    def __init__(self, values, scale, speedup, offset, end):
        self.per_second = [max(0, v) * scale / speedup for v in values]
        self.prefix = [0.0]
        for r in self.per_second:
            self.prefix.append(self.prefix[-1] + r)
        self.speedup, self.offset, self.end = speedup, offset, end

    def cumulative(self, t):
        s = min(int(math.floor(t)), len(self.per_second) - 1)
        return self.prefix[s] + (t - s) * self.per_second[s]

    def total(self):
        return int(math.floor(self.cumulative(self.end) - self.cumulative(self.offset) + 1e-9))

    def rate_at(self, wall_s):
        """Records/s at wall second `wall_s` after the anchor."""
        t = self.offset + wall_s * self.speedup
        if t < self.offset or t >= self.end:
            return 0.0
        return self.per_second[int(t)] * self.speedup

    def duration_s(self):
        return (self.end - self.offset) / self.speedup


def check(name, passed, value, threshold, detail):
    return {"name": name, "passed": bool(passed), "value": value, "threshold": threshold, "detail": detail}


def cmd_report(a):
    samples = []
    with open(a.samples, encoding="utf-8") as f:
        samples = [json.loads(l) for l in f if l.strip()]
    journal = []
    try:
        with open(a.journal, encoding="utf-8") as f:
            journal = [json.loads(l) for l in f if l.strip()]
    except FileNotFoundError:
        pass
    sched = Schedule(read_trace(a.trace), a.scale, a.speedup, a.offset, a.end)
    anchor = a.anchor_ms
    duration = sched.duration_s()
    rel = lambda ms: round((ms - anchor) / 1000.0, 2)

    # The peak: the highest 30 s (wall) mean of the scheduled rate.
    win = 30
    best, peak_at = -1.0, 0.0
    for start in range(0, int(duration) - win + 1):
        m = sum(sched.rate_at(start + i + 0.5) for i in range(win)) / win
        if m > best:
            best, peak_at = m, start + win / 2
    peak_rate = max(sched.rate_at(s + 0.5) for s in range(int(duration)))

    # Reconfigurations.
    reconfigs = []
    for e in journal:
        reconfigs.append({
            "id": e["id"],
            "started_s": rel(e["started_at"]),
            "finished_s": rel(e["finished_at"]),
            "from_parallelism": e["from"]["parallelism"],
            "to_parallelism": e["to"]["parallelism"],
            "from": e["from"],
            "to": e["to"],
            "kind": e["kind"],
            "ok": e["ok"],
            "downtime_s": e.get("downtime_s"),
            "taskmanagers_added": e.get("taskmanagers_added", 0),
            "taskmanagers_removed": e.get("taskmanagers_removed", 0),
            "failures_during": e.get("failures", 0),
            "error": e.get("error"),
        })
    applied = [r for r in reconfigs if r["ok"]]
    ups = [r for r in applied if r["to_parallelism"] > r["from_parallelism"]]
    downs = [r for r in applied if r["to_parallelism"] < r["from_parallelism"]]

    # Parallelism over the trace: the first sample's, then each applied reconfiguration's target
    # from its end (the larger of both while it runs).
    live = [s for s in samples if s.get("parallelism")]
    p0 = next((s["parallelism"] for s in live if s["t_ms"] >= anchor), live[0]["parallelism"] if live else 0)
    steps = []  # (rel start, rel end, parallelism during)
    for r in applied:
        steps.append((r["started_s"], r["finished_s"], max(r["from_parallelism"], r["to_parallelism"]), r["to_parallelism"]))
    steps.sort()

    def parallelism_at(t):
        p = p0
        for start, end, during, after in steps:
            if t >= end:
                p = after
            elif t >= start:
                p = during
        return p

    dt = 0.5
    used = sum(parallelism_at(i * dt + dt / 2) * dt for i in range(int(duration / dt)))
    p_max = max([p0] + [r["to_parallelism"] for r in applied] + [r["from_parallelism"] for r in applied])
    static = p_max * duration
    ratio = used / static if static > 0 else None

    # TaskManager slots registered (what the cluster held), from the samples.
    tm_slot_s = 0.0
    in_trace = [s for s in samples if anchor <= s["t_ms"] <= anchor + duration * 1000 and s.get("slots_total") is not None]
    for s0, s1 in zip(in_trace, in_trace[1:]):
        tm_slot_s += s0["slots_total"] * (s1["t_ms"] - s0["t_ms"]) / 1000.0

    # Latency.
    over = 0.0
    lat = [s for s in in_trace if s.get("p95_max_ms") is not None and math.isfinite(s["p95_max_ms"])]
    for s0, s1 in zip(lat, lat[1:]):
        if s0["p95_max_ms"] > a.latency_bound_ms:
            over += (s1["t_ms"] - s0["t_ms"]) / 1000.0
    p95s = [s["p95_max_ms"] for s in lat]

    # Events: the last sample with both counts.
    counted = [s for s in samples if s.get("events_in") is not None and s.get("events_out") is not None]
    last = counted[-1] if counted else {}
    events_in, events_out = last.get("events_in"), last.get("events_out")
    scheduled = sched.total()

    # Failures: exception-history entries of every job id, and jobs that ended FAILED.
    exceptions, states = {}, {}
    for s in samples:
        if s.get("jid") and s.get("exceptions") is not None:
            exceptions[s["jid"]] = s["exceptions"]
        for jid, st in (s.get("jobs") or {}).items():
            states[jid] = st
    failures = sum(exceptions.values()) + sum(1 for st in states.values() if st == "FAILED")

    in_place = [r for r in applied if r["kind"] == "in_place"]
    worst_downtime = max((r["downtime_s"] for r in in_place), default=None)
    failed_reconfigs = [r for r in reconfigs if not r["ok"]]

    # Scaled up by the peak: at the peak the job runs the largest parallelism of the run, above
    # the one it started with. Scaled down after it: the run ends below the peak's parallelism.
    p_peak = parallelism_at(peak_at)
    p_end = parallelism_at(duration - 0.01)
    up_by = min((r["finished_s"] for r in ups if r["to_parallelism"] == p_peak), default=None)
    checks = [
        check("scale_up_by_peak", p_peak == p_max and p_max > p0 and up_by is not None and up_by <= peak_at,
              {"parallelism_at_peak": p_peak, "max": p_max, "initial": p0, "reached_at_s": up_by}, peak_at,
              "at the peak (s after the trace start) the job runs the run's largest parallelism, reached by a "
              "scale-up that finished by then"),
        check("scale_down_after_peak", p_end < p_peak and any(r["started_s"] > peak_at for r in downs),
              {"parallelism_at_end": p_end, "at_peak": p_peak}, "< at peak",
              "a scale-down after the peak; the run ends below the peak's parallelism"),
        check("no_event_lost", events_in is not None and events_in == events_out and events_in >= scheduled - 1,
              {"in": events_in, "out": events_out, "scheduled": scheduled}, "in = out = scheduled",
              "every scheduled event was taken in and came out exactly once"),
        check("no_job_failure", failures == 0 and not failed_reconfigs, failures, 0,
              "no entry in any job's exception history, no FAILED job, no failed reconfiguration"),
        check("in_place_downtime", bool(in_place) and worst_downtime <= a.max_downtime_s, worst_downtime,
              a.max_downtime_s, "worst measured downtime of an in-place rescale (s)"),
        check("slot_seconds", ratio is not None and ratio <= a.max_slot_ratio,
              round(ratio, 3) if ratio is not None else None, a.max_slot_ratio,
              "slot-seconds used / slot-seconds of a static deployment at the peak parallelism"),
    ]
    report = {
        "passed": all(c["passed"] for c in checks),
        "checks": checks,
        "trace": {
            "file": a.trace, "offset_s": a.offset, "end_s": a.end, "speedup": a.speedup, "scale": a.scale,
            "duration_s": duration, "peak_at_s": peak_at, "peak_rate": round(peak_rate, 1),
            "peak_30s_mean_rate": round(best, 1), "scheduled_events": scheduled,
        },
        "reconfigurations": reconfigs,
        "slot_seconds": {
            "used": round(used, 1), "static_peak": round(static, 1), "ratio": round(ratio, 3) if ratio else None,
            "peak_parallelism": p_max, "initial_parallelism": p0,
            "taskmanager_slot_seconds": round(tm_slot_s, 1),
        },
        "latency": {
            "bound_ms": a.latency_bound_ms, "seconds_over_bound": round(over, 1),
            "p95_max_ms": max(p95s) if p95s else None,
            "p95_median_ms": sorted(p95s)[len(p95s) // 2] if p95s else None,
            "definition": "largest p95 of the work subtasks' latencyHistogram (now - due time), sampled",
        },
        "events": {"in": events_in, "out": events_out, "scheduled": scheduled,
                   "difference": (events_in - events_out) if counted else None},
        "job_failures": failures,
        "job_ids": sorted(states),
        "samples": len(samples),
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    for c in checks:
        print(f"  {'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['value']} (threshold {c['threshold']}) - {c['detail']}")
    return 0 if report["passed"] else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--rest", required=True)
    s.add_argument("--job", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--until-ms", type=int, required=True)
    s.add_argument("--every", type=float, default=2.0)
    r = sub.add_parser("report")
    r.add_argument("--samples", required=True)
    r.add_argument("--journal", required=True)
    r.add_argument("--trace", required=True)
    r.add_argument("--offset", type=float, required=True)
    r.add_argument("--end", type=float, required=True)
    r.add_argument("--speedup", type=float, required=True)
    r.add_argument("--scale", type=float, required=True)
    r.add_argument("--anchor-ms", type=int, required=True)
    r.add_argument("--latency-bound-ms", type=float, required=True)
    r.add_argument("--max-downtime-s", type=float, default=2.0)
    r.add_argument("--max-slot-ratio", type=float, default=0.7)
    r.add_argument("--out", required=True)
    a = p.parse_args()
    return cmd_sample(a) if a.cmd == "sample" else cmd_report(a)


if __name__ == "__main__":
    sys.exit(main())
